package writebehind_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/writebehind"
	"github.com/cdcinvalidate/cdcinvalidate/writebehind/internal/wbtest"
)

// testSchema and testMappings are shared with the helper binary.
var (
	testSchema   = wbtest.Schema
	testMappings = wbtest.Mappings()
)

// env is a PostgreSQL and a Redis of one test.
type env struct {
	t   *testing.T
	pg  *harness.Postgres
	rd  *harness.Redis
	rdb *redis.Client
	db  *pgxpool.Pool
}

type envOpts struct {
	redisArgs []string
	pg        harness.PostgresOptions
	noPG      bool // Redis only
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	e := &env{t: t}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.rd = harness.RedisT(t, harness.RedisOptions{Args: o.redisArgs}) }()
	if !o.noPG {
		e.pg = harness.PostgresT(t, o.pg)
	}
	wg.Wait()
	if e.rd == nil {
		t.FailNow()
	}
	e.rdb = redis.NewClient(&redis.Options{Addr: e.rd.Addr(), ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second})
	t.Cleanup(func() { _ = e.rdb.Close() })
	if o.noPG {
		return e
	}
	db, err := pgxpool.New(context.Background(), e.pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	e.db = db
	e.exec(testSchema)
	return e
}

// sub is e for subtest t: its failures end t, not the parent.
func (e *env) sub(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("exec %q: %v", sql, err)
	}
}

func (e *env) writer(opt writebehind.WriterOptions) *writebehind.Writer {
	e.t.Helper()
	w, err := writebehind.NewWriter(e.rdb, testMappings, opt)
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

// flusherRun is a flusher running in the test process.
type flusherRun struct {
	f      *writebehind.Flusher
	cancel context.CancelFunc
	done   chan error
}

func (e *env) startFlusher(opt writebehind.FlusherOptions) *flusherRun {
	e.t.Helper()
	if opt.DSN == "" {
		opt.DSN = e.pg.DSN("postgres")
	}
	if opt.Logger == nil {
		opt.Logger = zaptest.NewLogger(e.t, zaptest.Level(zap.WarnLevel))
	}
	if opt.RetryMax == 0 {
		opt.RetryMax = 500 * time.Millisecond
	}
	f, err := writebehind.NewFlusher(e.rdb, testMappings, opt)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &flusherRun{f: f, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- f.Run(ctx) }()
	e.t.Cleanup(func() { _ = r.stop(e.t) })
	return r
}

func (r *flusherRun) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(20 * time.Second):
		t.Error("flusher did not stop within 20s")
		return nil
	}
}

// waitDrained waits until the stream holds no unapplied entry: the group
// has no pending entry and nothing undelivered.
func (e *env) waitDrained(stream, group string, d time.Duration) {
	e.t.Helper()
	harness.WaitFor(e.t, d, "stream "+stream+" to be applied", func() bool {
		n, err := e.undrained(stream, group)
		return err == nil && n == 0
	})
}

func (e *env) undrained(stream, group string) (int64, error) {
	ctx := context.Background()
	groups, err := e.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return -1, err
	}
	for _, g := range groups {
		if g.Name == group {
			if g.Lag < 0 {
				return -1, errors.New("lag unknown")
			}
			return g.Pending + g.Lag, nil
		}
	}
	return -1, fmt.Errorf("no group %s", group)
}

// dbInt reads one integer (NULL as 0).
func (e *env) dbInt(sql string, args ...any) int64 {
	e.t.Helper()
	var n *int64
	if err := e.db.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	if n == nil {
		return 0
	}
	return *n
}
