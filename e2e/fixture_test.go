package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/engine"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// schema is the sample schema every test starts with. users and orders use
// REPLICA IDENTITY FULL because their templates use non-key columns.
const schema = `
CREATE TABLE users (id bigint PRIMARY KEY, email text, name text, bio text);
ALTER TABLE users REPLICA IDENTITY FULL;
CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint, note text);
ALTER TABLE orders REPLICA IDENTITY FULL;
CREATE TABLE big (id bigint PRIMARY KEY, payload text);
CREATE TABLE barrier (id bigint PRIMARY KEY);
CREATE TABLE other (id bigserial PRIMARY KEY, v text);
`

const rules = `
rules:
  - table: users
    keys: ["user:{id}", "user:email:{email}"]
  - table: orders
    keys: ["order:{id}", "user:{user_id}:orders"]
  - table: big
    keys: ["big:{id}"]
  - table: public.barrier
    keys: ["barrier:{id}"]
`

type fixtureOpts struct {
	pgSettings map[string]string
	redisArgs  []string
	pgExtra    string // more YAML lines for the postgres section, indented by two spaces
	extra      string // more top-level YAML sections (sink, log)
	noSchema   bool
	pgVersion  int // PostgreSQL major version; 0: the harness's default
	// cluster runs the test against a Redis Cluster (3 masters, 3
	// replicas), sentinel against a Sentinel deployment; f.rd is then nil.
	cluster, sentinel bool
}

type fixture struct {
	t        *testing.T
	pg       *harness.Postgres
	rd       *harness.Redis
	cl       *harness.Cluster
	sn       *harness.Sentinel
	rdb      redis.UniversalClient
	db       *pgxpool.Pool
	cfgPath  string
	barrierN atomic.Int64
	// watermarked: on a cluster, a barrier also waits for the watermark
	// (the masters delete a batch's keys in parallel, so the barrier key
	// can go before the others; the watermark is raised after all).
	watermarked bool
}

func newFixture(t *testing.T, o fixtureOpts) *fixture {
	t.Helper()
	f := &fixture{t: t}
	f.pg = harness.PostgresT(t, harness.PostgresOptions{Settings: o.pgSettings, Version: o.pgVersion})
	switch {
	case o.cluster:
		f.cl = harness.ClusterT(t, harness.ClusterOptions{})
		f.watermarked = !strings.Contains(o.extra, "watermark: false")
	case o.sentinel:
		f.sn = harness.SentinelT(t, harness.SentinelOptions{})
	default:
		f.rd = harness.RedisT(t, harness.RedisOptions{Args: o.redisArgs})
	}
	f.connect()
	if !o.noSchema {
		f.exec(schema)
	}
	f.cfgPath = f.writeConfig(fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\n%sredis:\n%s%s%s", f.pg.DSN("postgres"), o.pgExtra, f.redisYAML(), o.extra, rules))
	return f
}

// redisYAML is the body of the redis section for the fixture's Redis.
func (f *fixture) redisYAML() string {
	quoted := func(addrs []string) string {
		q := make([]string, len(addrs))
		for i, a := range addrs {
			q[i] = fmt.Sprintf("%q", a)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	switch {
	case f.cl != nil:
		return fmt.Sprintf("  addrs: %s\n  cluster: true\n", quoted(f.cl.Addrs()))
	case f.sn != nil:
		return fmt.Sprintf("  addrs: %s\n  master_name: %s\n", quoted(f.sn.Addrs()), f.sn.Name)
	}
	return fmt.Sprintf("  addr: %q\n", f.rd.Addr())
}

// connect opens the test's own clients of f.pg and f.rd.
func (f *fixture) connect() {
	f.t.Helper()
	switch {
	case f.cl != nil:
		f.rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: f.cl.Addrs(), ReadTimeout: 5 * time.Second, DialerRetries: 1, MaxRetryBackoff: 64 * time.Millisecond})
	case f.sn != nil:
		f.rdb = redis.NewFailoverClient(&redis.FailoverOptions{MasterName: f.sn.Name, SentinelAddrs: f.sn.Addrs(), ReadTimeout: 5 * time.Second})
	default:
		f.rdb = redis.NewClient(&redis.Options{Addr: f.rd.Addr(), MaxRetries: -1, ReadTimeout: 5 * time.Second})
	}
	f.t.Cleanup(func() { _ = f.rdb.Close() })
	db, err := pgxpool.New(f.ctx(), f.pg.DSN("postgres"))
	if err != nil {
		f.t.Fatalf("connect: %v", err)
	}
	f.t.Cleanup(db.Close)
	f.db = db
}

func (f *fixture) writeConfig(text string) string {
	f.t.Helper()
	p := filepath.Join(f.t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fixture) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	f.t.Cleanup(cancel)
	return ctx
}

func (f *fixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.db.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatalf("exec %q: %v", harness.Abbreviate(sql, 80), err)
	}
}

