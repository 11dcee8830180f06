package replication

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// A rules reload hands a new Mapper to the stream (SetMapper). The session
// goroutine, which owns the mapper and the replication connection, takes it
// at a transaction boundary, so every transaction is mapped by one rule
// set: never inside Begin..Commit, never inside a Stream Start..Stop block.

// swapper is the hand-over point between SetMapper and the session.
type swapper struct {
	calls sync.Mutex // one SetMapper at a time

	mu      sync.Mutex
	live    net.Conn     // the running session's connection; nil between sessions
	req     *swapRequest // waiting for the session to take it
	pending []string     // patterns to flush when the next session starts
	// pendingGens are generation keys to increment when the next session
	// starts (after pending).
	pendingGens []string
	// waiting is set while req or pending is set: the session's loop reads
	// it once per message instead of taking the lock.
	waiting atomic.Bool
}

type swapRequest struct {
	m        Mapper
	newGlobs []string
	newGens  []string
	flush    bool
	reply    chan error
}

// SetMapper replaces the stream's mapper with m (a rules reload) and waits
// until the session goroutine has done so at a transaction boundary: m
// first binds every relation the session has seen, and if any Bind fails
// the old mapper stays and the error is returned.
//
// newGlobs are the SCAN patterns of keys m manages and the old mapper did
// not keep invalidated, newGens the generation keys likewise. With flush
// the patterns are deleted and the generation keys incremented at the
// boundary, as events in order with the stream (so a Redis error there is
// the sink's, which retries or stops the engine), before any change m
// maps. Either way a streamed transaction still open at the boundary,
// whose earlier chunks the old mapper mapped, gets them again at its
// commit.
//
// Between sessions (connecting, backing off, standby) m is used by the next
// session, which first flushes newGlobs and increments newGens.
func (s *Stream) SetMapper(ctx context.Context, m Mapper, newGlobs, newGens []string, flush bool) error {
	sw := &s.swap
	sw.calls.Lock()
	defer sw.calls.Unlock()
	req := &swapRequest{m: m, newGlobs: newGlobs, newGens: newGens, flush: flush, reply: make(chan error, 1)}
	sw.mu.Lock()
	if sw.live == nil {
		sw.adopt(s, req)
		sw.mu.Unlock()
		return nil
	}
	sw.req = req
	sw.waiting.Store(true)
	conn := sw.live
	sw.mu.Unlock()
	// Wake a receive that is waiting for the server. The loop sets its read
	// deadline before it looks for a request, so either it sees req or this
	// deadline ends its next receive at once.
	_ = conn.SetReadDeadline(time.Now())
	select {
	case err := <-req.reply:
		return err
	case <-ctx.Done():
		sw.mu.Lock()
		if sw.req == req {
			sw.req = nil
			sw.waiting.Store(len(sw.pending)+len(sw.pendingGens) > 0)
			sw.mu.Unlock()
			return ctx.Err()
		}
		sw.mu.Unlock()
		return <-req.reply // taken: the session answers
	}
}

// adopt makes req's mapper the one the next session starts with. No
// session runs, so no relation is bound yet. Called with mu held.
func (sw *swapper) adopt(s *Stream, req *swapRequest) {
	s.mapper = req.m
	if req.flush {
		sw.pending = append(sw.pending, req.newGlobs...)
		sw.pendingGens = append(sw.pendingGens, req.newGens...)
	}
	sw.waiting.Store(sw.req != nil || len(sw.pending)+len(sw.pendingGens) > 0)
}

// attach registers the session's connection for wake-ups; from now on the
// session goroutine alone changes the mapper.
func (ss *session) attachSwaps(conn net.Conn) {
	sw := &ss.s.swap
	sw.mu.Lock()
	sw.live = conn
	sw.mu.Unlock()
}

// detachSwaps ends the session's part: a request it did not take is used
// by the next session.
func (ss *session) detachSwaps() {
	sw := &ss.s.swap
	sw.mu.Lock()
	defer sw.mu.Unlock()
	sw.live = nil
	if req := sw.req; req != nil {
		sw.req = nil
		sw.adopt(ss.s, req)
		req.reply <- nil
	}
}

// takeSwap is called by the loop between messages. At a transaction
// boundary it flushes patterns left from a swap between sessions and
// applies a waiting SetMapper request.
func (ss *session) takeSwap() error {
	sw := &ss.s.swap
	if !sw.waiting.Load() || ss.inTxn || ss.inStream {
		return nil
	}
	sw.mu.Lock()
	req, pending, pendingGens := sw.req, sw.pending, sw.pendingGens
	sw.req, sw.pending, sw.pendingGens = nil, nil, nil
	sw.waiting.Store(false)
	sw.mu.Unlock()
	if len(pending)+len(pendingGens) > 0 {
		if err := ss.flushNew(pending, pendingGens); err != nil {
			if req != nil {
				// Not taken after all: put it back, so that detachSwaps
				// hands it to the next session and answers it. SetMapper
				// calls are serialised, so no other request is waiting.
				sw.mu.Lock()
				sw.req = req
				sw.waiting.Store(true)
				sw.mu.Unlock()
			}
			return err
		}
	}
	if req == nil {
		return nil
	}
	if err := ss.bindAll(req.m); err != nil {
		req.reply <- err // the old mapper stays
		return nil
	}
	// Streamed transactions still open were partly mapped by the old rules:
	// their commit deletes the new patterns again, after the transaction is
	// visible, so a key cached from its rows in between does not stay.
	for _, xid := range slices.Sorted(maps.Keys(ss.streams)) {
		t := ss.streams[xid]
		err := t.addGlobs(xid, req.newGlobs)
		if err == nil && len(req.newGens) > 0 {
			err = addActions(t, xid, incrActions(req.newGens))
		}
		if err != nil {
			req.reply <- fmt.Errorf("rules not switched: %w", err)
			return err
		}
	}
	ss.s.mapper = req.m
	req.reply <- nil
	if req.flush && len(req.newGlobs)+len(req.newGens) > 0 {
		return ss.flushNew(req.newGlobs, req.newGens)
	}
	return nil
}

func incrActions(keys []string) []Action {
	acts := make([]Action, len(keys))
	for i, k := range keys {
		acts[i] = Action{Kind: ActIncr, Key: k}
	}
	return acts
}

// flushNew hands the sink the patterns of newly managed keys, then the
// increments of newly managed generation keys. If the session ends before
// the sink has them, the next session flushes them.
func (ss *session) flushNew(globs, gens []string) error {
	ss.s.log.Info("deleting the keys of new rules and incrementing their generation keys, in order with the stream",
		zap.Strings("patterns", globs), zap.Strings("generation_keys", gens))
	err := func() error {
		if len(globs) > 0 {
			if err := ss.emit(Event{Globs: globs}); err != nil {
				return err
			}
			globs = nil
		}
		if len(gens) > 0 {
			return ss.emit(Event{Actions: incrActions(gens)})
		}
		return nil
	}()
	if err != nil {
		sw := &ss.s.swap
		sw.mu.Lock()
		sw.pending = append(globs, sw.pending...)
		sw.pendingGens = append(gens, sw.pendingGens...)
		sw.waiting.Store(true)
		sw.mu.Unlock()
	}
	return err
}

// bindAll binds m to every relation this session has seen, in ID order.
func (ss *session) bindAll(m Mapper) error {
	for _, id := range slices.Sorted(maps.Keys(ss.rels)) {
		if err := m.Bind(ss.rels[id]); err != nil {
			return fmt.Errorf("the new rules do not fit table %s as the stream last described it: %w", ss.rels[id].QualifiedName(), err)
		}
	}
	return nil
}
