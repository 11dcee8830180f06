package harness

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TB is what the helpers for tests use of a test: *testing.T, *testing.B
// and testing.TB have it. The package does not import testing, so the
// demo and the bench (in the shipped binary) do not link it.
type TB interface {
	Helper()
	Cleanup(func())
	Failed() bool
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

// startTimeout bounds PostgresT and RedisT; initdb plus start usually take
// a few seconds.
const startTimeout = 2 * time.Minute

// PostgresT starts a Postgres for a test and closes it in t.Cleanup. It
// fails the test (never skips it) when the server cannot start, e.g. with
// the install hint when the binaries are missing.
func PostgresT(t TB, opts PostgresOptions) *Postgres {
	t.Helper()
	return startT(t, func(ctx context.Context) (*Postgres, error) { return StartPostgres(ctx, opts) })
}

// RedisT starts a Redis for a test and closes it in t.Cleanup. It fails
// the test (never skips it) when the server cannot start, e.g. with the
// install hint when redis-server is missing.
func RedisT(t TB, opts RedisOptions) *Redis {
	t.Helper()
	return startT(t, func(ctx context.Context) (*Redis, error) { return StartRedis(ctx, opts) })
}

// startT starts a server within startTimeout and closes it in t.Cleanup.
func startT[S interface{ Close() error }](t TB, start func(context.Context) (S, error)) S {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := start(ctx)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("harness: %v", err)
		}
	})
	return s
}

// WaitFor polls cond until it holds; after d it fails the test, naming
// what it waited for.
func WaitFor(t TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	err := Poll(context.Background(), d, func() (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("timed out after %s waiting for %s", d, what)
	}
}

// failureLogLines is how many lines of a process's output StartProcessT
// logs when the test failed.
const failureLogLines = 200

// StartProcessT starts c for a test and fails the test if it cannot
// start. When the test ends, a process still running is killed with
// SIGKILL (cleanups registered later run first: to stop it gently, stop
// it there), and if the test failed, the end of its output is logged.
func StartProcessT(t TB, c Command) *Process {
	t.Helper()
	p, err := StartProcess(c)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Kill(); err != nil {
			t.Errorf("harness: %v", err)
		}
		if t.Failed() {
			t.Logf("%s (%s) output, last %d lines:\n%s", p.Name(), p.State(), failureLogLines, p.Tail(failureLogLines))
		}
	})
	return p
}

// ExitT waits until p exits by itself, at most within, and returns its
// exit code; it fails the test with the end of p's output otherwise.
func (p *Process) ExitT(t TB, within time.Duration) int {
	t.Helper()
	if err := p.WaitExit(within); err != nil {
		t.Fatal(err)
	}
	return p.ExitCode()
}

// TermT sends SIGTERM and waits for the exit, at most within; it returns
// the exit code and how long the exit took, and fails the test if p still
// runs then.
func (p *Process) TermT(t TB, within time.Duration) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil && p.Running() {
		t.Fatal(err)
	}
	if err := p.WaitExit(within); err != nil {
		t.Fatalf("after SIGTERM: %v", err)
	}
	return p.ExitCode(), time.Since(start)
}

// KillT kills p with SIGKILL and waits until it is reaped.
func (p *Process) KillT(t TB) {
	t.Helper()
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
}

// SignalT sends sig to p (SIGHUP, SIGSTOP, SIGCONT...) and fails the test
// if it cannot.
func (p *Process) SignalT(t TB, sig os.Signal) {
	t.Helper()
	if err := p.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// PauseT pauses r (SIGSTOP) for a test and returns the function that
// resumes it; that function fails the test if it cannot, and does nothing
// the second time. A server still paused when the test ends is resumed
// then (before the cleanups registered earlier, such as stopping engines).
func (r *Redis) PauseT(t TB) (resume func()) {
	t.Helper()
	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { _ = r.Resume() }) })
	return func() {
		t.Helper()
		once.Do(func() {
			if err := r.Resume(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// ClusterT starts a Redis Cluster for a test and closes it in t.Cleanup.
func ClusterT(t TB, opts ClusterOptions) *Cluster {
	t.Helper()
	return startT(t, func(ctx context.Context) (*Cluster, error) { return StartCluster(ctx, opts) })
}

// SentinelT starts a Sentinel deployment for a test and closes it in
// t.Cleanup.
func SentinelT(t TB, opts SentinelOptions) *Sentinel {
	t.Helper()
	return startT(t, func(ctx context.Context) (*Sentinel, error) { return StartSentinel(ctx, opts) })
}

// SkipTB is a TB that can skip the test (any *testing.T).
type SkipTB interface {
	TB
	Skipf(format string, args ...any)
}

// EnvMatrix names the PostgreSQL major versions the version matrix runs
// on, e.g. "14 15 16 17 18" (see MatrixVersions).
const EnvMatrix = "CDC_COMPAT_VERSIONS"

// MatrixVersions returns the major versions of CDC_COMPAT_VERSIONS (space
// or comma separated), nil when it is unset. A malformed value fails the
// test.
func MatrixVersions(t TB) []int {
	t.Helper()
	var out []int
	for _, f := range strings.FieldsFunc(os.Getenv(EnvMatrix), func(r rune) bool { return r == ' ' || r == ',' }) {
		v, err := strconv.Atoi(f)
		if err != nil || v < 10 {
			t.Fatalf("harness: %s=%q: %q is not a major version such as 17", EnvMatrix, os.Getenv(EnvMatrix), f)
		}
		out = append(out, v)
	}
	return out
}

// RequireVersion makes sure the server binaries of a major version are
// installed: when they are not, it skips the test, except in CI (CI=true),
// where a missing version fails it, so that the matrix cannot pass by
// skipping.
func RequireVersion(t SkipTB, major int) {
	t.Helper()
	if _, err := PostgresBinDir(major); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("harness: %v (CI=true: a version of the matrix must be installed)", err)
		}
		t.Skipf("harness: %v", err)
	}
}
