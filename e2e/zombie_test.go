package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// TestZombieLeaderCannotUndoRefresh: a leader freezes (a failpoint sends
// it SIGSTOP) with a batch of refresh writes in hand, not yet sent. Its
// walsender times out, the standby takes over, applies the same
// transaction and newer ones (a newer row for user:1, a DELETE of row 2).
// Then the old leader wakes up (SIGCONT) and sends what it held: the older
// rows. The newer value of user:1 must survive, and user:2 must stay
// deleted; the refresh writes compare commit LSNs in Redis (sink/order.go).
//
// The negative control runs both engines with CDC_UNSAFE=unordered-refresh
// (plain SETs, as before the order keys) and must see the old rows back.
func TestZombieLeaderCannotUndoRefresh(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		unsafe bool
	}{{"ordered", false}, {"negative-unordered-set", true}} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{})
			bin := harness.BuildEngineTags(t, "failpoints")
			cfg := f.writeConfig(fmt.Sprintf(`postgres:
  dsn: %q
  status_interval: 1s
  wal_sender_timeout: 3s
redis:
  addr: %q
rules:
  - table: barrier
    keys: ["barrier:{id}"]
  - table: users
    keys: ["user:{id}"]
    actions: [refresh]
    refresh_columns: [id, name]
`, f.pg.DSN("postgres"), f.rd.Addr()))
			var env []string
			if c.unsafe {
				env = append(env, "CDC_UNSAFE=unordered-refresh")
			}
			f.seedUsers(3)
			a := f.startBinaryOfStreaming(bin, cfg, append(env, "CDC_FAILPOINT=sink-before-refresh", "CDC_FAILPOINT_ACTION=stop")...)
			b := f.startBinaryOf(bin, cfg, env...)
			harness.WaitFor(t, 30*time.Second, "the second engine to wait as standby", func() bool {
				return strings.Contains(b.Output(), "waiting as standby")
			})
			leaderPID := f.activePID()

			f.exec(`UPDATE users SET name = 'old' WHERE id IN (1, 2)`)
			harness.WaitFor(t, 30*time.Second, "the leader to freeze with the refresh batch in hand", func() bool {
				return strings.Contains(a.Output(), "failpoint sink-before-refresh: SIGSTOP")
			})
			harness.WaitFor(t, 60*time.Second, "the standby to take the slot from the frozen leader", func() bool {
				pid := f.activePID()
				return pid != 0 && pid != leaderPID
			})
			f.exec(`UPDATE users SET name = 'new' WHERE id = 1`)
			f.exec(`DELETE FROM users WHERE id = 2`)
			f.barrier()
			if v := f.get("user:1"); !strings.Contains(v, `"new"`) || f.exists("user:2") {
				t.Fatalf("before the old leader wakes: user:1 = %q, user:2 exists %v", v, f.exists("user:2"))
			}

			if err := a.Signal(sigCont); err != nil {
				t.Fatal(err)
			}
			stale := func() bool { return strings.Contains(f.get("user:1"), `"old"`) || f.exists("user:2") }
			steppedBack := func() bool {
				out := a.Output()
				i := strings.Index(out, "failpoint sink-before-refresh")
				return i >= 0 && strings.Contains(out[i:], "waiting as standby")
			}
			// On waking, the old leader's sink sends the batch it held at
			// once, unless its replication goroutine first finds the
			// session ended (the walsender timed out meanwhile) and cancels
			// the send: which of the two runs first is the scheduler's
			// choice, so the negative control waits for either.
			if c.unsafe {
				harness.WaitFor(t, 60*time.Second, "the woken leader's plain SETs to bring the old rows back, or the leader to step back", func() bool {
					return stale() || steppedBack()
				})
				for end := time.Now().Add(3 * time.Second); !stale() && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				}
				if !stale() {
					// Not a pass: nothing was shown. Skipped rather than failed,
					// since the engine did nothing wrong (it never sent the batch).
					t.Skipf("negative control inconclusive in this run: the woken leader's session ended before its sink sent the held batch, "+
						"so no plain SET could bring the old rows back (user:1 = %s); old leader's last lines:\n%s", f.get("user:1"), a.Tail(15))
				}
				t.Logf("negative control: user:1 = %s, user:2 = %s after the old leader woke up", f.get("user:1"), f.get("user:2"))
				return
			}
			harness.WaitFor(t, 60*time.Second, "the woken leader to step back as standby", steppedBack)
			// Its sink sent the batch at once on waking (or its session's end
			// cancelled the send); give it ample time.
			for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				if stale() {
					t.Fatalf("the woken leader undid newer work: user:1 = %q, user:2 = %q", f.get("user:1"), f.get("user:2"))
				}
			}
			// Which of the two happened (the test holds either way; this says
			// whether this run exercised the fence).
			t.Logf("the woken leader sent its held batch and it was fenced: %v", strings.Contains(a.Output(), "that another instance already applied"))
			f.barrier()
			if v := f.get("user:1"); !strings.Contains(v, `"new"`) {
				t.Fatalf("user:1 = %q, want the newer row", v)
			}
			for _, p := range []*harness.Process{a, b} {
				if code, _ := p.TermT(t, 30*time.Second); code != 0 {
					t.Fatalf("exit code %d; output:\n%s", code, p.Output())
				}
			}
		})
	}
}

