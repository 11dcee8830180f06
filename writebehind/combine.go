package writebehind

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// unsafeNoToken makes new Writers send no token (set by tests only: the
// negative control of the retry test, where a retried call applies twice).
var unsafeNoToken atomic.Bool

// The combiner batches concurrent Incr and Set calls without a goroutine
// of its own: a call queues its operation; if fewer than MaxInFlight
// callers are sending, it becomes a sender ("leader") and sends what is
// queued, up to MaxBatch operations per script call, until its own
// operation is done. Then it hands its place to the oldest queued call
// that is not a leader yet, or gives it up when the queue is empty. Every
// decision is taken under mu, so a queued call always has a leader.
type combiner struct {
	w       *Writer
	mu      sync.Mutex
	queue   []*call
	leaders int
}

// call is one combined operation and its result. Fields after the first
// block are guarded by combiner.mu.
type call struct {
	key, value string
	letter     byte
	res        int64
	err        error
	// ready gets one token when the call is done and its owner is not
	// leading, or when it is made a leader; its owner always takes it.
	ready chan struct{}

	taken   bool // in a batch being sent
	done    bool // res and err are final
	leading bool // its owner sends batches
}

var callPool = sync.Pool{New: func() any { return &call{ready: make(chan struct{}, 1)} }}

func (w *Writer) combined(ctx context.Context, op Op) (int64, error) {
	letter, err := w.check(op)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c := &w.comb
	p := callPool.Get().(*call)
	*p = call{key: op.key, value: op.value, letter: letter, ready: p.ready}

	c.mu.Lock()
	c.queue = append(c.queue, p)
	if c.leaders < w.opt.MaxInFlight {
		c.leaders++
		p.leading = true
	}
	leading := p.leading
	c.mu.Unlock()

	if !leading {
		select {
		case <-p.ready:
		case <-ctx.Done():
			c.mu.Lock()
			switch {
			case p.done || p.leading:
				c.mu.Unlock()
				<-p.ready // the result, or made a leader: it must lead
			case !p.taken: // still queued: withdraw, nothing was sent
				c.remove(p)
				c.mu.Unlock()
				callPool.Put(p)
				return 0, ctx.Err()
			default: // in flight: its sender owns p now (not pooled again)
				c.mu.Unlock()
				return 0, fmt.Errorf("writebehind: %w while the write was in flight: it may or may not have happened", ctx.Err())
			}
		}
	}
	c.lead(ctx, p)
	res, err := p.res, p.err
	*p = call{ready: p.ready}
	callPool.Put(p)
	return res, err
}

// lead sends batches while p leads and is not done; it returns when p is
// done. A p that does not lead (it was woken with its result) returns at
// once.
func (c *combiner) lead(ctx context.Context, p *call) {
	sendCtx := context.WithoutCancel(ctx) // the batch carries other callers' writes
	var batch []*call
	for {
		c.mu.Lock()
		if !p.leading {
			c.mu.Unlock()
			return
		}
		if p.done || len(c.queue) == 0 {
			// Done, or p is in another leader's batch: give the place up.
			p.leading = false
			handed := false
			for _, q := range c.queue {
				if !q.leading {
					q.leading = true
					q.ready <- struct{}{}
					handed = true
					break
				}
			}
			if !handed {
				c.leaders--
			}
			done := p.done
			c.mu.Unlock()
			if !done {
				<-p.ready
			}
			return
		}
		n := min(len(c.queue), c.w.opt.MaxBatch)
		batch = append(batch[:0], c.queue[:n]...)
		rest := copy(c.queue, c.queue[n:])
		clear(c.queue[rest:])
		c.queue = c.queue[:rest]
		for _, q := range batch {
			q.taken = true
		}
		c.mu.Unlock()

		c.send(sendCtx, batch)

		c.mu.Lock()
		for _, q := range batch {
			q.done = true
			if !q.leading {
				q.ready <- struct{}{}
			}
		}
		c.mu.Unlock()
		clear(batch)
	}
}

// send runs batch as one script call and sets each call's result. If Redis
// refuses the batch (one operation's key holds a value of another kind),
// nothing of it was written; each operation is then sent on its own, so
// that only the faulty calls fail.
func (c *combiner) send(ctx context.Context, batch []*call) {
	w := c.w
	b := w.newBatch(w.nextToken(), len(batch))
	for _, q := range batch {
		b.add(q.key, q.value, q.letter)
	}
	out := make([]int64, len(batch))
	err := w.exec(ctx, b, out)
	if err != nil && len(batch) > 1 && errors.Is(err, ErrRefused) {
		for _, q := range batch {
			c.send(ctx, []*call{q})
		}
		return
	}
	for i, q := range batch {
		q.res, q.err = out[i], err
		if err != nil && !errors.Is(err, ErrNotReplicated) {
			q.res = 0
		}
	}
}

func (c *combiner) remove(p *call) {
	for i, q := range c.queue {
		if q == p {
			c.queue = slices.Delete(c.queue, i, i+1)
			return
		}
	}
}
