package harness

import (
	"context"
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

// ClusterT starts a Redis Cluster for a test and closes it in t.Cleanup.
func ClusterT(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	c, err := StartCluster(ctx, opts)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("harness: %v", err)
		}
	})
	return c
}

// SentinelT starts a Sentinel deployment for a test and closes it in
// t.Cleanup.
func SentinelT(t testing.TB, opts SentinelOptions) *Sentinel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := StartSentinel(ctx, opts)
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