// begin begins a transaction and runs stmts in it, leaving it open; a
// transaction still open when the test ends is rolled back.
func (f *fixture) begin(stmts ...string) pgx.Tx {
	f.t.Helper()
	ctx := f.ctx()
	tx, err := f.db.Begin(ctx)
	if err != nil {
		f.t.Fatalf("begin: %v", err)
	}
	f.t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	for _, sql := range stmts {
		if _, err := tx.Exec(ctx, sql); err != nil {
			f.t.Fatalf("exec %q: %v", harness.Abbreviate(sql, 80), err)
		}
	}
	return tx
}

func (f *fixture) lsn(sql string) pglogrepl.LSN {
	f.t.Helper()
	l, err := harness.QueryLSN(context.Background(), f.db, sql)
	if err != nil {
		f.t.Fatal(err)
	}
	return l
}

func (f *fixture) confirmed() pglogrepl.LSN {
	return f.lsn(`SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'cdcinvalidate'`)
}

func (f *fixture) currentLSN() pglogrepl.LSN { return f.lsn(`SELECT pg_current_wal_lsn()::text`) }

// set fills cache keys the way an application's cache-aside reads would.
func (f *fixture) set(keys ...string) {
	f.t.Helper()
	ctx := context.Background()
	for i := 0; i < len(keys); i += 1000 {
		pipe := f.rdb.Pipeline()
		for _, k := range keys[i:min(i+1000, len(keys))] {
			pipe.Set(ctx, k, "cached", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			f.t.Fatalf("fill cache: %v", err)
		}
	}
}

func (f *fixture) exists(key string) bool {
	f.t.Helper()
	n, err := f.rdb.Exists(context.Background(), key).Result()
	if err != nil {
		f.t.Fatalf("exists %q: %v", key, err)
	}
	return n == 1
}

// count returns how many keys match a SCAN pattern.
func (f *fixture) count(pattern string) int {
	f.t.Helper()
	scan := func(ctx context.Context, c redis.Cmdable) (int, error) {
		n := 0
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			n++
		}
		return n, iter.Err()
	}
	var n int
	var err error
	if cc, ok := f.rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		err = cc.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
			k, err := scan(ctx, m)
			mu.Lock()
			n += k
			mu.Unlock()
			return err
		})
	} else {
		n, err = scan(context.Background(), f.rdb)
	}
	if err != nil {
		f.t.Fatalf("scan %s: %v", pattern, err)
	}
	return n
}

// present returns which of keys exist.
func (f *fixture) present(keys ...string) []string {
	f.t.Helper()
	var out []string
	for _, k := range keys {
		if f.exists(k) {
			out = append(out, k)
		}
	}
	return out
}

func (f *fixture) wantGone(keys ...string) {
	f.t.Helper()
	if p := f.present(keys...); len(p) > 0 {
		f.t.Errorf("keys still cached after their rows changed: %q", p)
	}
}

func (f *fixture) wantKept(keys ...string) {
	f.t.Helper()
	var gone []string
	for _, k := range keys {
		if !f.exists(k) {
			gone = append(gone, k)
		}
	}
	if len(gone) > 0 {
		f.t.Errorf("keys deleted although nothing invalidated them: %q", gone)
	}
}

// barrier commits a marker row after everything written so far and waits
// until the engine deleted its key: the engine applies in commit order, so
// every earlier transaction has been applied too.
func (f *fixture) barrier() {
	f.t.Helper()
	f.barrierTimeout(60 * time.Second)
}

