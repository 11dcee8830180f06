//go:build failpoints

package faults

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// failpointRuns replaces the running engine, once per run, by one armed
// with CDC_FAILPOINT=point:N (N random in 1..maxN) while the workload
// runs, waits until it kills itself there, stops the writers of large
// transactions (so that none re-invalidates what the crash may have lost;
// the one in progress commits if commitOpen, else rolls back), and starts
// an unarmed engine while small transactions go on.
func failpointRuns(t *testing.T, sc *scenario, f *fixture, rng *rand.Rand, o loadOpts, point string, maxN, defRuns int, commitOpen bool) {
	t.Helper()
	p := f.startStreaming()
	for i := 1; i <= runs(defRuns); i++ {
		n := 1 + rng.IntN(maxN)
		f.cycle(sc, rng, o, fmt.Sprintf("run %d (%s:%d)", i, point, n), func(l *load) {
			sleepRand(rng, 100*time.Millisecond, 400*time.Millisecond)
			if code, _ := p.TermT(t, 30*time.Second); code != 0 {
				t.Fatalf("SIGTERM before arming: exit code %d", code)
			}
			armed := f.startEngine(fmt.Sprintf("CDC_FAILPOINT=%s:%d", point, n))
			armed.ExitT(t, 90*time.Second)
			if !armed.KilledBy(syscall.SIGKILL) || !strings.Contains(armed.Output(), "failpoint "+point+": SIGKILL") {
				t.Fatalf("armed engine ended (%s) without reaching failpoint %s:%d; output:\n%s", armed.State(), point, n, armed.Tail(30))
			}
			sc.fault(point)
			l.stopBulk(commitOpen)
			sleepRand(rng, 0, 300*time.Millisecond)
			p = f.startStreaming()
			sleepRand(rng, 300*time.Millisecond, 800*time.Millisecond)
		}, nil)
	}
}

// TestFailpointSinkAfterAck: SIGKILL right after Redis acknowledged a
// batch, before its position is recorded (pitfall 1: the replay must be
// harmless and complete).
func TestFailpointSinkAfterAck(t *testing.T) {
	sc := newScenario(t, "failpoint sink-after-ack", "crash between Redis ack and status update", false)
	f := newFixture(t, fixtureOpts{})
	failpointRuns(t, sc, f, rngFor(t), defaultLoad, "sink-after-ack", 40, 3, true)
}

// TestFailpointSinkMidTxn: without in-progress streaming, a large
// committed transaction is applied in chunks as it arrives; SIGKILL after
// a chunk, before its commit. The whole transaction must be applied after
// the restart (its position had not moved).
func TestFailpointSinkMidTxn(t *testing.T) {
	sc := newScenario(t, "failpoint sink-mid-txn (streaming off, 8-18k-key transactions)", "large transaction applied in chunks; position moves at commit", false)
	f := newFixture(t, fixtureOpts{streaming: "false", bigRows: 20000, maxBatchKeys: 2000})
	o := defaultLoad
	o.bulk, o.bulkRows = 1, [2]int{4000, 9000}
	// The transaction applied in chunks has committed; one still open must
	// not commit afterwards and re-invalidate its rows.
	failpointRuns(t, sc, f, rngFor(t), o, "sink-mid-txn", 6, 2, false)
}

// TestFailpointStreamAfterStop: streamed transactions
// (logical_decoding_work_mem 64kB, two concurrent large writers that stay
// open, savepoints rolled back inside them); SIGKILL after a Stream Stop,
// before the transaction's Stream Commit.
func TestFailpointStreamAfterStop(t *testing.T) {
	sc := newScenario(t, "failpoint stream-after-stop (streamed transactions, 64kB)", "streamed transactions: applied at Stream Commit only", false)
	f := newFixture(t, fixtureOpts{bigRows: 20000})
	o := defaultLoad
	o.bulk, o.bulkRows, o.bulkHold = 2, [2]int{1500, 5000}, 300*time.Millisecond
	// The streamed transactions open at the crash commit after the restart:
	// they must be received again from their start and applied.
	failpointRuns(t, sc, f, rngFor(t), o, "stream-after-stop", 12, 3, true)
}

