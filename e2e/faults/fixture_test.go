package faults

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// Domains of the random workload: ids stay inside them (inserts and primary
// key changes pick ids in range), so the paused fill can cache every key,
// including "absent" values for ids without a row. The key space is large
// compared with what a run writes, so that a lost invalidation is seldom
// hidden by a later change of the same key.
const (
	maxUserID  = 2400
	seedUsers  = 1600
	maxOrderID = 3200
	seedOrders = 2200
	numEmails  = 300
)

const schema = `
CREATE TABLE users (id bigint PRIMARY KEY, email text, name text NOT NULL, rev bigint NOT NULL DEFAULT 0);
ALTER TABLE users REPLICA IDENTITY FULL;
CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint, note text NOT NULL);
ALTER TABLE orders REPLICA IDENTITY FULL;
CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL);
CREATE TABLE barrier (id bigint PRIMARY KEY);
`

// rules: every template twice, plain (filled while writers pause) and lib:
// (filled concurrently through cacheaside with leases).
const rules = `rules:
  - table: users
    keys: ["user:{id}", "user:email:{email}", "lib:user:{id}", "lib:email:{email}"]
  - table: orders
    keys: ["order:{id}", "orders:user:{user_id}", "lib:order:{id}", "lib:orders:user:{user_id}"]
  - table: big
    keys: ["big:{id}", "lib:big:{id}"]
  - table: barrier
    keys: ["barrier:{id}"]
`

// barrierPrefix marks the barrier's logical decoding message; the engine
// ignores prefixes other than its own.
const barrierPrefix = "cdcinvalidate-barrier"

type fixtureOpts struct {
	bigRows          int    // rows of table big (0: none)
	streaming        string // postgres.streaming ("" = default, on)
	walSenderTimeout string // postgres.wal_sender_timeout
	noWatermark      bool   // sink.watermark: false
	maxBatchKeys     int    // sink.max_batch_keys
	redisReadTimeout string // redis.read_timeout
	redisArgs        []string
	viaProxy         bool // the engine reaches Redis through a proxy of this test
	// actions adds the rules of actions_test.go (refresh, version, stream
	// on their own key namespaces) and the columns they exercise.
	actions bool
	// partitions adds the partitioned table of schema_test.go and its rule.
	partitions bool
	// cluster runs the test against a Redis Cluster of 3 masters and 3
	// replicas (cluster_test.go) instead of one Redis; f.rd is then nil.
	cluster bool
}

type fixture struct {
	t     *testing.T
	o     fixtureOpts
	name  string // database, slot
	pg    *harness.Postgres
	rd    *harness.Redis   // the Redis, nil on a cluster
	cl    *harness.Cluster // the cluster (fixtureOpts.cluster), else nil
	rdb   redis.UniversalClient
	db    *pgxpool.Pool // checker, fill, barrier
	wdb   *pgxpool.Pool // writers
	rdbPG *pgxpool.Pool // readers' loaders
	proxy *harness.Proxy
	cfg   string // config file

	barrierN atomic.Int64
	mu       sync.Mutex
	procs    []*harness.Process
	// verify holds the engines' verifier figures (startVerifyPoller).
	verify *verifyPoller
}

var dbCounter atomic.Int64

var nonIdent = regexp.MustCompile(`[^a-z0-9]+`)

