// Package checkpoint keeps the WAL positions that cdcinvalidate confirms to
// PostgreSQL.
//
// The sink reports a position with Ack only after Redis acknowledged every
// action up to it; the replication stream reads Applied and sends it as the
// flush position of its standby status updates. So confirmed_flush_lsn never
// passes a transaction whose invalidations Redis has not acknowledged.
//
// Guarantees: Applied never moves backwards; Status reports write >= flush =
// apply, all non-zero once a start position is known; Due schedules updates
// at least every Interval, and soon after Applied moved.
package checkpoint

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a WAL position.
type LSN = pglogrepl.LSN

// Tracker holds the applied position. Ack and Applied are safe for
// concurrent use; WaitApplied lets the stream wait for the sink at shutdown.
type Tracker struct {
	applied atomic.Uint64
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every advance
}

// NewTracker returns a tracker whose applied position starts at start (the
// slot's confirmed position).
func NewTracker(start LSN) *Tracker {
	t := &Tracker{changed: make(chan struct{})}
	t.applied.Store(uint64(start))
	return t
}

// Ack records that everything up to lsn was applied. Older positions are ignored.
func (t *Tracker) Ack(lsn LSN) {
	for {
		cur := t.applied.Load()
		if uint64(lsn) <= cur {
			return
		}
		if t.applied.CompareAndSwap(cur, uint64(lsn)) {
			break
		}
	}
	t.mu.Lock()
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
}

// Applied returns the highest position acknowledged so far.
func (t *Tracker) Applied() LSN { return LSN(t.applied.Load()) }

// WaitApplied waits until Applied reaches lsn or the deadline passes, and
// returns whether it did.
func (t *Tracker) WaitApplied(lsn LSN, deadline time.Time) bool {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		t.mu.Lock()
		ch := t.changed
		t.mu.Unlock()
		if t.Applied() >= lsn {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			return t.Applied() >= lsn
		}
	}
}

// Reporter decides when the replication stream sends a standby status
// update and what it says. It is used by the stream's goroutine only.
type Reporter struct {
	// Interval is the longest time between two updates (wal_sender_timeout
	// must be larger; PostgreSQL's default is 60 s).
	Interval time.Duration
	// Prompt is how soon after Applied moved an update is sent.
	Prompt time.Duration

	received  LSN
	sentFlush LSN
	sentAt    time.Time
}

// Received records a position the server sent (the write position).
func (r *Reporter) Received(lsn LSN) {
	if lsn > r.received {
		r.received = lsn
	}
}

// Due reports whether an update should be sent now, given the applied position.
func (r *Reporter) Due(now time.Time, applied LSN) bool {
	since := now.Sub(r.sentAt)
	return since >= r.Interval || (applied > r.sentFlush && since >= r.Prompt)
}

// Next returns when an update will next be due if nothing else happens.
func (r *Reporter) Next(applied LSN) time.Time {
	if applied > r.sentFlush {
		return r.sentAt.Add(r.Prompt)
	}
	return r.sentAt.Add(r.Interval)
}

// Status returns the positions to send: write is the highest received
// position (never below flush), flush and apply are the applied position.
func (r *Reporter) Status(applied LSN) (write, flush, apply LSN) {
	write = r.received
	if write < applied {
		write = applied
	}
	return write, applied, applied
}

// Sent records that an update with this flush position went out.
func (r *Reporter) Sent(now time.Time, flush LSN) {
	r.sentAt = now
	if flush > r.sentFlush {
		r.sentFlush = flush
	}
}

// SentFlush returns the highest flush position sent so far.
func (r *Reporter) SentFlush() LSN { return r.sentFlush }
