// Command demo shows cdcinvalidate at work on a throwaway PostgreSQL and
// Redis: it creates the sample schema (examples/schema.sql), runs the engine
// binary with the repository's rules.yaml (the DSN and the Redis address come
// from CDC_POSTGRES_DSN and CDC_REDIS_ADDR), plays a scripted story of
// writes, and prints every cache invalidation as Redis reports it, with the
// time since the transaction committed.
//
//	go run ./internal/demo          # the story, then clean up
//	go run ./internal/demo --keep   # then keep everything running until Ctrl-C
//
// It exits 0 when every step had exactly the effect it announces, and
// non-zero with a message naming what did not happen otherwise.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

const (
	slotName      = "cdcinvalidate" // the slot rules.yaml names
	stepTimeout   = 5 * time.Second // how long a step waits for its invalidations
	cacheTTL      = time.Hour       // TTL of the demo's cache entries (the safety net)
	engineStopMax = 15 * time.Second
	indent        = "      "
)

func main() {
	keep := flag.Bool("keep", false, "after the story, keep PostgreSQL, Redis and the engine running until Ctrl-C, to explore with psql and redis-cli")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: go run ./internal/demo [--keep]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first Ctrl-C the demo cleans up; a second one ends it at once.
	context.AfterFunc(ctx, stop)
	d := &demo{keep: *keep}
	err := d.run(ctx)
	d.cleanup()
	switch {
	case err == nil:
		d.say("\nDemo finished: every step had the effect it announced.")
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		d.say("\nInterrupted; the throwaway servers are gone.")
		os.Exit(130)
	default:
		d.say("\nDEMO FAILED: %v", err)
		os.Exit(1)
	}
}

// demo is the state of one run.
type demo struct {
	keep bool

	outMu sync.Mutex // one line at a time on stdout

	root    string
	binDir  string // temporary directory of the engine binary
	pg      *harness.Postgres
	rd      *harness.Redis
	db      *pgxpool.Pool
	rdb     *redis.Client
	sub     *redis.PubSub
	eng     *engineProc
	printed chan struct{} // closed when the event printer has ended

	evMu      sync.Mutex
	cur       *step           // the step in progress, nil between steps
	latencies []time.Duration // invalidation latencies of the story
	cached    map[string]bool // what the demo believes Redis holds
	loose     []string        // invalidations outside any step, during the story
	commits   int             // committed transactions of the story
}

// step is one part of the story: what it must invalidate, and what did.
type step struct {
	expect     map[string]bool
	got        map[string]bool
	unexpected []string
	commit     time.Time     // commit time, zero for a step without commit
	known      chan struct{} // closed once commit is set (or known to be absent)
	progress   chan struct{} // receives a value after each recorded invalidation
}

func (d *demo) say(format string, args ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Printf(format+"\n", args...)
}

