package cacheaside

import (
	"bytes"
	"context"
	"errors"
	"sync"
)

// errLoadPanicked is what the other readers of a key get when the loader of
// the reader they waited for panicked (the panic goes on in that reader).
var errLoadPanicked = errors.New("cacheaside: the loader panicked in a concurrent read of this key")

// group is a small single-flight: concurrent calls of do with one key run
// fn once, in the first caller's goroutine, and share its result. Unlike
// golang.org/x/sync/singleflight, a waiting caller stops waiting when its
// own context ends, and learns whether the run failed only because the
// first caller's context ended (then it should run again itself instead of
// reporting someone else's cancellation). It starts no goroutines.
type group struct {
	mu    sync.Mutex
	calls map[string]*call
}

type call struct {
	done    chan struct{} // closed when val and err are final
	val     []byte
	err     error
	ctxDone bool // the running caller's context had ended when fn returned
	waiters int  // callers sharing the result, guarded by group.mu
}

// flightResult is what one caller of do gets.
type flightResult struct {
	val    []byte // the caller's own copy when shared
	err    error
	shared bool // another caller ran fn
	retry  bool // shared, and fn failed because the runner's context ended
}

// do runs fn for key unless a run is under way, in which case it waits for
// that run's result or for ctx to end.
func (g *group) do(ctx context.Context, key string, fn func() ([]byte, error)) flightResult {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = make(map[string]*call)
	}
	if c, ok := g.calls[key]; ok {
		c.waiters++
		g.mu.Unlock()
		select {
		case <-c.done:
			if c.err != nil {
				return flightResult{err: c.err, shared: true, retry: c.ctxDone && ctx.Err() == nil}
			}
			return flightResult{val: bytes.Clone(c.val), shared: true}
		case <-ctx.Done():
			return flightResult{err: ctx.Err(), shared: true}
		}
	}
	c := &call{done: make(chan struct{})}
	g.calls[key] = c
	g.mu.Unlock()

	finished := false
	defer func() {
		if !finished { // fn panicked: release the waiters, let the panic go on
			c.err = errLoadPanicked
			g.mu.Lock()
			delete(g.calls, key)
			g.mu.Unlock()
			close(c.done)
		}
	}()
	val, err := fn()
	finished = true
	c.val, c.err, c.ctxDone = val, err, ctx.Err() != nil
	g.mu.Lock()
	delete(g.calls, key) // no one joins from here on
	waiters := c.waiters
	g.mu.Unlock()
	close(c.done)
	if waiters > 0 && val != nil {
		val = bytes.Clone(val) // the waiters copy c.val; the caller may modify its own
	}
	return flightResult{val: val, err: err}
}
