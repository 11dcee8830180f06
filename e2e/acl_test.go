package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/sink"
)

// TestRedisLeastPrivilegeACL runs the engine as the least-privilege Redis
// user the README gives (commands, key patterns and channels), and checks
// that a user missing the engine's own key pattern is refused with the
// key named, nothing skipped.
func TestRedisLeastPrivilegeACL(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	const secret = "acl-S3cret"
	acl := []any{"ACL", "SETUSER", "cdc", "on", ">" + secret, "resetkeys", "~user:*", "~order:*", "~big:*", "~barrier:*", "~cdcinvalidate:*",
		"resetchannels", "&cdcinvalidate:*", "-@all", "+ping", "+unlink", "+scan", "+eval", "+evalsha", "+get", "+set", "+incr", "+sadd", "+smembers", "+publish", "+xadd"}
	if err := f.rdb.Do(f.ctx(), acl...).Err(); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\nredis:\n  addr: %q\n  username: cdc\nclient:\n  publish_channel: cdcinvalidate:l1\n%s", f.pg.DSN("postgres"), f.rd.Addr(), rules)
	p := f.startBinaryStreaming(f.writeConfig(cfg), "CDC_REDIS_PASSWORD="+secret)
	f.set("user:1", "order:1")
	f.exec(`INSERT INTO users VALUES (1, 'a@x', '', '')`)
	f.exec(`INSERT INTO orders VALUES (1, 1, '')`)
	f.exec(`TRUNCATE big`)
	f.barrier()
	f.wantGone("user:1", "order:1")
	if f.get("cdcinvalidate:cdcinvalidate:lsn") == "" {
		t.Error("no watermark written by the restricted user")
	}
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM; output:\n%s", code, p.Output())
	}

	// Without ~cdcinvalidate:* the watermark is refused: the engine cannot
	// start, and says which permission is missing.
	if err := f.rdb.Do(f.ctx(), "ACL", "SETUSER", "cdc", "resetkeys", "~user:*", "~order:*", "~big:*", "~barrier:*").Err(); err != nil {
		t.Fatal(err)
	}
	p = f.startBinary(f.writeConfig(cfg), "CDC_REDIS_PASSWORD="+secret)
	f.exec(`UPDATE users SET name = 'b' WHERE id = 1`)
	code := p.ExitT(t, 60*time.Second)
	out := p.Output()
	if code != 2 {
		t.Fatalf("exit code %d, want 2; output:\n%s", code, out)
	}
	for _, want := range []string{"NOPERM", "keys", "~cdcinvalidate:*"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, secret) {
		t.Fatal("the Redis password appears in the output")
	}
}

// TestRedisLeastPrivilegeACLCluster: the same least-privilege user on a
// Redis Cluster (created on every node: ACLs are per node), plus what the
// cluster client needs to learn the layout (+cluster|slots) and
// +wait for redis.wait_replicas, which this run uses: the engine streams,
// deletes on every master, writes its watermarks and WAITs. Without
// +cluster|slots it cannot start, and says so.
func TestRedisLeastPrivilegeACLCluster(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{cluster: true})
	ctx := f.ctx()
	const secret = "acl-S3cret"
	setUser := func(extra ...any) {
		t.Helper()
		acl := append([]any{"ACL", "SETUSER", "cdc", "reset", "on", ">" + secret, "~user:*", "~order:*", "~big:*", "~barrier:*", "~cdcinvalidate:*",
			"&cdcinvalidate:*", "-@all", "+ping", "+unlink", "+scan", "+eval", "+evalsha", "+get", "+set", "+incr", "+sadd", "+smembers", "+publish", "+xadd"}, extra...)
		for _, r := range f.cl.Nodes {
			c := redis.NewClient(&redis.Options{Addr: r.Addr()})
			err := c.Do(ctx, acl...).Err()
			c.Close()
			if err != nil {
				t.Fatalf("ACL SETUSER on %s: %v", r.Addr(), err)
			}
		}
	}
	setUser("+cluster|slots", "+wait")
	cfg := fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\nredis:\n%s  username: cdc\n  wait_replicas: 1\nclient:\n  publish_channel: cdcinvalidate:l1\n%s",
		f.pg.DSN("postgres"), f.redisYAML(), rules)
	p := f.startBinaryStreaming(f.writeConfig(cfg), "CDC_REDIS_PASSWORD="+secret)
	var keys []string
	var rows []string
	for i := 1; i <= 30; i++ {
		keys = append(keys, fmt.Sprintf("user:%d", i))
		rows = append(rows, fmt.Sprintf("(%d, 'u%d@x', '', '')", i, i))
	}
	f.set(keys...)
	f.exec(`INSERT INTO users VALUES ` + strings.Join(rows, ","))
	f.exec(`TRUNCATE big`)
	f.barrier()
	f.wantGone(keys...)
	shards, err := sink.ShardWatermarkKeys(ctx, f.rdb, "cdcinvalidate:cdcinvalidate:lsn")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range shards {
		if f.get(k) == "" {
			t.Errorf("no watermark %s written by the restricted user", k)
		}
	}
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM; output:\n%s", code, p.Output())
	}

	// Without +cluster|slots the cluster client cannot learn the layout.
	setUser("+wait")
	p = f.startBinary(f.writeConfig(cfg), "CDC_REDIS_PASSWORD="+secret)
	code := p.ExitT(t, 60*time.Second)
	out := p.Output()
	if code == 0 || !strings.Contains(out, "NOPERM") || !strings.Contains(out, "cluster|slots") {
		t.Errorf("exit code %d without +cluster|slots, want a failure naming NOPERM and cluster|slots; output:\n%s", code, out)
	}
	if strings.Contains(out, secret) {
		t.Fatal("the Redis password appears in the output")
	}
}
