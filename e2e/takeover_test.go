package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// watermarkKey is the watermark of the fixture's slot.
const watermarkKey = "cdcinvalidate:cdcinvalidate:lsn"

// redisSnapshot is every key of the fixture's Redis as DUMP returns it,
// with its TTL: what an RDB file written at that moment holds.
type redisSnapshot map[string]struct {
	dump string
	ttl  time.Duration
}

func (f *fixture) snapshotRedis() redisSnapshot {
	f.t.Helper()
	ctx := context.Background()
	keys, err := f.rdb.Keys(ctx, "*").Result()
	if err != nil {
		f.t.Fatal(err)
	}
	snap := redisSnapshot{}
	for _, k := range keys {
		d, err := f.rdb.Dump(ctx, k).Result()
		if err != nil {
			f.t.Fatalf("dump %s: %v", k, err)
		}
		ttl, err := f.rdb.PTTL(ctx, k).Result()
		if err != nil {
			f.t.Fatalf("pttl %s: %v", k, err)
		}
		snap[k] = struct {
			dump string
			ttl  time.Duration
		}{d, max(ttl, 0)}
	}
	return snap
}

// restoreRedis replaces the whole dataset with snap, as a Redis restarted
// from an older RDB file would hold it.
func (f *fixture) restoreRedis(snap redisSnapshot) {
	f.t.Helper()
	ctx := context.Background()
	if err := f.rdb.FlushAll(ctx).Err(); err != nil {
		f.t.Fatal(err)
	}
	for k, v := range snap {
		if err := f.rdb.Restore(ctx, k, v.ttl, v.dump).Err(); err != nil {
			f.t.Fatalf("restore %s: %v", k, err)
		}
	}
}

// TestTakeoverAfterRedisRewind: while a standby waits, Redis goes back to
// an older state (restored from an older snapshot: a key the leader had
// invalidated is back with its old value, and the watermark is back below
// the slot's confirmed position). The leader is frozen meanwhile, so only
// the standby can notice: when it takes the slot over, its session runs
// the start-up checks, and flushes (on_history_lost: flush) or stops
// (stop) instead of trusting the cache.
func TestTakeoverAfterRedisRewind(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"flush", "stop"} {
		t.Run(mode, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{extra: "consistency:\n  on_history_lost: " + mode + "\n"})
			f.seedUsers(3)
			a := f.startBinaryStreaming(f.cfgPath)
			b := f.startBinary(f.cfgPath)
			harness.WaitFor(t, 30*time.Second, "the second engine to wait as standby", func() bool {
				return strings.Contains(b.Output(), "waiting as standby")
			})
			f.set("user:1", "user:2")
			f.barrier()
			old := f.snapshotRedis() // user:1 cached, the watermark as it is now
			oldMark, err := pglogrepl.ParseLSN(f.get(watermarkKey))
			if err != nil {
				t.Fatalf("watermark before the snapshot: %v", err)
			}
			f.exec(`UPDATE users SET name = 'changed' WHERE id = 1`)
			f.barrier()
			f.wantGone("user:1")
			harness.WaitFor(t, 30*time.Second, "the slot's confirmed position to pass the snapshot's watermark", func() bool {
				return f.confirmed() > oldMark
			})

			// Freeze the leader, so that it cannot see the rewind, then
			// bring Redis back to the snapshot and let the leader die.
			if err := a.Signal(sigStop); err != nil {
				t.Fatal(err)
			}
			f.restoreRedis(old)
			if !f.exists("user:1") {
				t.Fatal("the restore did not bring the stale key back")
			}
			a.KillT(t)

			if mode == "stop" {
				code := b.ExitT(t, 60*time.Second)
				out := b.Output()
				if code == 0 {
					t.Fatalf("the standby went on after taking over a rewound Redis; output:\n%s", out)
				}
				for _, want := range []string{"below the slot's confirmed position", "on_history_lost: flush"} {
					if !strings.Contains(out, want) {
						t.Errorf("output lacks %q:\n%s", want, harness.LastLines(out, 5))
					}
				}
				f.wantKept("user:1", "user:2") // stop deletes nothing
				return
			}
			harness.WaitFor(t, 60*time.Second, "the new leader to flush the key the rewind brought back", func() bool {
				return !f.exists("user:1")
			})
			f.barrier()
			if !strings.Contains(b.Output(), "below the slot's confirmed position") {
				t.Errorf("the new leader did not say why it flushed:\n%s", harness.LastLines(b.Output(), 10))
			}
			if code, _ := b.TermT(t, 30*time.Second); code != 0 {
				t.Fatalf("exit code %d", code)
			}
		})
	}
}

