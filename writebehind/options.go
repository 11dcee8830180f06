package writebehind

import (
	"errors"
	"fmt"
	"time"
)

// optChecker gathers the problems of an options struct while defaults are
// filled in, so that one error lists them all.
type optChecker struct{ errs []error }

func (c *optChecker) bad(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

// duration refuses a negative *d and fills def into a zero one.
func (c *optChecker) duration(name string, d *time.Duration, def time.Duration) {
	switch {
	case *d < 0:
		c.bad("%s must not be negative (got %s)", name, *d)
	case *d == 0:
		*d = def
	}
}

// count refuses a negative *n and fills def into a zero one.
func count[T int | int64](c *optChecker, name string, n *T, def T) {
	switch {
	case *n < 0:
		c.bad("%s must not be negative (got %d)", name, *n)
	case *n == 0:
		*n = def
	}
}

// err is the gathered problems of the options of what, or nil.
func (c *optChecker) err(what string) error {
	if err := errors.Join(c.errs...); err != nil {
		return fmt.Errorf("writebehind: invalid %s options: %w", what, err)
	}
	return nil
}
