package replication

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// fakeMapper records the relations it was bound to; Bind fails for tables
// named in fail.
type fakeMapper struct {
	name  string
	bound []string
	fail  map[string]bool
}

func (m *fakeMapper) Bind(rel *Relation) error {
	if m.fail[rel.QualifiedName()] {
		return errors.New("no column x")
	}
	m.bound = append(m.bound, rel.QualifiedName())
	return nil
}

func (m *fakeMapper) AppendChange(keys []string, acts []Action, ch *Change) ([]string, []Action, error) {
	return append(keys, m.name+":"+ch.Rel.Name), acts, nil
}

func (m *fakeMapper) AppendTruncate(globs []string, acts []Action, rel *Relation) ([]string, []Action) {
	return globs, acts
}

// swapSession is a session without a server: enough for takeSwap.
func swapSession(t *testing.T, old Mapper) (*session, chan Event) {
	t.Helper()
	out := make(chan Event, 16)
	s := New(Config{SpillDir: t.TempDir()}, old, nil, out)
	ss := newSession(context.Background(), s)
	ss.rels[2] = &Relation{ID: 2, Namespace: "public", Name: "orders"}
	ss.rels[1] = &Relation{ID: 1, Namespace: "public", Name: "users"}
	ss.budget = 1 << 20
	c1, c2 := net.Pipe()
	t.Cleanup(func() { c1.Close(); c2.Close() })
	ss.attachSwaps(c1)
	return ss, out
}

// setMapper runs SetMapper in the background.
func setMapper(ctx context.Context, s *Stream, m Mapper, globs []string, flush bool) <-chan error {
	done := make(chan error, 1)
	go func() { done <- s.SetMapper(ctx, m, globs, nil, flush) }()
	return done
}

// takeUntil calls takeSwap, as the loop does between messages, until the
// request was answered.
func takeUntil(t *testing.T, ss *session, done <-chan error) error {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := ss.takeSwap(); err != nil {
			t.Fatalf("takeSwap: %v", err)
		}
		select {
		case err := <-done:
			return err
		default:
			time.Sleep(time.Millisecond)
		}
	}
	t.Fatal("SetMapper not answered")
	return nil
}

func TestSetMapperWaitsForTransactionBoundary(t *testing.T) {
	t.Parallel()
	old := &fakeMapper{name: "old"}
	ss, out := swapSession(t, old)
	ss.inTxn = true
	next := &fakeMapper{name: "new"}
	done := setMapper(context.Background(), ss.s, next, []string{"acct:*"}, true)
	time.Sleep(20 * time.Millisecond)
	for range 5 {
		if err := ss.takeSwap(); err != nil {
			t.Fatal(err)
		}
	}
	if ss.s.mapper != old || len(next.bound) > 0 {
		t.Fatal("swapped inside a transaction")
	}
	ss.inTxn, ss.inStream = false, true
	if err := ss.takeSwap(); err != nil {
		t.Fatal(err)
	}
	if ss.s.mapper != old {
		t.Fatal("swapped inside a Stream Start..Stop block")
	}
	ss.inStream = false
	if err := takeUntil(t, ss, done); err != nil {
		t.Fatalf("SetMapper: %v", err)
	}
	if ss.s.mapper != next {
		t.Fatal("mapper not swapped at the boundary")
	}
	if want := []string{"public.users", "public.orders"}; !slices.Equal(next.bound, want) {
		t.Errorf("bound %q, want every cached relation in ID order %q", next.bound, want)
	}
	select {
	case ev := <-out:
		if !slices.Equal(ev.Globs, []string{"acct:*"}) || ev.End != 0 || len(ev.Keys) > 0 {
			t.Errorf("flush event %+v", ev)
		}
	default:
		t.Error("no flush event for the new patterns")
	}
	if ss.s.swap.waiting.Load() {
		t.Error("still waiting after the swap")
	}
}

func TestSetMapperBindFailureKeepsOldMapper(t *testing.T) {
	t.Parallel()
	old := &fakeMapper{name: "old"}
	ss, out := swapSession(t, old)
	next := &fakeMapper{name: "new", fail: map[string]bool{"public.orders": true}}
	err := takeUntil(t, ss, setMapper(context.Background(), ss.s, next, []string{"acct:*"}, true))
	if err == nil || !strings.Contains(err.Error(), "public.orders") || !strings.Contains(err.Error(), "no column x") {
		t.Fatalf("SetMapper = %v, want the Bind error naming public.orders", err)
	}
	if ss.s.mapper != old {
		t.Fatal("mapper swapped although Bind failed")
	}
	if len(out) > 0 {
		t.Errorf("flushed although the reload was rejected: %+v", <-out)
	}
}

// A streamed transaction open at the swap was partly mapped by the old
// rules: its commit must delete the new patterns, whether or not they are
// flushed at the boundary.
func TestSetMapperOpenStreamedTransactionGetsNewPatterns(t *testing.T) {
	t.Parallel()
	for _, flush := range []bool{true, false} {
		ss, out := swapSession(t, &fakeMapper{name: "old"})
		b := &ss.stream(700).buf
		if err := b.add(bufEntry{subXid: 700, text: "old:users"}, &ss.budget, ""); err != nil {
			t.Fatal(err)
		}
		if err := takeUntil(t, ss, setMapper(context.Background(), ss.s, &fakeMapper{name: "new"}, []string{"acct:*", "user:name:*"}, flush)); err != nil {
			t.Fatal(err)
		}
		if flush != (len(out) == 1) {
			t.Errorf("flush %v: %d events at the boundary", flush, len(out))
		}
		want := []bufEntry{{subXid: 700, text: "old:users"}, {subXid: 700, kind: entryGlob, text: "acct:*", more: true}, {subXid: 700, kind: entryGlob, text: "user:name:*"}}
		if got := entries(t, b); !slices.Equal(got, want) {
			t.Errorf("flush %v: open transaction holds %+v, want %+v", flush, got, want)
		}
	}
}

