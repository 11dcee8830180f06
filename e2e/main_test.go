package e2e

import (
	"flag"
	"os"
	"strconv"
	"testing"
)

// defaultParallel is how many tests of this package run at once when go
// test is not given -parallel. The tests mostly wait (for servers to
// start, failovers, timeouts, status updates), so more of them than
// cores overlap well; each has servers of its own on ports of its own.
// Tests that are CPU-bound or whose assertion depends on the engine
// answering in time (the SIGTERM contract, status updates within
// wal_sender_timeout) do not call t.Parallel: Go runs them first, one at a
// time, before the parallel ones.
const defaultParallel = 4

func TestMain(m *testing.M) {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given {
		if err := flag.Set("test.parallel", strconv.Itoa(defaultParallel)); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
