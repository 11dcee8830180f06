package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
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
	f.pg = harness.PostgresT(t, harness.PostgresOptions{Settings: o.pgSettings})
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
		f.rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: f.cl.Addrs(), ReadTimeout: 5 * time.Second})
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
		f.t.Fatalf("exec %q: %v", firstLine(sql), err)
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

func (f *fixture) lsn(sql string) pglogrepl.LSN {
	f.t.Helper()
	var s *string
	if err := f.db.QueryRow(context.Background(), sql).Scan(&s); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
	if s == nil {
		return 0
	}
	l, err := pglogrepl.ParseLSN(*s)
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
	id := f.barrierN.Add(1)
	key := fmt.Sprintf("barrier:%d", id)
	f.set(key)
	var at pglogrepl.LSN // below the barrier's commit
	if f.cl != nil && f.watermarked {
		at = f.currentLSN()
	}
	f.exec(`INSERT INTO barrier VALUES ($1)`, id)
	deadline := time.Now().Add(d)
	for f.exists(key) {
		if time.Now().After(deadline) {
			f.t.Fatalf("barrier %d not applied within %s", id, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if f.cl != nil && f.watermarked {
		for {
			v, err := f.rdb.Get(context.Background(), "cdcinvalidate:cdcinvalidate:lsn").Result()
			if l, perr := pglogrepl.ParseLSN(v); err == nil && perr == nil && l > at {
				break
			}
			if time.Now().After(deadline) {
				f.t.Fatalf("barrier %d: watermark %q not at %s within %s", id, v, at, d)
			}
			time.Sleep(10 * time.Millisecond)
		}
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
	f.waitStreaming(r.done)
	return r
}

// waitStreaming waits until the engine streams from its slot: changes
// committed before the slot exists are not part of its history.
func (f *fixture) waitStreaming(done <-chan error) {
	f.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var n int
		// The streaming connection, not the set-up one that creates the slot
		// (the slot is active while it is being created, too).
		err := f.db.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
WHERE s.slot_name = 'cdcinvalidate' AND r.application_name = 'cdcinvalidate' AND r.state IN ('streaming', 'catchup')`).Scan(&n)
		if err == nil && n == 1 {
			return
		}
		select {
		case err := <-done:
			f.t.Fatalf("engine stopped before streaming: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			f.t.Fatal("engine not streaming after 60s")
		}
		time.Sleep(20 * time.Millisecond)
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

// proc is the engine binary running as a child process.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer = harness.SyncBuffer

func (f *fixture) startBinary(path string, env ...string) *proc {
	f.t.Helper()
	return f.startBinaryOf(harness.BuildEngine(f.t), path, env...)
}

// startBinaryOf starts the engine binary bin (e.g. one built with
// failpoints) with the configuration path.
func (f *fixture) startBinaryOf(bin, path string, env ...string) *proc {
	f.t.Helper()
	p := &proc{out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, "run", "--config", path)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	if err := p.cmd.Start(); err != nil {
		f.t.Fatalf("start engine: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	f.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if f.t.Failed() {
			f.t.Logf("engine output:\n%s", p.out.String())
		}
	})
	return p
}

// startBinaryStreaming starts the binary and waits until it streams.
func (f *fixture) startBinaryStreaming(path string, env ...string) *proc {
	f.t.Helper()
	return f.startBinaryOfStreaming(harness.BuildEngine(f.t), path, env...)
}

// startBinaryOfStreaming starts bin and waits until it streams.
func (f *fixture) startBinaryOfStreaming(bin, path string, env ...string) *proc {
	f.t.Helper()
	p := f.startBinaryOf(bin, path, env...)
	done := make(chan error, 1)
	go func() {
		<-p.done
		done <- fmt.Errorf("exit code %d; output:\n%s", p.exitCode(), p.out.String())
	}()
	f.waitStreaming(done)
	return p
}

func (p *proc) kill9(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// term sends SIGTERM and returns the exit code and how long the exit took.
func (p *proc) term(t *testing.T) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("engine did not exit within 30s of SIGTERM")
	}
	return p.exitCode(), time.Since(start)
}

func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("engine still running after %s; output:\n%s", d, p.out.String())
	}
	return p.exitCode()
}

func (p *proc) exitCode() int {
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		return -1
	}
	return 0
}

// peakRSS returns the process's peak resident set size (VmHWM) in bytes.
func (p *proc) peakRSS() int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:")), "%d", &kb)
			return kb * 1024
		}
	}
	return -1
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
