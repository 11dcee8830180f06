package sink

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// countPipelines is a go-redis hook that counts the pipelines sent,
// besides a new connection's set-up (HELLO, CLIENT SETINFO).
type countPipelines struct{ n atomic.Int64 }

func (h *countPipelines) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *countPipelines) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *countPipelines) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() != "client" && cmds[0].Name() != "hello" {
			h.n.Add(1) // not a connection's set-up
		}
		return next(ctx, cmds)
	}
}

// chanAcker hands acknowledged positions to a test while Run runs.
type chanAcker chan replication.LSN

func (a chanAcker) Ack(l replication.LSN) { a <- l }

func waitAck(t *testing.T, acks chanAcker, want replication.LSN, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(within)
	for {
		select {
		case got := <-acks:
			if got == want {
				return time.Since(start)
			}
			if got > want {
				t.Fatalf("acked %s, want %s", got, want)
			}
		case <-deadline:
			t.Fatalf("%s not acknowledged within %s", want, within)
		}
	}
}

// A position that comes without work for Redis (a keepalive's, which the
// walsender sends after nearly every transaction while the engine keeps
// up) costs no round trip of its own: a fresh commit right behind it would
// wait for that round trip. The position goes with the next batch, or is
// watermarked and acknowledged after holdPosition when nothing follows.
func TestKeepalivePositionCostsNoRoundTrip(t *testing.T) {
	rdb, _ := newRedis(t)
	hook := &countPipelines{}
	rdb.AddHook(hook)
	acks := make(chanAcker, 16)
	s := New(Config{Client: rdb, WatermarkKey: "wm"}, acks)
	in := make(chan replication.Event, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, in) }()
	defer func() { cancel(); <-done }()

	sent := time.Now()
	in <- replication.Event{End: 100}
	for len(in) > 0 { // the sink took it
		time.Sleep(100 * time.Microsecond)
	}
	time.Sleep(time.Millisecond) // less than holdPosition
	// On a loaded machine the sleeps can outlast holdPosition, and then the
	// hold timer rightly watermarks the position first.
	if n := hook.n.Load(); n != 0 && time.Since(sent) < holdPosition {
		t.Fatalf("a keepalive position cost %d round trips before the next commit", n)
	}
	held := hook.n.Load()
	in <- replication.Event{Keys: []string{"k:1"}, LSN: 200, End: 208, CommitTime: time.Now()}
	waitAck(t, acks, 208, 5*time.Second)
	if n := hook.n.Load() - held; n != 1 {
		t.Errorf("%d round trips for a keepalive and a commit, want the commit's 1", n)
	}
	// A keepalive with nothing after it is still confirmed, soon.
	in <- replication.Event{End: 300}
	if took := waitAck(t, acks, 300, 5*time.Second); took < holdPosition/2 {
		t.Errorf("a lone keepalive position was acknowledged after %s, before its hold of %s", took, holdPosition)
	}
	if v, err := rdb.Get(context.Background(), "wm").Result(); err != nil || v != replication.LSN(300).String() {
		t.Errorf("watermark %q %v, want %s: a position is acknowledged only once watermarked", v, err, replication.LSN(300))
	}
}

// While catching up, a batch waits GatherWait for more events; a fresh
// transaction that arrives meanwhile ends the wait.
func TestGatherWaitEndsAtFreshCommit(t *testing.T) {
	rdb, _ := newRedis(t)
	acks := make(chanAcker, 16)
	s := New(Config{Client: rdb, CatchUpAge: time.Second, GatherWait: 10 * time.Second}, acks)
	in := make(chan replication.Event, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, in) }()
	defer func() { cancel(); <-done }()

	// An old transaction: its batch gathers for GatherWait.
	in <- replication.Event{Keys: []string{"k:1"}, LSN: 3, End: 4, CommitTime: time.Now().Add(-time.Hour)}
	time.Sleep(20 * time.Millisecond)
	in <- replication.Event{Keys: []string{"k:2"}, LSN: 5, End: 6, CommitTime: time.Now()}
	if took := waitAck(t, acks, 6, 8*time.Second); took > 3*time.Second {
		t.Errorf("a fresh commit waited %s behind a gathering window of 10s", took)
	}
}

// A batch gathers events up to MaxBatchBytes (Event.Size), not only up to
// MaxBatchKeys: wide refreshed rows would otherwise fill a pipeline with
// gigabytes.
func TestBatchBoundedByBytes(t *testing.T) {
	rdb, _ := newRedis(t)
	var events []replication.Event
	for i := range 3 {
		lsn := replication.LSN(10 * (i + 1))
		events = append(events, replication.Event{Keys: []string{"k:" + lsn.String()}, LSN: lsn, End: lsn + 1, Size: 3 << 20})
	}
	s := run(t, Config{Client: rdb, MaxBatchBytes: 4 << 20}, events...)
	if n := s.Stats.Batches.Load(); n != 2 {
		t.Errorf("%d batches for three events of 3 MB with MaxBatchBytes 4 MB, want 2", n)
	}
}
