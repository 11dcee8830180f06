package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The engine's online consistency verifier (verify:, package verifier) runs
// in every engine of this suite: 1 in 10 invalidated keys (by a hash of
// the key, so every change of a sampled key) is read back after 200 ms and
// 1 s. Every key would cost too much in the scenarios of large
// transactions (millions of checks on two shared cores, samples dropped). Its figures are the engine's own view of the
// same runs the checker judges from outside.
//
// Where the figures come from: each engine process counts from zero and
// stores its totals in cdcinvalidate:<slot>:verify every
// verify.report_interval and once more when it stops; the record names the
// process (pid, started). A poller of the fixture reads the record every
// verifyPoll and keeps, per process, the record with the most checks (so a
// Redis restarted empty or from an older AOF does not take figures back);
// the scenario sums the processes. What an engine killed with SIGKILL had
// not yet stored (at most one report interval) and the checks still
// waiting in its memory when it died are lost: the figures are a lower
// bound of the checks made, never a count of checks not made.
const verifyConfig = `verify:
  enabled: true
  sample_rate: 10
  windows: [200ms, 1s]
  report_interval: 200ms
  max_pending: 400000
`

const verifyPoll = 100 * time.Millisecond

// verifyWindow is one window's totals as the engine stores them.
type verifyWindow struct {
	Window                             time.Duration
	Absent, Newer, Stale, Unverifiable uint64
	Dropped                            uint64
}

type verifyRecord struct {
	At      time.Time      `json:"at"`
	Started time.Time      `json:"started"`
	PID     int            `json:"pid"`
	Windows []verifyWindow `json:"windows"`
}

func (r verifyRecord) checks() uint64 {
	var n uint64
	for _, w := range r.Windows {
		n += w.Absent + w.Newer + w.Stale + w.Unverifiable
	}
	return n
}

// verifyFigures are the verifier's totals over the windows and engine
// processes of a scenario. Each sample is checked once per window.
type verifyFigures struct {
	procs                                       int
	absent, newer, stale, unverifiable, dropped uint64
}

func (v verifyFigures) checks() uint64 { return v.absent + v.newer + v.stale + v.unverifiable }

func (v *verifyFigures) add(o verifyFigures) {
	v.procs += o.procs
	v.absent += o.absent
	v.newer += o.newer
	v.stale += o.stale
	v.unverifiable += o.unverifiable
	v.dropped += o.dropped
}

func (v verifyFigures) String() string {
	return fmt.Sprintf("%d checks by %d engine processes (absent %d, newer %d, stale %d, unverifiable %d; %d samples dropped)",
		v.checks(), v.procs, v.absent, v.newer, v.stale, v.unverifiable, v.dropped)
}

// verifyPoller keeps the latest record of every engine process of a fixture.
type verifyPoller struct {
	f    *fixture
	mu   sync.Mutex
	recs map[string]verifyRecord
}

var pollers struct {
	mu  sync.Mutex
	byT map[*testing.T][]*verifyPoller
}

// startVerifyPoller polls the fixture's verifier record until the test's
// cleanup, which reads it once more after the engines stopped (their
// cleanups run first: they are registered later).
func (f *fixture) startVerifyPoller() {
	vp := &verifyPoller{f: f, recs: map[string]verifyRecord{}}
	f.verify = vp
	pollers.mu.Lock()
	if pollers.byT == nil {
		pollers.byT = map[*testing.T][]*verifyPoller{}
	}
	pollers.byT[f.t] = append(pollers.byT[f.t], vp)
	pollers.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(verifyPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				vp.poll(ctx)
			}
		}
	}()
	f.t.Cleanup(func() {
		cancel()
		<-done
		vp.poll(context.Background())
	})
}

// awaitVerifierStale gives the running engine's verifier up to d to count
// a stale check (a reading waits for the offers of the batches sent
// before it, then for its confirmation), and reports whether it did.
func (f *fixture) awaitVerifierStale(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if f.verify.figures().stale > 0 {
			return true
		}
		time.Sleep(verifyPoll)
	}
	return false
}

func (vp *verifyPoller) poll(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	b, err := vp.f.rdb.Get(ctx, "cdcinvalidate:"+vp.f.name+":verify").Bytes()
	if errors.Is(err, redis.Nil) || err != nil {
		return // none yet, or Redis stopped by a fault: next time
	}
	var r verifyRecord
	if json.Unmarshal(b, &r) != nil {
		return
	}
	id := fmt.Sprintf("%d@%s", r.PID, r.Started.Format(time.RFC3339Nano))
	vp.mu.Lock()
	if old, ok := vp.recs[id]; !ok || r.checks() >= old.checks() {
		vp.recs[id] = r
	}
	vp.mu.Unlock()
}

func (vp *verifyPoller) figures() verifyFigures {
	vp.mu.Lock()
	defer vp.mu.Unlock()
	var v verifyFigures
	for _, r := range vp.recs {
		v.procs++
		for i, w := range r.Windows {
			v.absent += w.Absent
			v.newer += w.Newer
			v.stale += w.Stale
			v.unverifiable += w.Unverifiable
			if i == 0 {
				v.dropped += w.Dropped // counted in every window
			}
		}
	}
	return v
}

// verifyFiguresOf sums the figures of every fixture of t, and logs each
// engine process's.
func verifyFiguresOf(t *testing.T) verifyFigures {
	pollers.mu.Lock()
	list := pollers.byT[t]
	delete(pollers.byT, t)
	pollers.mu.Unlock()
	var v verifyFigures
	for _, vp := range list {
		v.add(vp.figures())
		vp.mu.Lock()
		for _, r := range vp.recs {
			var ws []string
			for _, w := range r.Windows {
				ws = append(ws, fmt.Sprintf("%s: absent %d, newer %d, stale %d, unverifiable %d", w.Window, w.Absent, w.Newer, w.Stale, w.Unverifiable))
			}
			t.Logf("verifier of engine pid %d (started %s, last report %s): %s", r.PID, r.Started.Format("15:04:05.000"), r.At.Format("15:04:05.000"), strings.Join(ws, "; "))
		}
		vp.mu.Unlock()
	}
	return v
}
