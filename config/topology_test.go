package config

import (
	"slices"
	"strings"
	"testing"
)

func TestRedisTopologyValidation(t *testing.T) {
	t.Parallel()
	const pg = "postgres:\n  dsn: \"postgres://h/db\"\n"
	const rules = "rules:\n  - table: users\n    keys: [\"user:{id}\"]\n"
	tests := []struct {
		name, redis string
		want        string // "" = valid
		topology    string
	}{
		{"standalone", "redis:\n  addr: \"h:6379\"\n", "", "standalone"},
		{"cluster", "redis:\n  addrs: [\"a:7000\", \"b:7000\"]\n  cluster: true\n", "", "cluster"},
		{"sentinel", "redis:\n  addrs: [\"s1:26379\", \"s2:26379\"]\n  master_name: mymaster\n  sentinel_password: pw\n", "", "sentinel"},
		{"nothing", "", "redis.addr is required", ""},
		{"addr and addrs", "redis:\n  addr: \"h:1\"\n  addrs: [\"a:1\"]\n  cluster: true\n", "not both", ""},
		{"addrs alone", "redis:\n  addrs: [\"a:1\"]\n", "needs redis.cluster: true", ""},
		{"cluster with addr", "redis:\n  addr: \"h:1\"\n  cluster: true\n", "seed nodes in redis.addrs", ""},
		{"master name with addr", "redis:\n  addr: \"h:1\"\n  master_name: m\n", "sentinels' addresses in redis.addrs", ""},
		{"cluster and sentinel", "redis:\n  addrs: [\"a:1\"]\n  cluster: true\n  master_name: m\n", "exclude each other", ""},
		{"bad addrs entry", "redis:\n  addrs: [\"a:1\", \"nope\"]\n  cluster: true\n", `"nope" is not host:port`, ""},
		{"cluster db", "redis:\n  addrs: [\"a:1\"]\n  cluster: true\n  db: 2\n", "database 0", ""},
		{"wait replicas", "redis:\n  addr: \"h:1\"\n  wait_replicas: 1\n  wait_timeout: 500ms\n", "", "standalone"},
		{"wait replicas on a cluster", "redis:\n  addrs: [\"a:1\"]\n  cluster: true\n  wait_replicas: 1\n", "", "cluster"},
		{"negative wait replicas", "redis:\n  addr: \"h:1\"\n  wait_replicas: -1\n", "must not be negative", ""},
		{"sentinel password without sentinel", "redis:\n  addr: \"h:1\"\n  sentinel_password: x\n", "are for sentinels", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := Parse("c.yaml", []byte(pg+tc.redis+rules), noEnv)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Parse = %v, want success", err)
				}
				if got := cfg.Redis.Topology(); got != tc.topology {
					t.Errorf("Topology() = %q, want %q", got, tc.topology)
				}
				return
			}
			ce := configError(t, err)
			if !slices.ContainsFunc(ce.Problems, func(p Problem) bool { return strings.Contains(p.Msg, tc.want) }) {
				t.Errorf("no problem mentions %q:\n%v", tc.want, err)
			}
		})
	}
}

func TestRedisTopologyEnv(t *testing.T) {
	t.Parallel()
	const file = "postgres:\n  dsn: \"postgres://h/db\"\nrules:\n  - table: users\n    keys: [\"user:{id}\"]\n"
	cfg, err := Parse("c.yaml", []byte(file), mapEnv(map[string]string{
		"CDC_REDIS_ADDRS":             " s1:26379, s2:26379 ,s3:26379",
		"CDC_REDIS_MASTER_NAME":       "mymaster",
		"CDC_REDIS_SENTINEL_USERNAME": "sen",
		"CDC_REDIS_SENTINEL_PASSWORD": "senpw",
	}))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Redis
	if !slices.Equal(r.Addrs, []string{"s1:26379", "s2:26379", "s3:26379"}) || r.MasterName != "mymaster" ||
		r.SentinelUsername != "sen" || r.SentinelPassword != "senpw" || r.Topology() != "sentinel" {
		t.Errorf("environment not applied: %+v", r)
	}
	cfg, err = Parse("c.yaml", []byte(file), mapEnv(map[string]string{"CDC_REDIS_ADDRS": "a:7000,b:7000", "CDC_REDIS_CLUSTER": "true"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Redis.Topology() != "cluster" || !slices.Equal(cfg.Redis.Servers(), []string{"a:7000", "b:7000"}) {
		t.Errorf("cluster from the environment: %+v", cfg.Redis)
	}
}
