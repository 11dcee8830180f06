package cacheaside_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/engine"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// The end-to-end tests of the library share one environment, started on
// first use: a real PostgreSQL and Redis (internal/harness) and the engine
// running in this process with client.leases on and a publish channel, as
// in e2e/fixture_test.go. Each test uses its own rows (ids) of the items
// table. One UPDATE of items invalidates two keys, so that a plain
// cache-aside reader and the library can run side by side on one workload.

const (
	testChannel = "cdc-test-invalidations"
	testSchema  = `
CREATE TABLE items (id bigint PRIMARY KEY, v bigint NOT NULL);
CREATE TABLE barrier (id bigint PRIMARY KEY);
`
	// The consistency verifier checks every invalidated key 300ms after
	// it was applied; rules[0] and rules[1] tell the two ways apart.
	testRules = `
rules:
  - table: items
    keys: ["naive:item:{id}"]
  - table: items
    keys: ["lib:item:{id}"]
  - table: barrier
    keys: ["barrier:{id}"]
client:
  leases: true
  publish_channel: ` + testChannel + `
verify:
  enabled: true
  sample_rate: 1
  windows: [300ms]
`
	// testWatermark is the engine's applied watermark, which stamped fills carry.
	testWatermark = "cdcinvalidate:cdcinvalidate:lsn"
)

type env struct {
	pg       *harness.Postgres
	rd       *harness.Redis
	rdb      *redis.Client
	db       *pgxpool.Pool
	logs     *syncBuffer
	eng      *engine.Engine
	stop     context.CancelFunc
	done     chan error
	barrierN atomic.Int64
}

var (
	sharedOnce sync.Once
	shared     *env
	sharedErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		if code != 0 {
			fmt.Fprintf(os.Stderr, "engine log:\n%s", shared.logs.String())
		}
		if err := shared.close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// sharedEnv returns the environment, starting it on first use.
func sharedEnv(t *testing.T) *env {
	t.Helper()
	sharedOnce.Do(func() { shared, sharedErr = startEnv() })
	if sharedErr != nil {
		t.Fatalf("test environment: %v", sharedErr)
	}
	return shared
}

func startEnv() (_ *env, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := &env{logs: &syncBuffer{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, e.close())
		}
	}()
	if e.pg, err = harness.StartPostgres(ctx, harness.PostgresOptions{}); err != nil {
		return nil, err
	}
	if e.rd, err = harness.StartRedis(ctx, harness.RedisOptions{}); err != nil {
		return nil, err
	}
	e.rdb = redis.NewClient(&redis.Options{Addr: e.rd.Addr(), PoolSize: 64})
	pcfg, err := pgxpool.ParseConfig(e.pg.DSN("postgres"))
	if err != nil {
		return nil, err
	}
	pcfg.MaxConns = 40
	if e.db, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, err
	}
	if _, err := e.db.Exec(ctx, testSchema); err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	dir, err := os.MkdirTemp("", "cacheaside-test-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir) // the engine reads it once, at start
	path := filepath.Join(dir, "config.yaml")
	text := fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\nredis:\n  addr: %q\n%s", e.pg.DSN("postgres"), e.rd.Addr(), testRules)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return nil, err
	}
	cfg, err := config.Load(path, func(string) (string, bool) { return "", false })
	if err != nil {
		return nil, err
	}
	log := zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(e.logs), zap.InfoLevel))
	eng, err := engine.New(cfg, path, log)
	if err != nil {
		return nil, err
	}
	e.eng = eng
	runCtx, stop := context.WithCancel(context.Background())
	e.stop, e.done = stop, make(chan error, 1)
	go func() { e.done <- eng.Run(runCtx) }()
	// Wait until the engine streams: commits before its slot exists are
	// not part of its history.
	for {
		var n int
		err := e.db.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'cdcinvalidate' AND active`).Scan(&n)
		if err == nil && n == 1 {
			break
		}
		select {
		case err := <-e.done:
			e.done <- err
			return nil, fmt.Errorf("engine stopped before streaming: %v", err)
		case <-ctx.Done():
			return nil, errors.New("engine not streaming after 2 minutes")
		case <-time.After(20 * time.Millisecond):
		}
	}
	return e, nil
}

func (e *env) close() error {
	var errs []error
	if e.stop != nil {
		e.stop()
		select {
		case err := <-e.done:
			if err != nil {
				errs = append(errs, fmt.Errorf("engine: %w", err))
			}
		case <-time.After(15 * time.Second):
			errs = append(errs, errors.New("engine did not stop within 15s"))
		}
	}
	if e.db != nil {
		e.db.Close()
	}
	if e.rdb != nil {
		_ = e.rdb.Close()
	}
	if e.rd != nil {
		errs = append(errs, e.rd.Close())
	}
	if e.pg != nil {
		errs = append(errs, e.pg.Close())
	}
	return errors.Join(errs...)
}

func (e *env) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

// value reads items.v of id.
func (e *env) value(ctx context.Context, id int) (int64, error) {
	var v int64
	err := e.db.QueryRow(ctx, `SELECT v FROM items WHERE id = $1`, id).Scan(&v)
	return v, err
}

// valueAt is value with the WAL insert position read in the same
// statement, after its snapshot was taken: no commit at or above it is in
// the value.
func (e *env) valueAt(ctx context.Context, id int) (int64, uint64, error) {
	var v int64
	var at string
	if err := e.db.QueryRow(ctx, `SELECT v, pg_current_wal_insert_lsn()::text FROM items WHERE id = $1`, id).Scan(&v, &at); err != nil {
		return 0, 0, err
	}
	lsn, err := pglogrepl.ParseLSN(at)
	return v, uint64(lsn), err
}

// barrier commits a marker row after everything committed so far and waits
// until the engine has deleted its key: the engine applies in commit
// order, so every earlier commit has been applied (its keys and leases
// deleted, its message published) too. Safe for concurrent use.
func (e *env) barrier(ctx context.Context) error {
	// ctx bounds the wait.
	return harness.AwaitBarrier(ctx, e.rdb, harness.BarrierRow(e.db, e.barrierN.Add(1), time.Hour))
}

func (e *env) mustBarrier(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.barrier(ctx); err != nil {
		t.Fatal(err)
	}
}

// insertItems creates rows ids with v = 0.
func (e *env) insertItems(t testing.TB, ids ...int) {
	t.Helper()
	for _, id := range ids {
		e.exec(t, `INSERT INTO items VALUES ($1, 0)`, id)
	}
}

func itemKey(id int) string { return "item:" + strconv.Itoa(id) }

type syncBuffer = harness.SyncBuffer
