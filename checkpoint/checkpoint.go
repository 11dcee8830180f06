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
	// pending holds the transactions handed to the sink and not yet
	// applied, oldest first (bounded by the sink's queue), for the lag.
	pending     []handed
	appliedTime time.Time // commit time of the last applied transaction
}

type handed struct {
	end        LSN
	commitTime time.Time
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
	i := 0
	for ; i < len(t.pending) && t.pending[i].end <= lsn; i++ {
		if !t.pending[i].commitTime.IsZero() {
			t.appliedTime = t.pending[i].commitTime
		}
	}
	t.pending = t.pending[i:]
	if len(t.pending) == 0 {
		t.pending = nil // let the backing array go
	}
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
}

// Handed records that the transaction ending at end, committed at
// commitTime, was handed to the sink. It feeds Lag.
func (t *Tracker) Handed(end LSN, commitTime time.Time) {
	if LSN(t.applied.Load()) >= end {
		return
	}
	t.mu.Lock()
	t.pending = append(t.pending, handed{end: end, commitTime: commitTime})
	t.mu.Unlock()
}

// Lag returns how long ago the oldest transaction that was handed over
// but not yet applied committed (0 when everything handed over is applied),
// and how many transactions are waiting.
func (t *Tracker) Lag(now time.Time) (time.Duration, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, h := range t.pending {
		if !h.commitTime.IsZero() {
			return max(now.Sub(h.commitTime), 0), len(t.pending)
		}
	}
	return 0, len(t.pending)
}

// AppliedCommitTime returns the commit time of the last applied transaction.
func (t *Tracker) AppliedCommitTime() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.appliedTime
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