// TestTakeoverAfterRollingRulesChange: a rolling upgrade starts the
// standby with new rules (a new template, profile:{id}) while the old
// leader goes on with the old ones, which do not invalidate profile keys.
// When the standby takes over, it must flush the pattern the last leader
// did not keep consistent, and only that one.
func TestTakeoverAfterRollingRulesChange(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.seedUsers(3)
	oldRules := f.writeConfig(f.rulesConfig("  - table: users\n    keys: [\"user:{id}\"]\n"))
	newRules := f.writeConfig(f.rulesConfig("  - table: users\n    keys: [\"user:{id}\", \"profile:{id}\"]\n"))
	a := f.startBinaryStreaming(oldRules)
	b := f.startBinary(newRules)
	harness.WaitFor(t, 30*time.Second, "the engine with the new rules to wait as standby", func() bool {
		return strings.Contains(b.Output(), "waiting as standby")
	})
	// Cached while the old leader streams: it invalidates user:1, never
	// profile:1.
	f.set("user:1", "profile:1", "user:2")
	f.exec(`UPDATE users SET name = 'changed' WHERE id = 1`)
	f.barrier()
	f.wantGone("user:1")
	if !f.exists("profile:1") {
		t.Fatal("the old rules invalidated profile:1")
	}

	a.KillT(t)
	harness.WaitFor(t, 60*time.Second, "the new leader to flush profile:*, which the old leader did not keep consistent", func() bool {
		return !f.exists("profile:1")
	})
	f.barrier()
	f.wantKept("user:2") // user:* was managed all along
	f.set("profile:3")
	f.exec(`UPDATE users SET name = 'changed' WHERE id = 3`)
	f.barrier()
	f.wantGone("profile:3")
	if code, _ := b.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestTakeoverNeverConfirmsAnOlderPosition: the standby read the slot's
// confirmed position when it started; the leader then moved it on. After
// the takeover, the new leader's status updates must never report the old
// position (PostgreSQL 15 ignores a flush position below the slot's, but
// what an engine reports must not depend on that).
func TestTakeoverNeverConfirmsAnOlderPosition(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.seedUsers(50)
	a := f.startBinaryStreaming(f.cfgPath)
	b := f.startBinary(f.cfgPath)
	harness.WaitFor(t, 30*time.Second, "the second engine to wait as standby", func() bool {
		return strings.Contains(b.Output(), "waiting as standby")
	})
	atStandbyStart := f.confirmed()
	for i := 1; i <= 50; i++ {
		f.exec(`UPDATE users SET name = name || 'x' WHERE id = $1`, i)
	}
	f.barrier()
	harness.WaitFor(t, 30*time.Second, "the leader to confirm past the standby's start", func() bool { return f.confirmed() > atStandbyStart })
	before := f.confirmed()
	leaderPID := f.activePID()
	a.KillT(t)
	harness.WaitFor(t, 30*time.Second, "the standby to take the slot", func() bool {
		pid := f.activePID()
		return pid != 0 && pid != leaderPID
	})
	// status_interval is 1s: several updates go out in 3 seconds. What the
	// new leader reports (pg_stat_replication.flush_lsn) and the slot's
	// confirmed position must both stay at or above the old leader's.
	reported := 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if c := f.confirmed(); c < before {
			t.Fatalf("the slot's confirmed position moved back from %s to %s after the takeover (the standby started at %s)", before, c, atStandbyStart)
		}
		flush := f.lsn(`SELECT r.flush_lsn::text FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = 'cdcinvalidate'`)
		if flush == 0 {
			continue // no status update yet
		}
		reported++
		if flush < before {
			t.Fatalf("the new leader reported flush position %s, below %s that the old leader had confirmed (it started as a standby at %s)", flush, before, atStandbyStart)
		}
	}
	if reported == 0 {
		t.Fatal("no status update from the new leader in 3s")
	}
	f.barrier()
	if code, _ := b.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
