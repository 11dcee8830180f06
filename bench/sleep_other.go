//go:build !linux

package bench

import "time"

// preciseSleep sleeps for d (with the runtime's timer granularity).
func preciseSleep(d time.Duration) {
	if d > 0 {
		time.Sleep(d)
	}
}

// preciseThread does nothing here (see the Linux version).
func preciseThread() (undo func()) { return func() {} }
