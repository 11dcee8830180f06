package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// gateHook holds every pipeline that names a key starting with "slow:"
// until open is closed (Redis far away, or slow, for that batch only), and
// fails the first such pipeline when failFirst is set. It logs each
// pipeline's keys as it starts and ends.
type gateHook struct {
	open      chan struct{}
	failFirst bool

	mu     sync.Mutex
	failed bool
	log    []string
}

func newGate() *gateHook { return &gateHook{open: make(chan struct{})} }

func (h *gateHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *gateHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *gateHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var keys []string
		slow := false
		for _, c := range cmds {
			if c.Name() != "unlink" && c.Name() != "del" && c.Name() != "eval" {
				continue
			}
			for _, a := range c.Args()[1:] {
				if k, ok := a.(string); ok && strings.Contains(k, ":") && !strings.Contains(k, "/") && !strings.HasPrefix(k, "local ") {
					keys = append(keys, k)
					slow = slow || strings.HasPrefix(k, "slow:")
				}
			}
		}
		if len(keys) == 0 {
			return next(ctx, cmds)
		}
		name := strings.Join(keys, ",")
		h.note("start " + name)
		if slow {
			select {
			case <-h.open:
			case <-ctx.Done(): // the sink stopped (a failed test)
				return ctx.Err()
			}
			h.mu.Lock()
			fail := h.failFirst && !h.failed
			h.failed = h.failed || fail
			h.mu.Unlock()
			if fail {
				h.note("fail " + name)
				return errors.New("connection reset (test)")
			}
		}
		err := next(ctx, cmds)
		h.note("end " + name)
		return err
	}
}

func (h *gateHook) note(s string) {
	h.mu.Lock()
	h.log = append(h.log, s)
	h.mu.Unlock()
}

func (h *gateHook) logged() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.Join(h.log, "; ")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// runAsync runs a sink over in until the test ends.
func runAsync(t *testing.T, s *Sink, in chan replication.Event) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, in) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
}

func noAck(t *testing.T, acks chanAcker, what string) {
	t.Helper()
	select {
	case l := <-acks:
		t.Fatalf("acknowledged %s %s", l, what)
	default:
	}
}

// gated is a sink with the watermark kept, running over a throwaway Redis
// whose pipelines pass through gate.
type gated struct {
	rdb  *redis.Client
	gate *gateHook
	s    *Sink
	in   chan replication.Event
	acks chanAcker
}

// newGated starts a gated sink with max_in_flight n; the first slow
// pipeline fails when failFirst is set (then retried after 50 ms).
func newGated(t *testing.T, n int, failFirst bool) *gated {
	rdb, _ := newRedis(t)
	g := &gated{rdb: rdb, gate: newGate(), in: make(chan replication.Event, 4), acks: make(chanAcker, 16)}
	g.gate.failFirst = failFirst
	rdb.AddHook(g.gate)
	g.s = New(Config{Client: rdb, WatermarkKey: "wm", MaxInFlight: n, MinBackoff: 50 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}, g.acks)
	runAsync(t, g.s, g.in)
	return g
}