// TestZombieLeaderCannotUndoWithTruncate: a leader freezes (SIGSTOP at a
// failpoint) with a TRUNCATE in hand; the standby takes over, applies it
// and newer changes (a row inserted again: its key deleted, its version
// key raised; a reader caches the new row). When the old leader wakes up
// its TRUNCATE must not delete the newer value and version key (its later
// raises would then set the version back to an older LSN): the watermark
// in Redis is past the TRUNCATE's commit, so it is skipped (checked in the
// same script as each page's deletes).
//
// Negative control (by hand, not in CI): CDC_ZOMBIE_UNSAFE=1 runs the old
// leader with CDC_UNSAFE=unfenced-truncate, and the test fails.
func TestZombieLeaderCannotUndoWithTruncate(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	bin := harness.BuildEngineTags(t, "failpoints")
	cfg := f.writeConfig(fmt.Sprintf(`postgres:
  dsn: %q
  status_interval: 1s
  wal_sender_timeout: 3s
redis:
  addr: %q
rules:
  - table: barrier
    keys: ["barrier:{id}"]
  - table: users
    keys: ["user:{id}"]
    actions: [delete, version]
`, f.pg.DSN("postgres"), f.rd.Addr()))
	f.seedUsers(3)
	t0 := time.Now()
	a := f.startBinaryOfStreaming(bin, cfg, append(zombieEnv(), "CDC_FAILPOINT=sink-before-truncate", "CDC_FAILPOINT_ACTION=stop")...)
	b := f.startBinaryOf(bin, cfg)
	harness.WaitFor(t, 30*time.Second, "the second engine to wait as standby", func() bool {
		return strings.Contains(b.Output(), "waiting as standby")
	})
	leaderPID := f.activePID()
	f.exec(`TRUNCATE users`)
	harness.WaitFor(t, 30*time.Second, "the leader to freeze with the TRUNCATE in hand", func() bool {
		return strings.Contains(a.Output(), "failpoint sink-before-truncate: SIGSTOP")
	})
	harness.WaitFor(t, 60*time.Second, "the standby to take the slot from the frozen leader", func() bool {
		pid := f.activePID()
		return pid != 0 && pid != leaderPID
	})
	t.Logf("took over after %v", time.Since(t0))
	f.exec(`INSERT INTO users VALUES (1, 'new@x', 'new', '')`)
	f.barrier()
	version := f.get("user:1:v")
	if version == "" {
		t.Fatal("the standby did not raise user:1:v")
	}
	f.set("user:1") // a reader cached the new row

	if err := a.Signal(sigCont); err != nil {
		t.Fatal(err)
	}
	undone := func() bool { return f.get("user:1:v") != version || !f.exists("user:1") }
	harness.WaitFor(t, 60*time.Second, "the woken leader to skip its TRUNCATE or step back as standby", func() bool {
		out := a.Output()
		i := strings.Index(out, "failpoint sink-before-truncate")
		return strings.Contains(out, "skipping a TRUNCATE") || (i >= 0 && strings.Contains(out[i:], "waiting as standby")) || undone()
	})
	// Its sink goes on with the TRUNCATE at once on waking, unless the end
	// of its session stopped it first; give it ample time.
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end) && !undone(); time.Sleep(50 * time.Millisecond) {
	}
	t.Logf("the woken leader logged the skip: %v", strings.Contains(a.Output(), "skipping a TRUNCATE"))
	if os.Getenv("CDC_ZOMBIE_DEBUG") != "" {
		t.Logf("old leader:\n%s", a.Tail(40))
	}
	f.barrier()
	if got := f.get("user:1:v"); got != version || !f.exists("user:1") {
		t.Fatalf("the woken leader undid newer work: user:1:v = %q (was %q), user:1 exists %v", got, version, f.exists("user:1"))
	}
	t.Logf("checked after %v", time.Since(t0))
	for _, p := range []*harness.Process{a, b} {
		if code, _ := p.TermT(t, 30*time.Second); code != 0 {
			t.Fatalf("exit code %d; output:\n%s", code, p.Output())
		}
	}
	t.Logf("stopped after %v", time.Since(t0))
}

// zombieEnv is the old leader's extra environment: CDC_ZOMBIE_UNSAFE=1
// runs the negative control of TestZombieLeaderCannotUndoWithTruncate.
func zombieEnv() []string {
	if os.Getenv("CDC_ZOMBIE_UNSAFE") == "1" {
		return []string{"CDC_UNSAFE=unfenced-truncate"}
	}
	return nil
}