func TestSetMapperBetweenSessions(t *testing.T) {
	t.Parallel()
	ss, out := swapSession(t, &fakeMapper{name: "old"})
	ss.detachSwaps()
	next := &fakeMapper{name: "new"}
	if err := ss.s.SetMapper(context.Background(), next, []string{"acct:*"}, nil, true); err != nil {
		t.Fatal(err)
	}
	if ss.s.mapper != next {
		t.Fatal("the next session's mapper was not set")
	}
	if len(out) > 0 {
		t.Fatal("flushed with no session running")
	}
	// The next session flushes first, before any change.
	ss.rels = map[uint32]*Relation{}
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	ss.attachSwaps(c1)
	if err := ss.takeSwap(); err != nil {
		t.Fatal(err)
	}
	if ev := <-out; !slices.Equal(ev.Globs, []string{"acct:*"}) {
		t.Errorf("first event of the next session %+v", ev)
	}
	if len(next.bound) > 0 {
		t.Errorf("bound %q with no relation seen", next.bound)
	}
}

// A request the session did not take before it ended goes to the next one.
func TestSetMapperSessionEndsBeforeBoundary(t *testing.T) {
	t.Parallel()
	ss, _ := swapSession(t, &fakeMapper{name: "old"})
	ss.inTxn = true
	next := &fakeMapper{name: "new"}
	done := setMapper(context.Background(), ss.s, next, nil, true)
	harness.WaitFor(t, 5*time.Second, "the swap request to wait", func() bool { return ss.s.swap.waiting.Load() })
	ss.detachSwaps()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ss.s.mapper != next {
		t.Fatal("mapper not handed to the next session")
	}
}

func TestSetMapperCancelledBeforeTaken(t *testing.T) {
	t.Parallel()
	old := &fakeMapper{name: "old"}
	ss, _ := swapSession(t, old)
	ss.inTxn = true
	ctx, cancel := context.WithCancel(context.Background())
	done := setMapper(ctx, ss.s, &fakeMapper{name: "new"}, nil, true)
	harness.WaitFor(t, 5*time.Second, "the swap request to wait", func() bool { return ss.s.swap.waiting.Load() })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("SetMapper = %v, want context.Canceled", err)
	}
	ss.inTxn = false
	if err := ss.takeSwap(); err != nil {
		t.Fatal(err)
	}
	if ss.s.mapper != old {
		t.Fatal("a withdrawn request was applied")
	}
}

type fixedPositions struct{}

func (fixedPositions) Ack(LSN)                              {}
func (fixedPositions) Applied() LSN                         { return 0 }
func (fixedPositions) WaitApplied(LSN, time.Time) bool      { return true }
func (fixedPositions) Handed(end LSN, commitTime time.Time) {}

// A session whose flush of patterns left from a reload between sessions
// fails (the session ends while the sink is stuck) must not lose a reload
// request it took at the same time: the request is answered (the next
// session takes both), so this and every later reload return.
func TestSetMapperAnsweredWhenPendingFlushFails(t *testing.T) {
	t.Parallel()
	ss, out := swapSession(t, &fakeMapper{name: "old"})
	ss.detachSwaps()
	first := &fakeMapper{name: "first"}
	if err := ss.s.SetMapper(context.Background(), first, []string{"a:*"}, []string{"gen:a"}, true); err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	ss.attachSwaps(c1)
	second := &fakeMapper{name: "second"}
	done := setMapper(context.Background(), ss.s, second, []string{"b:*"}, true)
	harness.WaitFor(t, 5*time.Second, "the second request to wait", func() bool {
		ss.s.swap.mu.Lock()
		defer ss.s.swap.mu.Unlock()
		return ss.s.swap.req != nil
	})
	// The sink takes nothing (its queue is full) and the session ends.
	for len(out) < cap(out) {
		out <- Event{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ss.ctx, ss.s.pos = ctx, fixedPositions{}
	ss.rep.Interval, ss.rep.Prompt = time.Hour, time.Hour
	ss.rep.Sent(time.Now(), 0)
	if err := ss.takeSwap(); !errors.Is(err, context.Canceled) {
		t.Fatalf("takeSwap = %v, want the failed flush", err)
	}
	ss.detachSwaps()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("SetMapper = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SetMapper not answered after the session ended: the reload (and every later one) hangs")
	}
	if ss.s.mapper != second {
		t.Error("the next session does not start with the newest rules")
	}
	if got := ss.s.swap.pending; !slices.Contains(got, "a:*") || !slices.Contains(got, "b:*") {
		t.Errorf("patterns left for the next session to flush = %q, want a:* and b:*", got)
	}
	if got := ss.s.swap.pendingGens; !slices.Equal(got, []string{"gen:a"}) {
		t.Errorf("generation keys left for the next session = %q, want gen:a", got)
	}
}