// confirmReceivedRun stops the running engine p (SIGTERM) and starts the
// deliberately broken one (CDC_UNSAFE=confirm-received: it confirms what
// it received, not what Redis acknowledged); with every plain key cached
// it stops Redis, lets the writers commit 120 transactions, waits until
// the slot's confirmed position has passed transactions Redis never saw
// (and settled), kills the engine with SIGKILL, resumes Redis, starts a
// correct engine (returned) and checks.
func confirmReceivedRun(t *testing.T, sc *scenario, f *fixture, rng *rand.Rand, p *harness.Process, i int) (checkResult, *harness.Process) {
	t.Helper()
	if p != nil {
		if code, _ := p.TermT(t, 30*time.Second); code != 0 {
			t.Fatalf("SIGTERM: exit code %d", code)
		}
	}
	p = f.startStreaming("CDC_UNSAFE=confirm-received")
	sc.run()
	f.fill()
	f.barrier(60 * time.Second)
	resumeRedis := f.rd.PauseT(t)
	sc.fault("Redis SIGSTOP")
	// Everything committed from here on cannot have been applied.
	stalled := f.currentLSN()
	stats := &loadStats{}
	l := f.startLoad(rng, loadOpts{writers: 3}, stats)
	// Enough transactions to fill the engine's queue (it stops reading,
	// and so confirming, when 64 wait for the sink), then let its
	// confirmed position settle.
	harness.WaitFor(t, 60*time.Second, "120 commits while Redis is stopped", func() bool { return stats.commits.Load() >= 120 })
	l.stop()
	sc.addLoad(stats)
	last, since := f.confirmed(), time.Now()
	harness.WaitFor(t, 60*time.Second, "the broken engine to confirm transactions Redis never saw, and then stop moving", func() bool {
		c := f.confirmed()
		if c != last {
			last, since = c, time.Now()
		}
		return c > stalled && time.Since(since) > 2500*time.Millisecond
	})
	sc.note("run %d: with Redis stopped at %s, the slot confirmed %s", i, stalled, f.confirmed())
	p.KillT(t)
	sc.fault("kill -9")
	resumeRedis()
	p = f.startStreaming()
	r := f.quiesce()
	sc.record(fmt.Sprintf("run %d, after the broken engine's crash [%d commits]", i, stats.commits.Load()), r)
	return r, p
}

// TestNegativeConfirmReceived is the negative control of "the position
// follows Redis": with the broken engine and sink.watermark: false (so
// that no second line of defence hides the loss), the checker must find
// stale keys. If it does not, the suite could not see a lost invalidation.
func TestNegativeConfirmReceived(t *testing.T) {
	sc := newScenario(t, "NEGATIVE: CDC_UNSAFE=confirm-received + kill -9 while Redis is stopped, watermark off", "the checker sees lost invalidations", true)
	f := newFixture(t, fixtureOpts{noWatermark: true})
	rng := rngFor(t)
	var p *harness.Process
	for i := 1; i <= runs(1); i++ {
		var r checkResult
		r, p = confirmReceivedRun(t, sc, f, rng, p, i)
		if r.stale() == 0 {
			t.Fatalf("negative control run %d: the broken engine confirmed unapplied transactions and was killed, but the checker found no stale key (%s): the suite cannot see lost invalidations", i, r)
		}
		sc.note("run %d: checker found %d stale keys, e.g. %s", i, r.stale(), r.examples(1)[0])
	}
}

// TestConfirmReceivedCaughtByWatermark: the same broken engine with the
// watermark on (the default). The restarted engine finds the watermark
// below the slot's confirmed position, concludes that Redis missed
// changes, and flushes: the second line of defence hides the first bug,
// so the checker finds nothing, and the flush must be in the log.
func TestConfirmReceivedCaughtByWatermark(t *testing.T) {
	sc := newScenario(t, "CDC_UNSAFE=confirm-received + kill -9 while Redis is stopped, watermark on", "fail closed: watermark below the slot => flush", false)
	f := newFixture(t, fixtureOpts{})
	rng := rngFor(t)
	var p *harness.Process
	for i := 1; i <= runs(1); i++ {
		_, p = confirmReceivedRun(t, sc, f, rng, p, i)
		if !strings.Contains(p.Output(), "cannot prove the cache saw every change") {
			t.Errorf("run %d: the restarted engine did not flush although its watermark was below the slot's confirmed position", i)
		} else {
			sc.note("run %d: the restarted engine found its watermark below the slot and flushed", i)
		}
	}
}
