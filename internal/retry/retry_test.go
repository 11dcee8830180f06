package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoffCappedWithJitter(t *testing.T) {
	t.Parallel()
	b := Backoff{Min: 100 * time.Millisecond, Max: 800 * time.Millisecond}
	for i, step := range []time.Duration{100, 200, 400, 800, 800, 800} {
		step *= time.Millisecond
		d := b.Next()
		if d < step/2 || d > step {
			t.Errorf("wait %d = %s, want within [%s, %s]", i, d, step/2, step)
		}
	}
	b.Reset()
	if d := b.Next(); d > 100*time.Millisecond {
		t.Errorf("after Reset the wait is %s, want at most Min", d)
	}
}

var errDown = errors.New("connection refused")

func TestDo(t *testing.T) {
	t.Parallel()
	permanent := errors.New("NOPERM")
	classify := func(err error) error {
		if errors.Is(err, permanent) {
			return &PermanentError{err}
		}
		return nil
	}
	for _, tc := range []struct {
		name         string
		errs         []error // what the attempts return, then nil
		escalate     time.Duration
		wantAttempts int
		wantErr      error
		wantEscalate int
	}{
		{"success at once", nil, 0, 1, nil, 0},
		{"transient then success", []error{errDown, errDown}, 0, 3, nil, 0},
		{"permanent by classifier", []error{errDown, permanent}, 0, 2, permanent, 0},
		{"already permanent", []error{Permanent(errDown)}, 0, 1, errDown, 0},
		{"escalated once", []error{errDown, errDown, errDown, errDown}, time.Nanosecond, 5, nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			i, escalations, failures := 0, 0, 0
			p := Policy{Min: time.Microsecond, Max: time.Millisecond, Classify: classify, EscalateAfter: tc.escalate,
				OnFailure: func(f Failure) {
					failures++
					if f.Escalate {
						escalations++
					}
					if f.Attempt != failures {
						t.Errorf("failure %d reports attempt %d", failures, f.Attempt)
					}
				}}
			n, err := p.Do(context.Background(), func() error {
				if i < len(tc.errs) {
					i++
					return tc.errs[i-1]
				}
				return nil
			})
			if n != tc.wantAttempts {
				t.Errorf("attempts = %d, want %d", n, tc.wantAttempts)
			}
			if !errors.Is(err, tc.wantErr) || (tc.wantErr != nil && !IsPermanent(err)) {
				t.Errorf("err = %v, want permanent %v", err, tc.wantErr)
			}
			if escalations != tc.wantEscalate {
				t.Errorf("escalations = %d, want %d", escalations, tc.wantEscalate)
			}
		})
	}
}

func TestDoStopsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	p := Policy{Min: time.Hour, Max: time.Hour, OnFailure: func(Failure) { cancel() }}
	_, err := p.Do(ctx, func() error { return errDown })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
