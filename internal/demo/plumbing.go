package main

// The plumbing: servers, the engine process, invalidation events, and
// waiting for each step's effects.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// setUp starts the servers, creates the sample schema and rows, subscribes
// to Redis keyspace notifications, and builds the engine meanwhile; it
// returns the engine binary's path.
func (d *demo) setUp(ctx context.Context) (string, error) {
	root, err := harness.ModuleRoot()
	if err != nil {
		return "", err
	}
	d.root = root
	schema, err := os.ReadFile(filepath.Join(root, "examples", "schema.sql"))
	if err != nil {
		return "", fmt.Errorf("read the sample schema: %w", err)
	}
	d.cached = map[string]bool{}

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
		return "", err
	}
	v := d.pg.ServerVersionNum()
	d.say("%spostgres  %d.%d on 127.0.0.1:%d (wal_level=logical, throwaway data dir)", indent, v/10000, v%10000, d.pg.Port())
	d.rd, err = harness.StartRedis(ctx, harness.RedisOptions{})
	if err != nil {
		return "", err
	}
	d.say("%sredis     on %s (no persistence)", indent, d.rd.Addr())

	d.db, err = pgxpool.New(ctx, d.pg.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("connect to postgres: %w", err)
	}
	if _, err := d.db.Exec(ctx, string(schema)); err != nil {
		return "", fmt.Errorf("create the sample schema from examples/schema.sql: %w", err)
	}
	d.say("%sschema    examples/schema.sql: users(id, email, name), orders(id, user_id, total), REPLICA IDENTITY FULL", indent)
	const seed = `INSERT INTO users (id, email, name) VALUES (1, 'ann@example.com', 'Ann'), (2, 'bob@example.com', 'Bob');
INSERT INTO orders (id, user_id, total) VALUES (100, 1, 25.00), (101, 2, 12.50);`
	if _, err := d.db.Exec(ctx, seed); err != nil {
		return "", fmt.Errorf("insert the sample rows: %w", err)
	}
	d.say("%srows      users 1 Ann, 2 Bob; orders 100 (Ann), 101 (Bob)", indent)

	d.rdb = redis.NewClient(&redis.Options{Addr: d.rd.Addr()})
	if err := d.rdb.ConfigSet(ctx, "notify-keyspace-events", "Kg").Err(); err != nil {
		return "", fmt.Errorf("enable keyspace notifications: %w", err)
	}
	d.sub = d.rdb.PSubscribe(ctx, "__keyspace@0__:*")
	if _, err := d.sub.Receive(ctx); err != nil {
		return "", fmt.Errorf("subscribe to keyspace notifications: %w", err)
	}
	d.say("%swatching  Redis keyspace notifications (CONFIG SET notify-keyspace-events Kg; PSUBSCRIBE __keyspace@0__:*)", indent)
	d.printed = make(chan struct{})
	go d.printEvents(timestamp(d.sub.Channel(redis.WithChannelSize(1000))))

	b := <-buildDone
	buildDone <- b // for the deferred read
	return b.bin, b.err
}

// buildEngine builds the engine binary through the harness (go build -o
// TMP/cdcinvalidate ./cmd/cdcinvalidate); cleanup removes it.
func (d *demo) buildEngine(ctx context.Context) (string, error) {
	start := time.Now()
	bin, err := harness.BuildEngineBinary(ctx, "")
	if err != nil {
		return "", err
	}
	d.binDir = filepath.Dir(bin)
	d.say("%sengine    built with: go build -o %s ./cmd/cdcinvalidate (%.1f s)", indent, bin, time.Since(start).Seconds())
	return bin, nil
}

func (d *demo) startEngine(ctx context.Context, bin string) error {
	dsn := d.pg.DSN("postgres")
	d.say("")
	d.say("== Starting the engine with the repository's rules.yaml; the environment overrides its dsn and addr")
	d.say("%s$ CDC_POSTGRES_DSN='%s' CDC_REDIS_ADDR=%s \\", indent, dsn, d.rd.Addr())
	d.say("%s    %s run --config rules.yaml --log-format console", indent, bin)
	d.say("%s(engine log lines are prefixed with \"engine | \")", indent)

	// Its own process group: a Ctrl-C in the terminal reaches the demo,
	// which stops the engine itself with SIGTERM. The environment has no
	// CDC_* of the caller's: only the two below.
	e, err := harness.StartProcess(harness.Command{
		Name:            "the engine",
		Path:            bin,
		Args:            []string{"run", "--config", "rules.yaml", "--log-format", "console"},
		Env:             harness.WithoutCDCEnv(nil, "CDC_POSTGRES_DSN="+dsn, "CDC_REDIS_ADDR="+d.rd.Addr()),
		Dir:             d.root,
		OutputLimit:     1 << 20,
		Line:            func(line string) { d.say("engine | %s", line) },
		OwnProcessGroup: true,
	})
	if err != nil {
		return err
	}
	d.eng = e

	// Changes committed before the slot exists are not part of its history,
	// and the first start flushes the managed keys: wait until the engine
	// streams.
	err = harness.WaitStreaming(ctx, d.db, slotName, 60*time.Second, func() error {
		if e.Running() {
			return nil
		}
		return fmt.Errorf("the engine exited with status %d before it started streaming (its log is above)", e.ExitCode())
	})
	if err != nil {
		return err
	}
	d.say("%sslot %q is active: the engine streams", indent, slotName)
	return nil
}

// stopEngine sends SIGTERM and checks the engine exits 0 and confirmed its position.
func (d *demo) stopEngine() error {
	e := d.eng
	if e == nil || !e.Running() {
		if e != nil {
			return fmt.Errorf("the engine exited on its own with status %d (its log is above)", e.ExitCode())
		}
		return nil
	}
	d.say("")
	d.say("== Stopping the engine with SIGTERM (kill -TERM %d)", e.Pid())
	sent := time.Now()
	if err := e.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	if err := e.WaitExit(engineStopMax); err != nil {
		return fmt.Errorf("the engine did not exit within %s of SIGTERM", engineStopMax)
	}
	took := e.ExitedAt().Sub(sent)
	if code := e.ExitCode(); code != 0 {
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
	if d.eng != nil {
		_ = d.eng.Stop(engineStopMax) // SIGTERM, then SIGKILL
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

func (d *demo) currentLSN(ctx context.Context) (pglogrepl.LSN, error) {
	return harness.QueryLSN(ctx, d.db, `SELECT pg_current_wal_lsn()::text`)
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

// waitConfirmed waits until the slot's confirmed_flush_lsn reaches target
// and returns it and how long that took.
func (d *demo) waitConfirmed(ctx context.Context, target pglogrepl.LSN, within time.Duration) (pglogrepl.LSN, time.Duration, error) {
	start := time.Now()
	var confirmed pglogrepl.LSN
	err := harness.Poll(ctx, within, func() (bool, error) {
		c, _, err := d.slot(ctx)
		confirmed = c
		return c >= target, err
	})
	if errors.Is(err, harness.ErrPollTimeout) {
		err = fmt.Errorf("slot %q confirmed_flush_lsn is %s, still below %s after %s", slotName, confirmed, target, within)
	}
	return confirmed, time.Since(start), err
}
