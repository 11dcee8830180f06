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
)

func init() {
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

// Hit kills the process with SIGKILL when point is the selected failpoint
// and this is its chosen hit.
func Hit(point string) {
	if point != name {
		return
	}
	if hits.Add(1) == after {
		fmt.Fprintf(os.Stderr, "failpoint %s: SIGKILL\n", point)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // never returns
	}
}

// Unsafe reports whether the deliberately broken behaviour is selected.
func Unsafe(behaviour string) bool {
	return os.Getenv("CDC_UNSAFE") == behaviour
}