func (d *demo) run(ctx context.Context) error {
	root, err := harness.ModuleRoot()
	if err != nil {
		return err
	}
	d.root = root
	schema, err := os.ReadFile(filepath.Join(root, "examples", "schema.sql"))
	if err != nil {
		return fmt.Errorf("read the sample schema: %w", err)
	}
	d.cached = map[string]bool{}

	d.say("cdcinvalidate demo: throwaway PostgreSQL and Redis on free loopback ports, the sample")
	d.say("schema, the engine with the repository's rules.yaml, and a story of writes whose cache")
	d.say("invalidations are printed as Redis reports them.")
	d.say("")
	d.say("== Setting up")

	// Build the engine while the servers start.
	type built struct {
		bin string
		err error
	}
	buildDone := make(chan built, 1)
	go func() {
		bin, err := d.buildEngine(ctx)
		buildDone <- built{bin, err}
	}()
	defer func() {
		// Never leave the build running or its result unread on an early return.
		<-buildDone
	}()

	// track_commit_timestamp lets the demo read when each transaction
	// committed, so latencies are measured from the commit itself.
	d.pg, err = harness.StartPostgres(ctx, harness.PostgresOptions{Settings: map[string]string{"track_commit_timestamp": "on"}})
	if err != nil {
		return err
	}
	v := d.pg.ServerVersionNum()
	d.say("%spostgres  %d.%d on 127.0.0.1:%d (wal_level=logical, throwaway data dir)", indent, v/10000, v%10000, d.pg.Port())
	d.rd, err = harness.StartRedis(ctx, harness.RedisOptions{})
	if err != nil {
		return err
	}
	d.say("%sredis     on %s (no persistence)", indent, d.rd.Addr())

	d.db, err = pgxpool.New(ctx, d.pg.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	if _, err := d.db.Exec(ctx, string(schema)); err != nil {
		return fmt.Errorf("create the sample schema from examples/schema.sql: %w", err)
	}
	d.say("%sschema    examples/schema.sql: users(id, email, name), orders(id, user_id, total), REPLICA IDENTITY FULL", indent)
	const seed = `INSERT INTO users (id, email, name) VALUES (1, 'ann@example.com', 'Ann'), (2, 'bob@example.com', 'Bob');
INSERT INTO orders (id, user_id, total) VALUES (100, 1, 25.00), (101, 2, 12.50);`
	if _, err := d.db.Exec(ctx, seed); err != nil {
		return fmt.Errorf("insert the sample rows: %w", err)
	}
	d.say("%srows      users 1 Ann, 2 Bob; orders 100 (Ann), 101 (Bob)", indent)

	d.rdb = redis.NewClient(&redis.Options{Addr: d.rd.Addr()})
	if err := d.rdb.ConfigSet(ctx, "notify-keyspace-events", "Kg").Err(); err != nil {
		return fmt.Errorf("enable keyspace notifications: %w", err)
	}
	d.sub = d.rdb.PSubscribe(ctx, "__keyspace@0__:*")
	if _, err := d.sub.Receive(ctx); err != nil {
		return fmt.Errorf("subscribe to keyspace notifications: %w", err)
	}
	d.say("%swatching  Redis keyspace notifications (CONFIG SET notify-keyspace-events Kg; PSUBSCRIBE __keyspace@0__:*)", indent)
	d.printed = make(chan struct{})
	go d.printEvents(timestamp(d.sub.Channel(redis.WithChannelSize(1000))))

	b := <-buildDone
	buildDone <- b // for the deferred read
	if b.err != nil {
		return b.err
	}
	if err := d.startEngine(ctx, b.bin); err != nil {
		return err
	}

	if err := d.story(ctx); err != nil {
		return err
	}
	if err := d.showPositions(ctx, "Where the slot stands"); err != nil {
		return err
	}
	d.say("%s%d keys invalidated in %d committed transactions; time from commit to the delete in Redis: %s.",
		indent, len(d.latencies), d.commits, latencySummary(d.latencies))

	if d.keep {
		d.evMu.Lock()
		d.cur = nil
		d.evMu.Unlock()
		d.explore(ctx)
	}
	return d.stopEngine()
}

// buildEngine runs go build -o TMP/cdcinvalidate ./cmd/cdcinvalidate.
func (d *demo) buildEngine(ctx context.Context) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		if _, serr := os.Stat("/usr/local/go/bin/go"); serr != nil {
			return "", errors.New("the go command is not on PATH (nor in /usr/local/go/bin); it is needed to build the engine")
		}
		goBin = "/usr/local/go/bin/go"
	}
	dir, err := os.MkdirTemp("", "cdcinvalidate-demo-*")
	if err != nil {
		return "", err
	}
	d.binDir = dir
	bin := filepath.Join(dir, "cdcinvalidate")
	start := time.Now()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", bin, "./cmd/cdcinvalidate")
	cmd.Dir = d.root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the engine (go build -o %s ./cmd/cdcinvalidate): %w\n%s", bin, err, strings.TrimSpace(string(out)))
	}
	d.say("%sengine    built with: go build -o %s ./cmd/cdcinvalidate (%.1f s)", indent, bin, time.Since(start).Seconds())
	return bin, nil
}

// engineProc is the engine binary running as a child process.
type engineProc struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed when the process has exited and its output is copied
	err    error
	exited time.Time
}

func (e *engineProc) running() bool {
	select {
	case <-e.done:
		return false
	default:
		return true
	}
}

func (e *engineProc) exitCode() int {
	var ee *exec.ExitError
	if errors.As(e.err, &ee) {
		return ee.ExitCode()
	}
	if e.err != nil {
		return -1
	}
	return 0
}