// A fresh commit of other keys does not wait for the answer to the batch
// ahead of it; positions are still acknowledged, and the watermark raised,
// only as far as every earlier batch was applied.
func TestFlightsOvertakeButAcknowledgeInOrder(t *testing.T) {
	g := newGated(t, 4, false)
	rdb, gate, s, in, acks := g.rdb, g.gate, g.s, g.in, g.acks
	ctx := context.Background()
	for _, k := range []string{"slow:1", "fast:2", "fast:3"} {
		rdb.Set(ctx, k, "v", 0)
	}

	in <- replication.Event{Keys: []string{"slow:1"}, LSN: 0x10, End: 0x18, CommitTime: time.Now()}
	waitFor(t, "the first batch to be sent", func() bool { return strings.Contains(gate.logged(), "start slow:1") })
	in <- replication.Event{Keys: []string{"fast:2"}, LSN: 0x20, End: 0x28, CommitTime: time.Now()}
	waitFor(t, "fast:2 to be deleted while slow:1 is in flight", func() bool { return rdb.Exists(ctx, "fast:2").Val() == 0 })
	in <- replication.Event{Keys: []string{"fast:3"}, LSN: 0x30, End: 0x38, CommitTime: time.Now()}
	waitFor(t, "fast:3 to be deleted while slow:1 is in flight", func() bool { return rdb.Exists(ctx, "fast:3").Val() == 0 })

	time.Sleep(3 * holdPosition) // a hold timer must not report what is not applied
	noAck(t, acks, "while the batch before it was in flight")
	if v := rdb.Get(ctx, "wm").Val(); v != "" {
		t.Fatalf("watermark %q while slow:1 (0/18) was not applied: a reader waiting for 0/28 would read before 0/18's invalidation", v)
	}
	if rdb.Exists(ctx, "slow:1").Val() != 1 {
		t.Fatal("slow:1 gone before its pipeline was let through")
	}
	close(gate.open)
	waitAck(t, acks, 0x18, 5*time.Second)
	waitAck(t, acks, 0x38, 5*time.Second)
	if v := rdb.Get(ctx, "wm").Val(); v != replication.LSN(0x38).String() {
		t.Errorf("watermark %q, want %s", v, replication.LSN(0x38))
	}
	if n := s.Stats.Batches.Load(); n < 3 {
		t.Errorf("%d batches, want 3 (one per commit)", n)
	}
}

// With every slot taken, a fresh commit waits for the oldest answer before
// its batch is gathered: a commit that arrives during the wait goes in the
// same batch instead of waiting for a slot of its own.
func TestFlightWaitingForASlotTakesWhatArrives(t *testing.T) {
	g := newGated(t, 2, false)
	gate, in, acks := g.gate, g.in, g.acks
	in <- replication.Event{Keys: []string{"slow:1"}, LSN: 0x10, End: 0x18}
	waitFor(t, "the first batch to be sent", func() bool { return strings.Contains(gate.logged(), "start slow:1") })
	in <- replication.Event{Keys: []string{"slow:2"}, LSN: 0x20, End: 0x28}
	waitFor(t, "both slots to be taken", func() bool { return strings.Count(gate.logged(), "start slow:") == 2 })
	in <- replication.Event{Keys: []string{"fast:3"}, LSN: 0x30, End: 0x38}
	waitFor(t, "the sink to take fast:3", func() bool { return len(in) == 0 })
	time.Sleep(20 * time.Millisecond) // the sink waits for a slot now
	in <- replication.Event{Keys: []string{"fast:4"}, LSN: 0x40, End: 0x48}
	time.Sleep(20 * time.Millisecond)
	close(gate.open)
	waitAck(t, acks, 0x48, 5*time.Second)
	if log := gate.logged(); !strings.Contains(log, "start fast:3,fast:4") {
		t.Errorf("pipelines %s: fast:3 and fast:4 must go together once a slot was free", log)
	}
	// What sink_flights_total and sink_flight_waits_total show.
	st := &g.s.Stats
	if f, w, d := st.Flights.Load(), st.SlotWaits.Load(), st.Drains.Load(); f != 3 || w != 1 || d != 0 {
		t.Errorf("flights %d, slot waits %d, drains %d; want 3 (slow:1, slow:2, fast:3+4), 1 (fast:3), 0", f, w, d)
	}
}

