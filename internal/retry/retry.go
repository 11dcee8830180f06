// Package retry is the one retry loop of the engine: capped exponential
// backoff with jitter, stopped by the context or by an error that a
// classifier calls permanent, and escalated (reported once, loudly) when
// failures go on longer than a bound. The sink (Redis), the replication
// stream and the start-up connections use it, each with its backend's
// classifier (sink.Classify, replication.Classify).
package retry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// PermanentError is an error that retrying cannot fix: the engine stops and
// its text says what to do. Both backends' classifiers return it.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err as a PermanentError (nil stays nil; an error that
// already is one is returned as it is).
func Permanent(err error) error {
	if err == nil || IsPermanent(err) {
		return err
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err is or wraps a PermanentError.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// Backoff is capped exponential backoff with jitter. The zero value is not
// usable: set Min and Max.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the wait before the next attempt: the current step, less a
// random part of up to half of it (so engines that failed together do not
// retry together), then doubles the step up to Max.
func (b *Backoff) Next() time.Duration {
	if b.cur < b.Min {
		b.cur = b.Min
	}
	d := b.cur
	b.cur = min(b.cur*2, max(b.Max, b.Min))
	if half := int64(d / 2); half > 0 {
		d -= time.Duration(rand.Int64N(half + 1))
	}
	return d
}

// Reset starts the next wait from Min again.
func (b *Backoff) Reset() { b.cur = 0 }

// Sleep waits d or until ctx ends (then it returns ctx's error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Failure describes one failed attempt that will be retried.
type Failure struct {
	Attempt int           // 1 for the first attempt
	Err     error         // what the attempt returned
	Wait    time.Duration // until the next attempt
	Failing time.Duration // since the first failure of this run of failures
	// Escalate is true once, for the first failure after Policy.EscalateAfter:
	// the caller reports it loudly (error log, metrics, readiness).
	Escalate bool
}

// Policy says how to retry.
type Policy struct {
	Min, Max time.Duration
	// Classify returns a PermanentError for errors that retrying cannot
	// fix (returned at once), nil for the others. nil: only errors that
	// already are PermanentErrors stop.
	Classify func(error) error
	// EscalateAfter is how long failures may go on before one Failure has
	// Escalate set; 0: never.
	EscalateAfter time.Duration
	// OnFailure is called for every failed attempt that will be retried;
	// nil: none.
	OnFailure func(Failure)
}

// Do runs op until it returns nil, ctx ends (ctx's error), or op's error
// is permanent (that error, from Classify when it said so). It returns how
// many attempts were made.
func (p Policy) Do(ctx context.Context, op func() error) (int, error) {
	b := Backoff{Min: p.Min, Max: p.Max}
	var first time.Time
	escalated := false
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil {
			return attempt, nil
		}
		if ctx.Err() != nil {
			return attempt, ctx.Err()
		}
		if IsPermanent(err) {
			return attempt, err
		}
		if p.Classify != nil {
			if perm := p.Classify(err); perm != nil {
				return attempt, perm
			}
		}
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		f := Failure{Attempt: attempt, Err: err, Wait: b.Next(), Failing: now.Sub(first)}
		if p.EscalateAfter > 0 && !escalated && f.Failing >= p.EscalateAfter {
			escalated, f.Escalate = true, true
		}
		if p.OnFailure != nil {
			p.OnFailure(f)
		}
		if err := Sleep(ctx, f.Wait); err != nil {
			return attempt, err
		}
	}
}