func (f *fixture) barrierTimeout(d time.Duration) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	b := harness.BarrierRow(f.db, f.barrierN.Add(1), d)
	if f.cl != nil && f.watermarked {
		// On a cluster the masters delete a batch's keys in parallel, so
		// the barrier key can go before the others; the watermark is
		// raised after all of them.
		at := f.currentLSN() // below the barrier's commit
		b.Applied = func(ctx context.Context) (bool, error) {
			v, err := f.rdb.Get(ctx, "cdcinvalidate:cdcinvalidate:lsn").Result()
			if err != nil {
				return false, err
			}
			l, err := pglogrepl.ParseLSN(v)
			return err == nil && l > at, err
		}
	}
	if err := harness.AwaitBarrier(ctx, f.rdb, b); err != nil {
		f.t.Fatal(err)
	}
}

// engineRun is an engine running in this process.
type engineRun struct {
	cancel context.CancelFunc
	done   chan error
}

func (f *fixture) start() *engineRun {
	return f.startWith(f.cfgPath, zaptest.NewLogger(f.t, zaptest.Level(zap.InfoLevel)))
}

func (f *fixture) startWith(path string, log *zap.Logger) *engineRun {
	f.t.Helper()
	cfg, err := config.Load(path, func(string) (string, bool) { return "", false })
	if err != nil {
		f.t.Fatalf("config: %v", err)
	}
	eng, err := engine.New(cfg, path, log)
	if err != nil {
		f.t.Fatalf("engine: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &engineRun{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- eng.Run(ctx) }()
	f.t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(15 * time.Second):
			f.t.Error("engine did not stop within 15s")
		}
	})
	f.waitStreaming(func() error {
		select {
		case err := <-r.done:
			r.done <- err // for the cleanup
			return fmt.Errorf("engine stopped before streaming: %v", err)
		default:
			return nil
		}
	}, func() bool {
		st := eng.Metrics.CurrentState()
		return st == "streaming" || st == "redis_unavailable"
	})
	return r
}

// waitStreaming waits until the engine streams from its slot (changes
// committed before the slot exists are not part of its history) and says
// that its session's start-up checks are done (checked: they run, and may
// flush keys, after the slot is acquired). gone reports an engine that
// stopped.
func (f *fixture) waitStreaming(gone func() error, checked func() bool) {
	f.t.Helper()
	ctx := context.Background()
	if err := harness.WaitStreaming(ctx, f.db, "cdcinvalidate", 60*time.Second, gone); err != nil {
		f.t.Fatal(err)
	}
	err := harness.Poll(ctx, 60*time.Second, func() (bool, error) {
		if err := gone(); err != nil {
			return false, err
		}
		return checked(), nil
	})
	if err != nil {
		f.t.Fatalf("engine streaming, but its session's start-up checks not done: %v", err)
	}
}

// stop stops the engine and returns what Run returned.
func (r *engineRun) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("engine did not stop within 15s")
		return nil
	}
}

// wait returns what Run returned, failing after d.
func (r *engineRun) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(d):
		t.Fatalf("engine still running after %s", d)
		return nil
	}
}

// startBinary starts the engine binary with run --config path; env adds
// variables ("NAME=value") to this process's environment.
func (f *fixture) startBinary(path string, env ...string) *harness.Process {
	f.t.Helper()
	return f.startBinaryOf(harness.BuildEngine(f.t), path, env...)
}

// startBinaryOf starts the engine binary bin (e.g. one built with
// failpoints) with the configuration path.
func (f *fixture) startBinaryOf(bin, path string, env ...string) *harness.Process {
	f.t.Helper()
	return harness.StartProcessT(f.t, harness.Command{
		Name: "engine",
		Path: bin,
		Args: []string{"run", "--config", path},
		Env:  append(os.Environ(), env...),
	})
}

// startBinaryStreaming starts the binary and waits until it streams.
func (f *fixture) startBinaryStreaming(path string, env ...string) *harness.Process {
	f.t.Helper()
	return f.startBinaryOfStreaming(harness.BuildEngine(f.t), path, env...)
}

// startBinaryOfStreaming starts bin and waits until it streams.
func (f *fixture) startBinaryOfStreaming(bin, path string, env ...string) *harness.Process {
	f.t.Helper()
	p := f.startBinaryOf(bin, path, env...)
	f.waitStreaming(func() error {
		if p.Running() {
			return nil
		}
		return fmt.Errorf("engine exited before streaming, exit code %d; output:\n%s", p.ExitCode(), p.Output())
	}, func() bool { return strings.Contains(p.Output(), `"msg":"streaming"`) })
	return p
}
