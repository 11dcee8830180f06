package harness

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// pollMax is the longest pause between two polls.
const pollMax = 20 * time.Millisecond

// ErrPollTimeout is wrapped by Poll's error when within passed.
var ErrPollTimeout = errors.New("timed out")

// Poll calls cond until it returns true or an error, ctx ends or within
// passes, pausing 1 ms after the first call and up to 20 ms later on. It
// returns nil once cond held, cond's error, ctx's error, or an error
// wrapping ErrPollTimeout.
func Poll(ctx context.Context, within time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(within)
	pause := time.Millisecond
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %s", ErrPollTimeout, within)
		}
		timer := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
		pause = min(2*pause, pollMax)
	}
}
