package bench

import (
	"runtime"
	"syscall"
	"time"
)

// preciseSleep sleeps for d. The Go runtime's timers wake up to about a
// millisecond late on Linux, which would double a 1 ms --redis-rtt; the
// last part of the wait (or all of a short one) is a nanosleep(2), which
// blocks only this goroutine's thread and is accurate to tens of
// microseconds.
func preciseSleep(d time.Duration) {
	if d <= 0 {
		return
	}
	const coarse = 2 * time.Millisecond
	if d > coarse {
		deadline := time.Now().Add(d)
		time.Sleep(d - coarse)
		if d = time.Until(deadline); d <= 0 {
			return
		}
	}
	ts := syscall.NsecToTimespec(int64(d))
	for {
		var left syscall.Timespec
		err := syscall.Nanosleep(&ts, &left)
		if err != syscall.EINTR {
			return
		}
		ts = left
	}
}

// preciseThread binds the calling goroutine to its thread and sets that
// thread's timer slack to 1 ns (PR_SET_TIMERSLACK; the default is 50 µs,
// by which every nanosleep may overshoot), so that the proxy's delays are
// what was asked. It returns the function that undoes both.
func preciseThread() (undo func()) {
	runtime.LockOSThread()
	const prSetTimerSlack, prGetTimerSlack = 29, 30
	old, _, _ := syscall.RawSyscall(syscall.SYS_PRCTL, prGetTimerSlack, 0, 0)
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, 1, 0)
	return func() {
		_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, old, 0)
		runtime.UnlockOSThread()
	}
}