func newFixture(t *testing.T, o fixtureOpts) *fixture {
	t.Helper()
	f := &fixture{t: t, o: o, pg: postgresT(t)}
	base := strings.Trim(nonIdent.ReplaceAllString(strings.ToLower(strings.TrimPrefix(t.Name(), "Test")), "_"), "_")
	f.name = fmt.Sprintf("f%d_%s", dbCounter.Add(1), base)
	if len(f.name) > 40 {
		f.name = f.name[:40]
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.pg.Exec(ctx, `CREATE DATABASE `+f.name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	if o.cluster {
		f.cl = harness.ClusterT(t, harness.ClusterOptions{})
		f.rdb = f.newRedisClient(4)
	} else {
		f.rd = harness.RedisT(t, harness.RedisOptions{Args: o.redisArgs})
		f.rdb = f.newRedisClient(0)
	}
	t.Cleanup(func() { _ = f.rdb.Close() })
	f.db = f.pool("faults-check", 4)
	f.wdb = f.pool("faults-writer", 8)
	f.rdbPG = f.pool("faults-reader", 6)
	f.exec(schema)
	f.exec(`INSERT INTO users SELECT g, 'e' || (g % $2), 'n' || g, 0 FROM generate_series(1, $1) g`, seedUsers, numEmails)
	f.exec(`INSERT INTO orders SELECT g, 1 + (g * 7) % $2, 'o' || g FROM generate_series(1, $1) g`, seedOrders, seedUsers)
	if o.bigRows > 0 {
		f.exec(`INSERT INTO big SELECT g, 'p' || g FROM generate_series(1, $1) g`, o.bigRows)
	}
	if o.actions {
		f.exec(actionsSchema)
	}
	if o.partitions {
		f.exec(partitionsSchema)
	}
	var redisAddr string
	if f.rd != nil {
		redisAddr = f.rd.Addr()
	}
	if o.viaProxy {
		f.proxy = harness.StartProxy(t, f.rd.Addr())
		redisAddr = f.proxy.Addr()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "postgres:\n  dsn: %q\n  slot: %s\n  status_interval: 1s\n  max_backoff: 1s\n", f.pg.DSN(f.name), f.name)
	if o.streaming != "" {
		fmt.Fprintf(&b, "  streaming: %s\n", o.streaming)
	}
	if o.walSenderTimeout != "" {
		fmt.Fprintf(&b, "  wal_sender_timeout: %s\n", o.walSenderTimeout)
	}
	if o.cluster {
		fmt.Fprintf(&b, "redis:\n  cluster: true\n  addrs: [\"%s\"]\n", strings.Join(f.cl.Addrs(), `", "`))
	} else {
		fmt.Fprintf(&b, "redis:\n  addr: %q\n", redisAddr)
	}
	if o.redisReadTimeout != "" {
		fmt.Fprintf(&b, "  read_timeout: %s\n", o.redisReadTimeout)
	}
	b.WriteString("sink:\n  max_backoff: 1s\n")
	if o.noWatermark {
		b.WriteString("  watermark: false\n")
	}
	if o.maxBatchKeys > 0 {
		fmt.Fprintf(&b, "  max_batch_keys: %d\n", o.maxBatchKeys)
	}
	b.WriteString("client:\n  leases: true\n")
	b.WriteString(verifyConfig)
	b.WriteString(rules)
	if o.actions {
		b.WriteString(actionRules)
	}
	if o.partitions {
		b.WriteString(partitionRules)
	}
	f.cfg = filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(f.cfg, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: the engines stop (registered by
	// startEngine, later) before the slot is dropped.
	t.Cleanup(f.dropSlot)
	f.startVerifyPoller()
	return f
}

// newRedisClient is a client of the test's Redis (or cluster) that does
// not retry on its own; poolSize 0 is go-redis's default. The caller
// closes it.
func (f *fixture) newRedisClient(poolSize int) redis.UniversalClient {
	if f.cl != nil {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: f.cl.Addrs(), MaxRetries: -1, DialTimeout: time.Second,
			ReadTimeout: 5 * time.Second, WriteTimeout: time.Second, PoolSize: poolSize, MaxRedirects: 16,
			DialerRetries: 1, MaxRetryBackoff: 64 * time.Millisecond})
	}
	return redis.NewClient(&redis.Options{Addr: f.rd.Addr(), MaxRetries: -1, ReadTimeout: 5 * time.Second, PoolSize: poolSize})
}

// pool opens a connection pool to the test's database.
func (f *fixture) pool(app string, size int32) *pgxpool.Pool {
	f.t.Helper()
	cfg, err := pgxpool.ParseConfig(f.pg.DSN(f.name))
	if err != nil {
		f.t.Fatal(err)
	}
	cfg.MaxConns = size
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	cfg.ConnConfig.RuntimeParams["lock_timeout"] = "1s"
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = "20s"
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(p.Close)
	return p
}

func (f *fixture) exec(sql string, args ...any) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := f.db.Exec(ctx, sql, args...); err != nil {
		f.t.Fatalf("exec %q: %v", harness.Abbreviate(sql, 80), err)
	}
}

func (f *fixture) lsn(sql string, args ...any) pglogrepl.LSN {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := harness.QueryLSN(ctx, f.db, sql, args...)
	if err != nil {
		f.t.Fatal(err)
	}
	return l
}

func (f *fixture) confirmed() pglogrepl.LSN {
	return f.lsn(`SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, f.name)
}

func (f *fixture) currentLSN() pglogrepl.LSN { return f.lsn(`SELECT pg_current_wal_lsn()::text`) }

// walsenderPID is the PID streaming from the test's slot, 0 if none.
func (f *fixture) walsenderPID() int {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var pid *int
	err := f.db.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, f.name).Scan(&pid)
	if err != nil {
		f.t.Fatalf("read walsender pid: %v", err)
	}
	if pid == nil {
		return 0
	}
	return *pid
}

func (f *fixture) markKey() string { return "cdcinvalidate:" + f.name + ":lsn" }

// watermark reads the engine's applied watermark, 0 if absent.
func (f *fixture) watermark(ctx context.Context) (pglogrepl.LSN, error) {
	v, err := f.rdb.Get(ctx, f.markKey()).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(v)
}

// barrier commits one transaction after everything the writers committed
// (they must be stopped): a row of table barrier, whose key the engine
// deletes, and a transactional logical decoding message
// (pg_logical_emit_message(true, 'cdcinvalidate-barrier', ...)). It
// returns once
//
//   - the engine deleted the barrier's key: it applies in commit order, so
//     every earlier transaction has been applied too. The key does not
//     depend on anything the engine reports about itself, so this holds for
//     the negative controls too (confirm-received, no watermark);
//   - with the watermark on, cdcinvalidate:<slot>:lsn reached the message's
//     LSN, and then the slot's confirmed_flush_lsn reached that watermark.
//     The second wait matters: the watermark is raised in the same pipeline
//     as the batch's deletes, before the engine compares the previous
//     watermark with its own and, if Redis went back in time, flushes every
//     managed key; the position is confirmed only after that flush.
func (f *fixture) barrier(within time.Duration) {
	f.t.Helper()
	mark := f.barrierMark(within)
	if f.o.noWatermark {
		if f.cl != nil {
			// The masters of a cluster delete a batch's keys in parallel:
			// the barrier's key can go before the others. The engine sends
			// a batch once the previous one is done everywhere, so the
			// key of a second barrier going is proof.
			f.barrierMark(within)
		}
		return
	}
	harness.WaitFor(f.t, within, fmt.Sprintf("the slot's confirmed position to reach the watermark %s", mark), func() bool { return f.confirmed() >= mark })
}

// barrierMark is the first half of barrier: it returns once the barrier's
// key is gone and the watermark (if on) passed the message, and returns
// the watermark then.
func (f *fixture) barrierMark(within time.Duration) pglogrepl.LSN {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within+30*time.Second)
	defer cancel()
	id := f.barrierN.Add(1)
	b := harness.BarrierRow(f.db, id, within)
	var target, mark pglogrepl.LSN
	b.Commit = func(ctx context.Context) error {
		var msgLSN string
		err := pgx.BeginFunc(ctx, f.db, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO barrier VALUES ($1)`, id); err != nil {
				return err
			}
			return tx.QueryRow(ctx, `SELECT pg_logical_emit_message(true, $1, $2)::text`, barrierPrefix, b.Key).Scan(&msgLSN)
		})
		if err != nil {
			return err
		}
		target, err = pglogrepl.ParseLSN(msgLSN)
		return err
	}
	if !f.o.noWatermark {
		b.Applied = func(ctx context.Context) (bool, error) {
			m, err := f.watermark(ctx)
			mark = m
			return err == nil && m >= target, err
		}
	}
	b.Gone = func() error {
		if p := f.lastEngine(); p != nil && !p.Running() {
			return fmt.Errorf("the engine exited (%s); output:\n%s", p.State(), p.Tail(40))
		}
		return nil
	}
	if err := harness.AwaitBarrier(ctx, f.rdb, b); err != nil {
		f.t.Fatalf("%v (message at %s, watermark %s)", err, target, mark)
	}
	return mark
}