// A batch that deletes a key a batch in flight deletes, or that carries
// other actions, or any batch with max_in_flight 1, waits until every batch in flight was answered: Redis
// applies it after them, as one pipeline would.
func TestFlightWaitsForSameKeyAndForActions(t *testing.T) {
	for _, tc := range []struct {
		name        string
		maxInFlight int
		next        replication.Event
	}{
		{"same key", 4, replication.Event{Keys: []string{"slow:1"}, LSN: 0x20, End: 0x28}},
		{"version raise", 4, replication.Event{Actions: []replication.Action{act(replication.ActVersion, "other:v")}, LSN: 0x20, End: 0x28}},
		// With max_in_flight 1 every batch waits for the one before.
		{"max_in_flight 1", 1, replication.Event{Keys: []string{"fast:2"}, LSN: 0x20, End: 0x28}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGated(t, tc.maxInFlight, false)
			gate, in, acks := g.gate, g.in, g.acks
			in <- replication.Event{Keys: []string{"slow:1"}, LSN: 0x10, End: 0x18}
			waitFor(t, "the first batch to be sent", func() bool { return strings.Contains(gate.logged(), "start slow:1") })
			in <- tc.next
			time.Sleep(50 * time.Millisecond)
			if n := strings.Count(gate.logged(), "start"); n != 1 {
				t.Fatalf("a second pipeline started while the first was in flight: %s", gate.logged())
			}
			close(gate.open)
			waitAck(t, acks, 0x28, 5*time.Second)
			if log := gate.logged(); !strings.HasPrefix(log, "start slow:1; end slow:1; start ") {
				t.Errorf("pipelines %s: the second must start after the first ended", log)
			}
			// The wait shows in sink_flight_waits_total{reason="drain"};
			// with max_in_flight 1 nothing flies and nothing is counted.
			wantFlights, wantDrains := uint64(1), uint64(1)
			if tc.maxInFlight == 1 {
				wantFlights, wantDrains = 0, 0
			}
			st := &g.s.Stats
			if f, d := st.Flights.Load(), st.Drains.Load(); f != wantFlights || d != wantDrains {
				t.Errorf("flights %d, drains %d; want %d, %d", f, d, wantFlights, wantDrains)
			}
		})
	}
}

// A batch in flight that fails is retried; what later batches applied
// meanwhile is acknowledged only after it succeeded.
func TestFailedFlightHoldsLaterPositions(t *testing.T) {
	g := newGated(t, 4, true)
	rdb, gate, s, in, acks := g.rdb, g.gate, g.s, g.in, g.acks
	ctx := context.Background()
	rdb.Set(ctx, "slow:1", "v", 0)
	in <- replication.Event{Keys: []string{"slow:1"}, LSN: 0x10, End: 0x18}
	waitFor(t, "the first batch to be sent", func() bool { return strings.Contains(gate.logged(), "start slow:1") })
	in <- replication.Event{Keys: []string{"fast:2"}, LSN: 0x20, End: 0x28}
	waitFor(t, "the second batch to be applied", func() bool { return strings.Contains(gate.logged(), "end fast:2") })
	close(gate.open) // the first attempt of slow:1 fails, the retry goes through
	waitAck(t, acks, 0x18, 5*time.Second)
	waitAck(t, acks, 0x28, 5*time.Second)
	if rdb.Exists(ctx, "slow:1").Val() != 0 {
		t.Error("slow:1 still cached after its position was acknowledged")
	}
	if s.Stats.Retries.Load() == 0 || !strings.Contains(gate.logged(), "fail slow:1") {
		t.Errorf("the failed pipeline was not retried: %s", gate.logged())
	}
}

// A burst of single-row commits with batches in flight ends with every key
// gone, every position acknowledged in order, and the watermark at the end.
func TestFlightsBurst(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	acks := make(chanAcker, 4096)
	s := New(Config{Client: rdb, WatermarkKey: "wm", MaxInFlight: 4}, acks)
	in := make(chan replication.Event, 64)
	const n = 2000
	for i := range n {
		rdb.Set(ctx, fmt.Sprintf("k:%d", i%300), "v", 0)
	}
	go func() {
		for i := range n {
			l := replication.LSN(0x100 + 0x10*i)
			ev := replication.Event{Keys: []string{fmt.Sprintf("k:%d", i%300)}, LSN: l, End: l + 8}
			if i%7 == 0 {
				ev = replication.Event{End: l + 8} // a keepalive
			}
			in <- ev
		}
		close(in)
	}()
	if err := s.Run(ctx, in); err != nil {
		t.Fatal(err)
	}
	close(acks)
	var last replication.LSN
	for l := range acks {
		if l <= last {
			t.Fatalf("acknowledged %s after %s", l, last)
		}
		last = l
	}
	if want := replication.LSN(0x100 + 0x10*(n-1) + 8); last != want {
		t.Errorf("last acknowledged %s, want %s", last, want)
	}
	if v := rdb.Get(ctx, "wm").Val(); v != last.String() {
		t.Errorf("watermark %q, want %s", v, last)
	}
	if keys := rdb.Keys(ctx, "k:*").Val(); len(keys) != 0 {
		t.Errorf("%d keys left: %v", len(keys), keys[:min(5, len(keys))])
	}
}
