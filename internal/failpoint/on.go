//go:build failpoints

package failpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

var (
	name  string
	after int64
	hits  atomic.Int64
	sig   = syscall.SIGKILL
)

func init() {
	if os.Getenv("CDC_FAILPOINT_ACTION") == "stop" {
		sig = syscall.SIGSTOP
	}
	v := os.Getenv("CDC_FAILPOINT")
	if v == "" {
		return
	}
	name, after = v, 1
	if n, c, ok := strings.Cut(v, ":"); ok {
		name = n
		if k, err := strconv.ParseInt(c, 10, 64); err == nil && k > 0 {
			after = k
		}
	}
}

// Hit kills the process with SIGKILL (or freezes it with SIGSTOP, with
// CDC_FAILPOINT_ACTION=stop) when point is the selected failpoint and this
// is its chosen hit. A frozen process goes on from here after SIGCONT.
func Hit(point string) {
	if point != name {
		return
	}
	if hits.Add(1) == after {
		fmt.Fprintf(os.Stderr, "failpoint %s: %s\n", point, sigName())
		_ = syscall.Kill(os.Getpid(), sig)
		if sig == syscall.SIGKILL {
			select {} // never returns
		}
	}
}

func sigName() string {
	if sig == syscall.SIGSTOP {
		return "SIGSTOP"
	}
	return "SIGKILL"
}

// Unsafe reports whether the deliberately broken behaviour is selected.
func Unsafe(behaviour string) bool {
	return os.Getenv("CDC_UNSAFE") == behaviour
}