func (f *fixture) dropSlot() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 50; i++ {
		_, err := f.db.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, f.name)
		if err == nil || ctx.Err() != nil {
			return
		}
		time.Sleep(200 * time.Millisecond) // still active: its walsender is exiting
	}
}

// lastEngine is the engine started last, nil if none.
func (f *fixture) lastEngine() *harness.Process {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.procs) == 0 {
		return nil
	}
	return f.procs[len(f.procs)-1]
}

// startEngine starts the engine binary (env adds CDC_* variables) without
// waiting for it to stream.
func (f *fixture) startEngine(env ...string) *harness.Process {
	f.t.Helper()
	f.mu.Lock()
	n := len(f.procs) + 1
	f.mu.Unlock()
	p := harness.StartProcessT(f.t, harness.Command{
		Name: fmt.Sprintf("engine run %d (env %q)", n, env),
		Path: buildEngine(f.t),
		Args: []string{"run", "--config", f.cfg, "--log-format", "console"},
		Env:  append(os.Environ(), env...),
	})
	f.mu.Lock()
	f.procs = append(f.procs, p)
	f.mu.Unlock()
	// Runs before the harness's own cleanup (which kills what still runs
	// and logs the output of a failed test): a gentle stop first.
	f.t.Cleanup(func() {
		_ = p.Stop(15 * time.Second)
		// The verifier names each stale key it counted: show them.
		for _, line := range strings.Split(p.Output(), "\n") {
			if strings.Contains(line, "a sampled key holds a stale value") {
				f.t.Logf("%s: %s", p.Name(), line)
			}
		}
		if !f.t.Failed() && os.Getenv("CDC_FAULTS_LOGS") != "" {
			f.t.Logf("%s (%s) output, last lines:\n%s", p.Name(), p.State(), p.Tail(60))
		}
	})
	return p
}

