package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// TestFirstStartFlushesCachedValues: values cached before the slot existed
// may be stale (their changes are not in the slot's history), so the first
// start deletes every key the rules manage, and only those.
func TestFirstStartFlushesCachedValues(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.set("user:1", "user:email:a@x", "order:9", "user:3:orders")
	f.set("unmanaged:1", "session:abc")
	f.start()
	f.wantGone("user:1", "user:email:a@x", "order:9", "user:3:orders")
	f.wantKept("unmanaged:1", "session:abc")
}

func TestFirstStartKeepTrustsCachedValues(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{extra: "consistency:\n  on_first_start: keep\n"})
	f.set("user:1")
	f.start()
	f.barrier()
	f.wantKept("user:1")
}

// TestDroppedSlotIsDetected: the slot is dropped while the engine is down
// (by an operator, or a failover to a standby without it). Changes made in
// between are not in the new slot, so a stale key would stay: the engine
// must flush, or stop when told to.
func TestDroppedSlotIsDetected(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.seedUsers(3)
	p := f.startBinaryStreaming(f.cfgPath)
	f.barrier()
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	f.exec(`SELECT pg_drop_replication_slot('cdcinvalidate')`)
	f.set("user:1")
	f.exec(`UPDATE users SET name = 'changed while nobody listened' WHERE id = 1`)

	out := f.startFails(mustRead(t, f.cfgPath)+"consistency:\n  on_history_lost: stop\n", []string{"did not exist although Redis holds the watermark", "on_history_lost: flush"})
	t.Logf("refusal:\n%s", harness.LastLines(out, 2))
	if !f.exists("user:1") {
		t.Fatal("on_history_lost: stop deleted keys")
	}

	f.startBinaryStreaming(f.cfgPath) // default: flush
	harness.WaitFor(t, 30*time.Second, "the stale key to be flushed", func() bool { return !f.exists("user:1") })
	f.barrier()
}

// TestRedisBackInTimeIsDetected: Redis loses acknowledged deletes (here: a
// stale value comes back and the watermark is lowered, as after a restore
// or a failover to a lagging replica). The engine flushes at its next
// start, and also while it runs.
func TestRedisBackInTimeIsDetected(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.seedUsers(3)
	run := f.start()
	f.barrier()
	const mark = "cdcinvalidate:cdcinvalidate:lsn"

	// While running: the watermark disappears and a stale value is back.
	f.set("user:2")
	if err := f.rdb.Del(context.Background(), mark).Err(); err != nil {
		t.Fatal(err)
	}
	f.exec(`UPDATE users SET name = 'y' WHERE id = 3`) // any change: its batch sees the watermark gone
	harness.WaitFor(t, 30*time.Second, "the stale key to be flushed while running", func() bool { return !f.exists("user:2") })
	f.barrier()

	// At start: a watermark below the slot's confirmed position.
	if err := run.stop(t); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.Set(context.Background(), mark, "0/1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	f.set("user:1")
	f.start()
	harness.WaitFor(t, 30*time.Second, "the stale key to be flushed at start", func() bool { return !f.exists("user:1") })
	f.barrier()
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := readFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestFailoverSlotNeedsPostgres17: failover slots exist from PostgreSQL 17
// on; on an older server the option is refused before any slot is made,
// with what happens instead.
func TestFailoverSlotNeedsPostgres17(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	var version int
	if err := f.db.QueryRow(f.ctx(), `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version >= 170000 {
		t.Skip("PostgreSQL 17+: failover slots are supported here")
	}
	f.startFails(strings.Replace(f.header(), "postgres:\n", "postgres:\n  failover_slot: true\n", 1)+rules, []string{
		"postgres.failover_slot: failover slots need PostgreSQL 17 or later",
		"consistency.on_history_lost",
	})
	var n int
	if err := f.db.QueryRow(f.ctx(), `SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("slots and publications after a refused start: %d (%v), want 0", n, err)
	}
}

// TestRulesEditedWhileStoppedFlushNewPatterns: a template added to
// rules.yaml while the engine was stopped manages keys whose cached values
// nothing kept consistent; the next start flushes those patterns (and only
// those), and a start with unchanged rules flushes nothing.
func TestRulesEditedWhileStoppedFlushNewPatterns(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	first := f.rulesConfig(`  - table: users
    keys: ["user:{id}"]
`)
	run := f.startWith(f.writeConfig(first), zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	f.barrier()
	if err := run.stop(t); err != nil {
		t.Fatal(err)
	}
	// While stopped: values cached the ordinary way, and the rules edited.
	f.set("user:1", "user:email:a@x", "profile:1", "gen:users:page:1")
	second := f.rulesConfig(`  - table: users
    keys: ["user:{id}", "user:email:{email}", "profile:{id}"]
    actions: [delete, generation]
`)
	run = f.startWith(f.writeConfig(second), zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	f.barrier()
	f.wantGone("user:email:a@x", "profile:1")
	f.wantKept("user:1", "gen:users:page:1") // user:* was managed all along; the page is retired by the bump
	if n, _ := f.rdb.Get(context.Background(), "gen:users").Int(); n != 1 {
		t.Errorf("gen:users = %d, want 1 (a new generation key is bumped once)", n)
	}
	if err := run.stop(t); err != nil {
		t.Fatal(err)
	}
	// Same rules again: nothing is flushed.
	f.set("user:email:b@x", "profile:2")
	run = f.startWith(f.writeConfig(second), zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	f.barrier()
	f.wantKept("user:email:b@x", "profile:2")
	if n, _ := f.rdb.Get(context.Background(), "gen:users").Int(); n != 1 {
		t.Errorf("gen:users = %d after a start with the same rules, want 1", n)
	}
	_ = run.stop(t)
}