func (d *demo) startEngine(ctx context.Context, bin string) error {
	dsn := d.pg.DSN("postgres")
	d.say("")
	d.say("== Starting the engine with the repository's rules.yaml; the environment overrides its dsn and addr")
	d.say("%s$ CDC_POSTGRES_DSN='%s' CDC_REDIS_ADDR=%s \\", indent, dsn, d.rd.Addr())
	d.say("%s    %s run --config rules.yaml --log-format console", indent, bin)
	d.say("%s(engine log lines are prefixed with \"engine | \")", indent)

	cmd := exec.Command(bin, "run", "--config", "rules.yaml", "--log-format", "console")
	cmd.Dir = d.root
	// The environment without any CDC_* of the caller's: only the two below.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CDC_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "CDC_POSTGRES_DSN="+dsn, "CDC_REDIS_ADDR="+d.rd.Addr())
	// Its own process group: a Ctrl-C in the terminal reaches the demo,
	// which stops the engine itself with SIGTERM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("start the engine: %w", err)
	}
	pw.Close()
	e := &engineProc{cmd: cmd, done: make(chan struct{})}
	d.eng = e
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			d.say("engine | %s", sc.Text())
		}
		_, _ = io.Copy(io.Discard, pr)
		pr.Close()
	}()
	go func() {
		e.err = cmd.Wait()
		e.exited = time.Now()
		<-copied
		close(e.done)
	}()

	// Changes committed before the slot exists are not part of its history,
	// and the first start flushes the managed keys: wait until the engine
	// streams. The streaming connection, not the set-up one that creates the
	// slot (a slot is active while it is being created, too).
	deadline := time.Now().Add(60 * time.Second)
	for {
		var n int
		err := d.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
WHERE s.slot_name = $1 AND r.application_name = 'cdcinvalidate' AND r.state IN ('streaming', 'catchup')`, slotName).Scan(&n)
		if err == nil && n == 1 {
			break
		}
		if err != nil {
			return fmt.Errorf("read pg_stat_replication: %w", err)
		}
		select {
		case <-e.done:
			return fmt.Errorf("the engine exited with status %d before it started streaming (its log is above)", e.exitCode())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the engine is not streaming from slot %q after 60 s (no walsender named cdcinvalidate streams from it in pg_stat_replication)", slotName)
		}
	}
	d.say("%sslot %q is active: the engine streams", indent, slotName)
	return nil
}

// stopEngine sends SIGTERM and checks the engine exits 0 and confirmed its position.
func (d *demo) stopEngine() error {
	e := d.eng
	if e == nil || !e.running() {
		if e != nil {
			return fmt.Errorf("the engine exited on its own with status %d (its log is above)", e.exitCode())
		}
		return nil
	}
	d.say("")
	d.say("== Stopping the engine with SIGTERM (kill -TERM %d)", e.cmd.Process.Pid)
	sent := time.Now()
	if err := e.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("send SIGTERM to the engine: %w", err)
	}
	select {
	case <-e.done:
	case <-time.After(engineStopMax):
		return fmt.Errorf("the engine did not exit within %s of SIGTERM", engineStopMax)
	}
	took := e.exited.Sub(sent)
	if code := e.exitCode(); code != 0 {
		return fmt.Errorf("the engine exited with status %d after SIGTERM, want 0", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	confirmed, active, err := d.slot(ctx)
	if err != nil {
		return err
	}
	d.say("%sexit status 0 after %d ms; slot %q: active=%v, confirmed_flush_lsn %s", indent, took.Milliseconds(), slotName, active, confirmed)
	d.say("%s(the next start resumes from there; nothing committed since is lost, the slot keeps it)", indent)
	return nil
}

// cleanup stops whatever is still running and removes the temporary files.
func (d *demo) cleanup() {
	if d.eng != nil && d.eng.running() {
		_ = d.eng.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.eng.done:
		case <-time.After(engineStopMax):
			_ = d.eng.cmd.Process.Kill()
			<-d.eng.done
		}
	}
	if d.sub != nil {
		_ = d.sub.Close()
	}
	if d.printed != nil {
		<-d.printed
	}
	if d.rdb != nil {
		_ = d.rdb.Close()
	}
	if d.db != nil {
		d.db.Close()
	}
	if d.pg != nil {
		if err := d.pg.Close(); err != nil {
			d.say("cleanup: %v", err)
		}
	}
	if d.rd != nil {
		if err := d.rd.Close(); err != nil {
			d.say("cleanup: %v", err)
		}
	}
	if d.binDir != "" {
		_ = os.RemoveAll(d.binDir)
	}
}

// ---- invalidation events -------------------------------------------------

// deletion is a key Redis reported deleted, and when the demo heard of it.
type deletion struct {
	key string
	at  time.Time
}

// timestamp notes the arrival time of every deletion at once, so that a
// printer waiting for a commit time does not delay the measurement.
func timestamp(ch <-chan *redis.Message) <-chan deletion {
	out := make(chan deletion, 10000)
	go func() {
		defer close(out)
		for msg := range ch {
			if msg.Payload != "del" { // UNLINK and DEL both notify "del"
				continue
			}
			out <- deletion{key: strings.TrimPrefix(msg.Channel, "__keyspace@0__:"), at: time.Now()}
		}
	}()
	return out
}

// printEvents prints every deletion Redis reports and records it in the
// current step.
func (d *demo) printEvents(ch <-chan deletion) {
	defer close(d.printed)
	for ev := range ch {
		key, at := ev.key, ev.at

		d.evMu.Lock()
		st := d.cur
		d.evMu.Unlock()
		if st == nil {
			d.say("%s  invalidated  %-34s%s", indent, key, d.sinceLastCommit(at))
			d.evMu.Lock()
			d.loose = append(d.loose, key)
			delete(d.cached, key)
			d.evMu.Unlock()
			continue
		}
		// The commit time is read right after COMMIT returns; the
		// invalidation may arrive a moment before that.
		select {
		case <-st.known:
		case <-time.After(2 * time.Second):
		}
		d.evMu.Lock()
		commit := st.commit
		expected := st.expect[key] && !st.got[key]
		if expected {
			st.got[key] = true
		} else {
			st.unexpected = append(st.unexpected, key)
		}
		var lat time.Duration
		if !commit.IsZero() {
			lat = at.Sub(commit)
			if expected {
				d.latencies = append(d.latencies, lat)
			}
		}
		d.evMu.Unlock()

		note := ""
		switch {
		case !expected:
			note = "   <- NOT expected"
		case !commit.IsZero():
			note = fmt.Sprintf("%s after commit", fmtDur(lat))
		}
		d.say("%s  invalidated  %-34s%s", indent, key, note)
		select {
		case st.progress <- struct{}{}:
		default:
		}
	}
}

// sinceLastCommit describes the time from the last commit in the cluster
// (pg_last_committed_xact) to at, for invalidations outside the story.
func (d *demo) sinceLastCommit(at time.Time) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var ts *time.Time
	if err := d.db.QueryRow(ctx, `SELECT timestamp FROM pg_last_committed_xact()`).Scan(&ts); err != nil || ts == nil {
		return ""
	}
	return fmt.Sprintf("%s after the last commit", fmtDur(at.Sub(*ts)))
}

func fmtDur(d time.Duration) string {
	if d < 0 {
		return "0.0 ms"
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func latencySummary(ls []time.Duration) string {
	if len(ls) == 0 {
		return "no samples"
	}
	s := slices.Clone(ls)
	slices.Sort(s)
	return fmt.Sprintf("median %s, max %s", fmtDur(s[len(s)/2]), fmtDur(s[len(s)-1]))
}

// ---- the story -------------------------------------------------------------

func (d *demo) story(ctx context.Context) error {
	d.section(1, "Readers fill the cache (cache-aside: on a miss, SELECT from PostgreSQL, then SET with a TTL)")
	if err := d.fill(ctx, "user:1", "user:2", "user:email:ann@example.com", "user:email:bob@example.com",
		"order:100", "order:101", "user:1:orders", "user:2:orders"); err != nil {
		return err
	}
	if err := d.showCache(ctx); err != nil {
		return err
	}

	d.section(2, "Ann's name changes: both keys of her row are invalidated")
	if err := d.sqlStep(ctx, `UPDATE users SET name = 'Ann Lee' WHERE id = 1`,
		"user:1", "user:email:ann@example.com"); err != nil {
		return err
	}

	d.section(3, "Ann changes her email address: the keys of the old AND the new address go")
	d.say("%s(user:email:ann.lee@example.com holds a cached \"not found\" from a lookup made before the change)", indent)
	if err := d.fill(ctx, "user:1", "user:email:ann@example.com", "user:email:ann.lee@example.com"); err != nil {
		return err
	}
	if err := d.sqlStep(ctx, `UPDATE users SET email = 'ann.lee@example.com' WHERE id = 1`,
		"user:1", "user:email:ann@example.com", "user:email:ann.lee@example.com"); err != nil {
		return err
	}

	d.section(4, "A new order for Bob: the order's key and Bob's order list")
	if err := d.fill(ctx, "order:102"); err != nil {
		return err
	}
	if err := d.sqlStep(ctx, `INSERT INTO orders (id, user_id, total) VALUES (102, 2, 40.00)`,
		"order:102", "user:2:orders"); err != nil {
		return err
	}

	d.section(5, "One transaction, two tables: Bob is renamed and order 101 moves from Bob to Ann")
	if err := d.fill(ctx, "user:2:orders"); err != nil {
		return err
	}
	if err := d.txnStep(ctx, []string{
		`UPDATE users SET name = 'Bob Stone' WHERE id = 2`,
		`UPDATE orders SET user_id = 1 WHERE id = 101`,
	}, "user:2", "user:email:bob@example.com", "order:101", "user:2:orders", "user:1:orders"); err != nil {
		return err
	}

	d.section(6, "A transaction that rolls back invalidates nothing")
	if err := d.fill(ctx, "user:1", "user:email:ann.lee@example.com", "user:1:orders", "order:101"); err != nil {
		return err
	}
	if err := d.rollbackStep(ctx, []string{
		`DELETE FROM orders WHERE user_id = 1`,
		`DELETE FROM users WHERE id = 1`,
	}); err != nil {
		return err
	}

	d.section(7, "An order is deleted: the order's key and its owner's order list (old row values)")
	if err := d.sqlStep(ctx, `DELETE FROM orders WHERE id = 100`,
		"order:100", "user:1:orders"); err != nil {
		return err
	}

	d.section(8, "TRUNCATE orders: every key of every orders template, found with SCAN MATCH order:* and user:*:orders, then UNLINK")
	d.say("%s(order:999 is a leftover whose row the engine never saw: the patterns still find it)", indent)
	if err := d.fill(ctx, "order:101", "order:102", "order:999", "user:1:orders", "user:2:orders"); err != nil {
		return err
	}
	if err := d.sqlStep(ctx, `TRUNCATE orders`,
		"order:101", "order:102", "order:999", "user:1:orders", "user:2:orders"); err != nil {
		return err
	}

	d.section(9, "Another service writes with plain SQL, no cache code at all (here: the psql command line)")
	if err := d.fill(ctx, "user:2", "user:email:bob@example.com"); err != nil {
		return err
	}
	return d.psqlStep(ctx, `UPDATE users SET email = 'bob@stone.example' WHERE id = 2`,
		"user:2", "user:email:bob@example.com")
}

func (d *demo) section(n int, title string) {
	d.say("")
	d.say("[%d] %s", n, title)
}

var (
	userKeyRE   = regexp.MustCompile(`^user:(\d+)$`)
	emailKeyRE  = regexp.MustCompile(`^user:email:(.+)$`)
	ordersKeyRE = regexp.MustCompile(`^user:(\d+):orders$`)
	orderKeyRE  = regexp.MustCompile(`^order:(\d+)$`)
)

// load reads what a cache-aside reader would cache under key: the row as
// JSON, or "null" for a cached "not found".
func (d *demo) load(ctx context.Context, key string) (string, error) {
	var q, arg string
	switch {
	case userKeyRE.MatchString(key):
		q, arg = `SELECT row_to_json(u)::text FROM users u WHERE id = $1::bigint`, userKeyRE.FindStringSubmatch(key)[1]
	case ordersKeyRE.MatchString(key):
		q, arg = `SELECT coalesce(array_to_json(array_agg(o ORDER BY o.id)), '[]')::text FROM orders o WHERE user_id = $1::bigint`, ordersKeyRE.FindStringSubmatch(key)[1]
	case emailKeyRE.MatchString(key):
		q, arg = `SELECT row_to_json(u)::text FROM users u WHERE email = $1`, emailKeyRE.FindStringSubmatch(key)[1]
	case orderKeyRE.MatchString(key):
		q, arg = `SELECT row_to_json(o)::text FROM orders o WHERE id = $1::bigint`, orderKeyRE.FindStringSubmatch(key)[1]
	default:
		return "", fmt.Errorf("no loader for key %q", key)
	}
	var v string
	err := d.db.QueryRow(ctx, q, arg).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "null", nil
	}
	if err != nil {
		return "", fmt.Errorf("load %s: %w", key, err)
	}
	return v, nil
}

// fill caches keys the way cache-aside readers do.
func (d *demo) fill(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		v, err := d.load(ctx, k)
		if err != nil {
			return err
		}
		if err := d.rdb.Set(ctx, k, v, cacheTTL).Err(); err != nil {
			return fmt.Errorf("SET %s: %w", k, err)
		}
		d.evMu.Lock()
		d.cached[k] = true
		d.evMu.Unlock()
		shown := v
		if len(shown) > 64 {
			shown = shown[:61] + "..."
		}
		d.say("%scache  SET %-30s %s  EX %d", indent, k, shown, int(cacheTTL.Seconds()))
	}
	return nil
}

// begin starts a step expecting the invalidation of keys.
func (d *demo) begin(keys []string) (*step, error) {
	st := &step{expect: map[string]bool{}, got: map[string]bool{}, known: make(chan struct{}), progress: make(chan struct{}, 1)}
	d.evMu.Lock()
	defer d.evMu.Unlock()
	if len(d.loose) > 0 {
		return nil, fmt.Errorf("keys were invalidated between steps, although nothing was written: %v", d.loose)
	}
	for _, k := range keys {
		if !d.cached[k] {
			return nil, fmt.Errorf("internal: step expects %s to be invalidated, but the demo did not cache it", k)
		}
		st.expect[k] = true
	}
	d.cur = st
	return st, nil
}

// committed records the commit time of the transaction that just committed.
func (d *demo) committed(ctx context.Context, st *step, fallback time.Time) {
	var ts *time.Time
	err := d.db.QueryRow(ctx, `SELECT timestamp FROM pg_last_committed_xact()`).Scan(&ts)
	d.evMu.Lock()
	if err == nil && ts != nil {
		st.commit = *ts
	} else {
		st.commit = fallback
	}
	d.commits++
	d.evMu.Unlock()
	close(st.known)
}

// finish waits until the step's invalidations arrived (at most stepTimeout),
// checks nothing else was invalidated, and prints what the cache holds.
func (d *demo) finish(ctx context.Context, st *step) error {
	deadline := time.NewTimer(stepTimeout)
	defer deadline.Stop()
	for {
		d.evMu.Lock()
		done := len(st.got) == len(st.expect)
		d.evMu.Unlock()
		if done {
			break
		}
		select {
		case <-st.progress:
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			d.evMu.Lock()
			var missing []string
			for k := range st.expect {
				if !st.got[k] {
					missing = append(missing, k)
				}
			}
			d.evMu.Unlock()
			sort.Strings(missing)
			return fmt.Errorf("expected invalidations did not arrive within %s: %s", stepTimeout, strings.Join(missing, ", "))
		}
	}
	d.evMu.Lock()
	d.cur = nil
	unexpected := st.unexpected
	for k := range st.expect {
		delete(d.cached, k)
	}
	d.evMu.Unlock()
	if len(unexpected) > 0 {
		return fmt.Errorf("keys were invalidated that this step must not touch: %s", strings.Join(unexpected, ", "))
	}
	return d.showCache(ctx)
}

// showCache prints the keys Redis holds and checks them against the demo's model.
func (d *demo) showCache(ctx context.Context) error {
	var have []string
	iter := d.rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		// The engine's own bookkeeping (its applied-position watermark
		// cdcinvalidate:<slot>:lsn) is not part of the application's cache.
		if strings.HasPrefix(iter.Val(), "cdcinvalidate:") {
			continue
		}
		have = append(have, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("SCAN: %w", err)
	}
	sort.Strings(have)
	d.evMu.Lock()
	var want []string
	for k := range d.cached {
		want = append(want, k)
	}
	d.evMu.Unlock()
	sort.Strings(want)
	list := strings.Join(have, " ")
	if list == "" {
		list = "(empty)"
	}
	d.say("%scached now (%d): %s", indent, len(have), list)
	if !slices.Equal(have, want) {
		return fmt.Errorf("Redis holds %v, but after this step it should hold %v", have, want)
	}
	return nil
}

// sqlStep runs one statement in its own transaction (autocommit).
func (d *demo) sqlStep(ctx context.Context, sql string, expect ...string) error {
	st, err := d.begin(expect)
	if err != nil {
		return err
	}
	d.say("%sSQL   %s;", indent, sql)
	if _, err := d.db.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	d.committed(ctx, st, time.Now())
	return d.finish(ctx, st)
}

// txnStep runs statements in one transaction, showing that nothing is
// invalidated before COMMIT.
func (d *demo) txnStep(ctx context.Context, stmts []string, expect ...string) error {
	st, err := d.begin(expect)
	if err != nil {
		return err
	}
	conn, err := d.db.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	d.say("%sSQL   BEGIN;", indent)
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	for _, s := range stmts {
		d.say("%sSQL   %s;", indent, s)
		if _, err := conn.Exec(ctx, s); err != nil {
			_, _ = conn.Exec(context.Background(), "ROLLBACK")
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	const pause = 500 * time.Millisecond
	select {
	case <-time.After(pause):
	case <-ctx.Done():
		_, _ = conn.Exec(context.Background(), "ROLLBACK")
		return ctx.Err()
	}
	d.evMu.Lock()
	early := len(st.got) + len(st.unexpected)
	d.evMu.Unlock()
	if early > 0 {
		_, _ = conn.Exec(context.Background(), "ROLLBACK")
		return errors.New("keys were invalidated before the transaction committed")
	}
	d.say("%s      (%d ms later, not yet committed: nothing invalidated; readers still see the old rows)", indent, pause.Milliseconds())
	d.say("%sSQL   COMMIT;", indent)
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("COMMIT: %w", err)
	}
	d.committed(ctx, st, time.Now())
	return d.finish(ctx, st)
}

// rollbackStep runs statements in a transaction that rolls back, then waits
// until the slot's confirmed position passed the rollback: the engine has
// read past it, so anything it would have deleted is deleted by then.
func (d *demo) rollbackStep(ctx context.Context, stmts []string) error {
	st, err := d.begin(nil)
	if err != nil {
		return err
	}
	close(st.known)
	conn, err := d.db.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	d.say("%sSQL   BEGIN;", indent)
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		return err
	}
	for _, s := range stmts {
		d.say("%sSQL   %s;", indent, s)
		if _, err := conn.Exec(ctx, s); err != nil {
			_, _ = conn.Exec(context.Background(), "ROLLBACK")
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	d.say("%sSQL   ROLLBACK;", indent)
	if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
		return fmt.Errorf("ROLLBACK: %w", err)
	}
	// A committed logical decoding message after the ROLLBACK is a marker
	// in the WAL: once the slot's confirmed position passed it, the engine
	// has read (and skipped) the rolled-back transaction.
	var s string
	if err := d.db.QueryRow(ctx, `SELECT pg_logical_emit_message(true, 'cdcinvalidate-demo', 'after the rollback')::text`).Scan(&s); err != nil {
		return fmt.Errorf("pg_logical_emit_message: %w", err)
	}
	marker, err := pglogrepl.ParseLSN(s)
	if err != nil {
		return err
	}
	start := time.Now()
	confirmed, err := d.waitConfirmed(ctx, marker, stepTimeout)
	if err != nil {
		return err
	}
	d.say("%s      a marker written after the ROLLBACK (pg_logical_emit_message, at %s) was confirmed by the slot",
		indent, marker)
	d.say("%s      %d ms later (confirmed_flush_lsn %s): the engine read past the ROLLBACK and deleted nothing",
		indent, time.Since(start).Milliseconds(), confirmed)
	return d.finish(ctx, st)
}

// psqlStep runs one statement through the psql command line, as any other
// program would: no cache code anywhere.
func (d *demo) psqlStep(ctx context.Context, sql string, expect ...string) error {
	psql := filepath.Join(d.pg.BinDir(), "psql")
	if _, err := os.Stat(psql); err != nil {
		if psql, err = exec.LookPath("psql"); err != nil {
			d.say("%s(psql not found; running the statement through the demo's own connection instead)", indent)
			return d.sqlStep(ctx, sql, expect...)
		}
	}
	st, err := d.begin(expect)
	if err != nil {
		return err
	}
	dsn := d.pg.DSN("postgres")
	d.say("%s$ psql '%s' -c \"%s\"", indent, dsn, sql)
	cmd := exec.CommandContext(ctx, psql, "-X", "-v", "ON_ERROR_STOP=1", "-c", sql, dsn)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=5")
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			d.say("%spsql | %s", indent, line)
		}
	}
	if err != nil {
		return fmt.Errorf("psql: %w", err)
	}
	d.committed(ctx, st, time.Now())
	return d.finish(ctx, st)
}

// ---- positions -------------------------------------------------------------

func (d *demo) currentLSN(ctx context.Context) (pglogrepl.LSN, error) {
	var s string
	if err := d.db.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		return 0, fmt.Errorf("pg_current_wal_lsn: %w", err)
	}
	return pglogrepl.ParseLSN(s)
}

func (d *demo) slot(ctx context.Context) (pglogrepl.LSN, bool, error) {
	var s *string
	var active bool
	err := d.db.QueryRow(ctx, `SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1`, slotName).Scan(&s, &active)
	if err != nil {
		return 0, false, fmt.Errorf("read slot %q: %w", slotName, err)
	}
	if s == nil {
		return 0, active, nil
	}
	lsn, err := pglogrepl.ParseLSN(*s)
	return lsn, active, err
}

// waitConfirmed waits until the slot's confirmed_flush_lsn reaches target.
func (d *demo) waitConfirmed(ctx context.Context, target pglogrepl.LSN, within time.Duration) (pglogrepl.LSN, error) {
	deadline := time.Now().Add(within)
	for {
		confirmed, _, err := d.slot(ctx)
		if err != nil {
			return 0, err
		}
		if confirmed >= target {
			return confirmed, nil
		}
		if time.Now().After(deadline) {
			return confirmed, fmt.Errorf("slot %q confirmed_flush_lsn is %s, still below %s after %s", slotName, confirmed, target, within)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (d *demo) showPositions(ctx context.Context, title string) error {
	d.say("")
	d.say("== %s", title)
	target, err := d.currentLSN(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	confirmed, err := d.waitConfirmed(ctx, target, stepTimeout)
	if err != nil {
		return err
	}
	d.say("%spg_current_wal_lsn   %s   (end of the WAL when asked)", indent, target)
	d.say("%sconfirmed_flush_lsn  %s   (what the engine confirmed, %d ms later: Redis acknowledged every delete before it)",
		indent, confirmed, time.Since(start).Milliseconds())
	return nil
}

// explore keeps everything running until Ctrl-C.
func (d *demo) explore(ctx context.Context) {
	psql := filepath.Join(d.pg.BinDir(), "psql")
	if _, err := exec.LookPath("psql"); err == nil {
		psql = "psql"
	}
	dsn := d.pg.DSN("postgres")
	d.say("")
	d.say("== Everything keeps running until Ctrl-C (--keep). In another terminal:")
	d.say("%s%s '%s'", indent, psql, dsn)
	d.say("%sredis-cli -p %d", indent, d.rd.Port())
	d.say("%sfor example:", indent)
	d.say("%s  redis-cli -p %d SET user:1 cached", indent, d.rd.Port())
	d.say("%s  %s '%s' -c \"UPDATE users SET name = 'Zoe' WHERE id = 1\"", indent, psql, dsn)
	d.say("%sInvalidations are printed here as they happen; the engine log too.", indent)
	select {
	case <-ctx.Done():
	case <-d.eng.done:
	}
}
