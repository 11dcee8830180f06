package cacheaside

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

func TestFlightSharesOneRun(t *testing.T) {
	var g group
	var runs atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	var wg sync.WaitGroup
	results := make([]flightResult, 50)
	wg.Add(1)
	go func() {
		defer wg.Done()
		results[0] = g.do(context.Background(), "k", func() ([]byte, error) {
			runs.Add(1)
			close(started)
			<-release
			return []byte("v"), nil
		})
	}()
	<-started
	for i := 1; i < len(results); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = g.do(context.Background(), "k", func() ([]byte, error) {
				runs.Add(1)
				return []byte("other"), nil
			})
		}()
	}
	harness.WaitFor(t, time.Second, "all callers waiting", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.calls["k"].waiters == len(results)-1
	})
	close(release)
	wg.Wait()
	if runs.Load() != 1 {
		t.Fatalf("runs = %d", runs.Load())
	}
	for i, r := range results {
		if string(r.val) != "v" || r.err != nil || r.shared != (i > 0) {
			t.Fatalf("result %d = %+v", i, r)
		}
	}
	results[1].val[0] = 'X'
	if string(results[2].val) != "v" || string(results[0].val) != "v" {
		t.Error("callers share one slice")
	}
}

func TestFlightWaiterContextAndLeaderCancel(t *testing.T) {
	var g group
	leaderCtx, cancelLeader := context.WithCancel(context.Background())
	started := make(chan struct{})
	done := make(chan flightResult)
	go func() {
		done <- g.do(leaderCtx, "k", func() ([]byte, error) {
			close(started)
			<-leaderCtx.Done()
			return nil, leaderCtx.Err()
		})
	}()
	<-started

	// A waiter whose own context ends stops waiting.
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if r := g.do(short, "k", nil); !errors.Is(r.err, context.DeadlineExceeded) || r.retry {
		t.Errorf("waiter with ended context: %+v", r)
	}

	// A waiter whose context is fine is told to retry when the leader's ended.
	waiter := make(chan flightResult)
	go func() { waiter <- g.do(context.Background(), "k", nil) }()
	harness.WaitFor(t, time.Second, "waiter joined", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.calls["k"].waiters == 2
	})
	cancelLeader()
	if r := <-done; !errors.Is(r.err, context.Canceled) || r.shared {
		t.Errorf("leader: %+v", r)
	}
	if r := <-waiter; !r.retry || !r.shared {
		t.Errorf("waiter should retry: %+v", r)
	}
}

func TestFlightPanicReleasesWaiters(t *testing.T) {
	var g group
	started := make(chan struct{})
	release := make(chan struct{})
	panicked := make(chan any)
	go func() {
		defer func() { panicked <- recover() }()
		g.do(context.Background(), "k", func() ([]byte, error) {
			close(started)
			<-release
			panic("boom")
		})
	}()
	<-started
	waiter := make(chan flightResult)
	go func() { waiter <- g.do(context.Background(), "k", nil) }()
	harness.WaitFor(t, time.Second, "waiter joined", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.calls["k"].waiters == 1
	})
	close(release)
	if p := <-panicked; p != "boom" {
		t.Errorf("panic = %v", p)
	}
	if r := <-waiter; !errors.Is(r.err, errLoadPanicked) {
		t.Errorf("waiter: %+v", r)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.calls) != 0 {
		t.Error("the call was not removed")
	}
}
