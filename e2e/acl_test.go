package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestRedisLeastPrivilegeACL runs the engine as the least-privilege Redis
// user the README gives (commands, key patterns and channels), and checks
// that a user missing the engine's own key pattern is refused with the
// key named, nothing skipped.
func TestRedisLeastPrivilegeACL(t *testing.T) {
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
