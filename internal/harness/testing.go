package harness

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startTimeout bounds PostgresT and RedisT; initdb plus start usually take
// a few seconds.
const startTimeout = 2 * time.Minute

// PostgresT starts a Postgres for a test and closes it in t.Cleanup. It
// fails the test (never skips it) when the server cannot start, e.g. with
// the install hint when the binaries are missing.
func PostgresT(t testing.TB, opts PostgresOptions) *Postgres {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	p, err := StartPostgres(ctx, opts)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("harness: %v", err)
		}
	})
	return p
}

// RedisT starts a Redis for a test and closes it in t.Cleanup. It fails
// the test (never skips it) when the server cannot start, e.g. with the
// install hint when redis-server is missing.
func RedisT(t testing.TB, opts RedisOptions) *Redis {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	r, err := StartRedis(ctx, opts)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("harness: %v", err)
		}
	})
	return r
}

// EnvMatrix names the PostgreSQL major versions the version matrix runs
// on, e.g. "14 15 16 17 18" (see MatrixVersions).
const EnvMatrix = "CDC_COMPAT_VERSIONS"

// MatrixVersions returns the major versions of CDC_COMPAT_VERSIONS (space
// or comma separated), nil when it is unset. A malformed value fails the
// test.
func MatrixVersions(t testing.TB) []int {
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
func RequireVersion(t testing.TB, major int) {
	t.Helper()
	if _, err := PostgresBinDir(major); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("harness: %v (CI=true: a version of the matrix must be installed)", err)
		}
		t.Skipf("harness: %v", err)
	}
}
