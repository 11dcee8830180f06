package bench

import (
	"strings"
	"testing"
	"time"
)

func TestTopologyFlags(t *testing.T) {
	o, err := parseFlags(t, "--redis-rtt", "1ms", "--instances", "3", "--wait-replicas", "1")
	if err != nil {
		t.Fatal(err)
	}
	if o.RedisRTT != time.Millisecond || o.Instances != 3 || o.WaitReplicas != 1 || o.topology() != TopologyStandalone {
		t.Fatalf("parsed %+v", o)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	d, _ := parseFlags(t)
	if d.Instances != 1 || d.RedisTopology != TopologyStandalone || d.RedisRTT != 0 || d.WaitReplicas != 0 {
		t.Errorf("defaults: instances %d, topology %q, rtt %s, wait replicas %d", d.Instances, d.RedisTopology, d.RedisRTT, d.WaitReplicas)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--redis-topology", "mesh"}, `--redis-topology "mesh"`},
		{[]string{"--redis-topology", "cluster", "--redis-rtt", "1ms"}, "--redis-rtt works with --redis-topology standalone only"},
		{[]string{"--redis-topology", "sentinel", "--redis-rtt", "1ms"}, "--redis-rtt works with --redis-topology standalone only"},
		{[]string{"--redis-topology", "cluster", "--redis-db", "1"}, "only database 0"},
		{[]string{"--redis-topology", "sentinel", "--wait-replicas", "2"}, "has 1 replica"},
		{[]string{"--redis-rtt", "-1ms"}, "--redis-rtt -1ms"},
		{[]string{"--instances", "0"}, "--instances 0"},
		{[]string{"--instances", "5", "--rows", "3"}, "needs at least as many --rows"},
	} {
		o, err := parseFlags(t, tt.args...)
		if err == nil {
			err = o.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want one containing %q", tt.args, err, tt.want)
		}
	}
}

// The instances' tables hold every id of 1..rows once, in ranges.
func TestInstanceRanges(t *testing.T) {
	for _, c := range []struct{ rows, n int }{{10, 2}, {10, 3}, {7, 7}, {200_000, 4}, {5, 4}} {
		b := &bench{opts: Options{Rows: c.rows, Instances: c.n}}
		next := 1
		for k := 1; k <= c.n; k++ {
			lo, hi := b.instanceRange(k)
			if lo != next || hi < lo-1 {
				t.Fatalf("rows %d, %d instances: table %d holds %d..%d, want from %d", c.rows, c.n, k, lo, hi, next)
			}
			next = hi + 1
		}
		if next != c.rows+1 {
			t.Errorf("rows %d, %d instances: the tables end at %d", c.rows, c.n, next-1)
		}
	}
}

func TestEngineRedisYAML(t *testing.T) {
	b := &bench{opts: Options{RedisTopology: TopologyCluster, WaitReplicas: 1}, topo: topo{addrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}}}
	if got, want := b.engineRedisYAML(), "  addrs: [\"127.0.0.1:7000\", \"127.0.0.1:7001\"]\n  cluster: true\n  wait_replicas: 1\n"; got != want {
		t.Errorf("cluster:\n%s\nwant:\n%s", got, want)
	}
	b = &bench{opts: Options{RedisTopology: TopologySentinel, RedisDB: 2}, topo: topo{addrs: []string{"127.0.0.1:26379"}, masterName: "mymaster"}}
	if got, want := b.engineRedisYAML(), "  addrs: [\"127.0.0.1:26379\"]\n  master_name: \"mymaster\"\n  db: 2\n"; got != want {
		t.Errorf("sentinel:\n%s\nwant:\n%s", got, want)
	}
	p, err := startRTTProxy("127.0.0.1:1", time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b = &bench{opts: Options{RedisRTT: time.Millisecond}, redisAddr: "127.0.0.1:6379", topo: topo{proxy: p}}
	if got := b.engineRedisYAML(); !strings.Contains(got, "addr: \""+p.Addr()+"\"") {
		t.Errorf("with --redis-rtt the engine goes through the proxy %s; got\n%s", p.Addr(), got)
	}
}
