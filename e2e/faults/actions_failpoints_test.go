//go:build failpoints

package faults

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// terminateMidEvent waits up to d until the newest stream entry is a part
// that is not its transaction's last (the engine is between two parts of
// one transaction's event), then terminates the walsender and waits until
// the engine streams again on a new one. It reports whether it found such
// a moment. The engine reconnects in-process: the new session sends the
// transaction again from its start, while the sink holds its unsent keys.
func (a *actionsRef) terminateMidEvent(p *harness.Process, d time.Duration) bool {
	f := a.f
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+time.Minute)
	defer cancel()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		msgs, err := f.rdb.XRevRangeN(ctx, actionStream, "+", "-", 1).Result()
		if err == nil && len(msgs) == 1 {
			body, _ := msgs[0].Values["event"].(string)
			if strings.Contains(body[:min(len(body), 80)], `"last":false`) {
				if pid := f.walsenderPID(); pid != 0 {
					f.exec(`SELECT pg_terminate_backend($1)`, pid)
					harness.WaitFor(f.t, 30*time.Second, "a new walsender", func() bool { n := f.walsenderPID(); return n != 0 && n != pid })
					f.waitStreaming(p, 30*time.Second)
					return true
				}
			}
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

// TestActionsFailpoints runs the action rules with postgres.streaming off:
// a large transaction's keys and actions are applied in chunks before its
// commit, so its stream event is written part by part over several
// batches. Each run first terminates the walsender twice while the newest
// stream entry is a part that is not the last (a transaction's event half
// written), then kills the engine at a failpoint, in turn sink-mid-txn
// (after a chunk, before the commit) and sink-after-ack (Redis
// acknowledged a batch, the position not yet recorded). Version keys are
// sampled around every fault; after each run the actions are checked
// exactly against the reference (actions_test.go).
func TestActionsFailpoints(t *testing.T) {
	sc := newScenario(t, "actions refresh, version, stream: failpoints sink-mid-txn / sink-after-ack, walsender terminated mid-event (streaming off)",
		"actions of a transaction applied in chunks: replayed whole, parts neither repeated nor lost", false)
	// The verifier judges this scenario too. Its stale checks here (2026-12-07:
	// 6, 10 and 2 per run, all refresh keys of large transactions applied in
	// chunks, none found by the checker) were readings that held a later
	// chunk of a transaction whose sample was not offered yet, confirmed by
	// a reading that met the next transaction in the same state; readings
	// now wait for the offers of the batches sent before them
	// (verifier.TestReadingWaitsForOffers).
	f := newFixture(t, fixtureOpts{streaming: "false", bigRows: 12000, maxBatchKeys: 2000, actions: true})
	rng := rngFor(t)
	p := f.startStreaming()
	ref := f.newActionsRef()
	o := defaultLoad
	o.bulk, o.bulkRows = 1, [2]int{2000, 6000}
	points := []struct {
		name       string
		maxN       int
		commitOpen bool
	}{{"sink-mid-txn", 6, false}, {"sink-after-ack", 40, true}}
	for i := 1; i <= runs(2); i++ {
		fp := points[(i-1)%len(points)]
		n := 1 + rng.IntN(fp.maxN)
		f.cycle(sc, rng, o, fmt.Sprintf("run %d (%s:%d)", i, fp.name, n), func(l *load) {
			for k := 0; k < 2; k++ {
				ref.sample()
				if ref.terminateMidEvent(p, 4*time.Second) {
					sc.fault("walsender terminated mid-event")
				} else {
					sc.note("run %d: no half-written event within 4s, walsender not terminated", i)
				}
				ref.sample()
			}
			sleepRand(rng, 100*time.Millisecond, 400*time.Millisecond)
			ref.sample()
			if code, _ := p.TermT(t, 30*time.Second); code != 0 {
				t.Fatalf("SIGTERM before arming: exit code %d", code)
			}
			armed := f.startEngine(fmt.Sprintf("CDC_FAILPOINT=%s:%d", fp.name, n))
			armed.ExitT(t, 90*time.Second)
			if !armed.KilledBy(syscall.SIGKILL) || !strings.Contains(armed.Output(), "failpoint "+fp.name+": SIGKILL") {
				t.Fatalf("armed engine ended (%s) without reaching failpoint %s:%d; output:\n%s", armed.State(), fp.name, n, armed.Tail(30))
			}
			sc.fault(fp.name)
			ref.sample()
			// As in failpointRuns: no later large transaction re-applies
			// what the crash may have lost.
			l.stopBulk(fp.commitOpen)
			sleepRand(rng, 0, 300*time.Millisecond)
			p = f.startStreaming()
			ref.sample()
			sleepRand(rng, 300*time.Millisecond, 800*time.Millisecond)
		}, nil)
		ref.check(sc, fmt.Sprintf("run %d", i))
	}
}

// TestNegativeActionsConfirmReceived is the negative control of the
// actions checker with a broken engine: CDC_UNSAFE=confirm-received (it
// confirms what it received, not what Redis applied), killed while Redis
// is stopped, with the watermark off (nothing flushes). The transactions
// it confirmed but never applied are lost: the checker must find their
// refreshed values stale or missing, their version keys behind and their
// stream entries missing.
func TestNegativeActionsConfirmReceived(t *testing.T) {
	sc := newScenario(t, "NEGATIVE: actions, CDC_UNSAFE=confirm-received + kill -9 while Redis is stopped, watermark off",
		"the actions checker sees lost refreshes, versions and stream entries", true)
	f := newFixture(t, fixtureOpts{noWatermark: true, actions: true})
	rng := rngFor(t)
	p := f.startStreaming() // creates the engine's slot before the reference's
	ref := f.newActionsRef()
	// The losses of a run stay in Redis, so each run is judged by the
	// problems that were not there after the run before.
	before := map[string]bool{}
	for i := 1; i <= runs(1); i++ {
		_, p = confirmReceivedRun(t, sc, f, rng, p, i)
		r := ref.check(sc, fmt.Sprintf("run %d, after the broken engine's crash", i))
		fresh := func(kinds ...string) (n int, example string) {
			for _, k := range kinds {
				for _, d := range r.problems[k] {
					if !before[k+d] {
						n++
						example = d
					}
				}
			}
			return n, example
		}
		refresh, _ := fresh(pRefreshStale, pRefreshMissing, pRefreshGone)
		version, _ := fresh(pVersionWrong, pVersionMissing)
		stream, example := fresh(pStreamMissing)
		if refresh == 0 || version == 0 || stream == 0 {
			t.Fatalf("negative control run %d: the broken engine lost transactions, but the actions checker found %d new refresh, %d new version and %d new stream problems (%s): it cannot see lost actions", i, refresh, version, stream, r)
		}
		sc.note("run %d: actions checker found %d refresh, %d version, %d stream problems new in this run, e.g. %s", i, refresh, version, stream, example)
		for k, l := range r.problems {
			for _, d := range l {
				before[k+d] = true
			}
		}
	}
}
