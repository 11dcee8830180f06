package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadRefusedGenerationStops: a reload whose new generation key
// Redis refuses (the ACL user lacks its key pattern) cannot keep the keys
// of that generation consistent. The generation bump goes through the
// sink, in order with the stream, so the refusal stops the engine with the
// permission named; the reload is not reported as rejected while the new
// rules in fact run.
func TestReloadRefusedGenerationStops(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	const secret = "acl-S3cret"
	acl := []any{"ACL", "SETUSER", "cdc", "on", ">" + secret, "resetkeys", "~user:*", "~order:*", "~big:*", "~barrier:*", "~cdcinvalidate:*",
		"resetchannels", "-@all", "+ping", "+unlink", "+scan", "+eval", "+evalsha", "+get", "+set", "+incr", "+sadd", "+smembers"}
	if err := f.rdb.Do(f.ctx(), acl...).Err(); err != nil {
		t.Fatal(err)
	}
	head := fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\nredis:\n  addr: %q\n  username: cdc\n", f.pg.DSN("postgres"), f.rd.Addr())
	f.cfgPath = f.writeConfig(head + rules)
	p := f.startBinaryStreaming(f.cfgPath, "CDC_REDIS_PASSWORD="+secret)
	f.barrier()

	next := head + rules + `  - table: users
    actions: [generation]
    generation_key: "gen:users"
`
	if err := os.WriteFile(f.cfgPath, []byte(next), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	code := p.ExitT(t, 60*time.Second)
	out := p.Output()
	if code != 1 {
		t.Fatalf("exit code %d, want 1 (stopped on the refused generation key); output:\n%s", code, out)
	}
	for _, want := range []string{"NOPERM", "gen:users"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, msgRejected) {
		t.Errorf("the reload was reported as rejected although the new rules had been switched in:\n%s", out)
	}
}