// startStreaming starts the engine and waits until it streams.
func (f *fixture) startStreaming(env ...string) *harness.Process {
	f.t.Helper()
	p := f.startEngine(env...)
	f.waitStreaming(p, 60*time.Second)
	return p
}

// waitStreaming waits until p's replication connection streams from the
// slot (the set-up connection that creates the slot is not enough).
func (f *fixture) waitStreaming(p *harness.Process, within time.Duration) {
	f.t.Helper()
	err := harness.WaitStreaming(context.Background(), f.db, f.name, within, func() error {
		if p.Running() {
			return nil
		}
		return fmt.Errorf("engine exited before streaming (%s)", p.State())
	})
	if err != nil {
		f.t.Fatalf("%v; output:\n%s", err, p.Tail(40))
	}
	// The walsender is active before the start-up checks end (a first
	// start's flush, which on a cluster takes long enough to delete what
	// the test fills next): the engine logs "streaming" after them.
	harness.WaitFor(f.t, within, "the engine to finish its start-up checks (log: streaming)", func() bool {
		return strings.Contains(p.Output(), "\tstreaming\t") || !p.Running()
	})
}

// sleepRand sleeps a random duration in [lo, hi).
func sleepRand(rng interface{ Int64N(int64) int64 }, lo, hi time.Duration) {
	d := lo
	if hi > lo {
		d += time.Duration(rng.Int64N(int64(hi - lo)))
	}
	time.Sleep(d)
}
