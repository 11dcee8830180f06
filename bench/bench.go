package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// Names of everything the bench creates. With given servers these are
// dropped before (left-overs of an interrupted run) and after the run.
const (
	table       = "cdcbench_items"
	publication = "cdcbench_pub"
	engineSlot  = "cdcbench_engine"
	recvSlot    = "cdcbench_recv"
	keyPrefix   = "item:" // the rule: cdcbench_items -> item:{id}
)

// pollEvery is how often the slot's confirmed_flush_lsn is read.
const pollEvery = 10 * time.Millisecond

// consumerTimeout bounds one consumer run (engine or pg_recvlogical).
const consumerTimeout = 30 * time.Minute

// Command runs the bench with opts and writes the report to stdout (a
// table, or JSON with opts.JSON) and progress and errors to stderr. It
// returns the exit status: 0 when every measurement completed, 1 when one
// failed or the report holds problems (lost invalidations), 2 for bad
// options or a missing pg_recvlogical.
func Command(ctx context.Context, opts Options, stdout, stderr io.Writer) int {
	if err := opts.Validate(); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(stderr, "cdcinvalidate bench: %s\n", line)
		}
		return 2
	}
	rep, err := Run(ctx, opts, stderr)
	if rep != nil && (err == nil || len(rep.CatchUp)+len(rep.Latency) > 0 || rep.Memory != nil) {
		var werr error
		if opts.JSON {
			werr = rep.WriteJSON(stdout)
		} else {
			werr = rep.WriteTable(stdout)
		}
		if werr != nil {
			fmt.Fprintf(stderr, "cdcinvalidate bench: write report: %v\n", werr)
			return 1
		}
	}
	switch {
	case errors.Is(err, ErrNoPgRecvLogical):
		fmt.Fprintf(stderr, "cdcinvalidate bench: %v\n", err)
		return 2
	case err != nil && ctx.Err() != nil:
		fmt.Fprintln(stderr, "cdcinvalidate bench: interrupted; what it created was cleaned up")
		return 1
	case err != nil:
		fmt.Fprintf(stderr, "cdcinvalidate bench: %v\n", err)
		return 1
	case len(rep.Problems) > 0:
		fmt.Fprintf(stderr, "cdcinvalidate bench: %d problem(s), see the report\n", len(rep.Problems))
		return 1
	}
	return 0
}

// Run runs the measurements opts selects and returns the report. After an
// error it returns what was measured so far with the error. Progress goes
// to stderr when it is a terminal or opts.Progress is set; warnings (e.g.
// a slot that could not be dropped) always do.
func Run(ctx context.Context, opts Options, stderr io.Writer) (*Report, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	b := &bench{opts: opts, stderr: stderr, cur: opts.reference()}
	tty := false
	if f, ok := stderr.(*os.File); ok {
		tty = isTerminal(f)
	}
	if opts.Progress || tty {
		b.prog = newProgress(stderr, tty)
	}
	rates := make([]string, len(opts.Rates))
	for i, r := range opts.Rates {
		rates[i] = r.String()
	}
	rep := &Report{
		Started: time.Now(),
		Settings: Settings{
			Rows: opts.Rows, Batch: opts.Batch, Repeat: opts.Repeat, Rates: rates,
			DurationSeconds: opts.Duration.Seconds(), MaxConns: opts.MaxConns, BigRows: opts.BigRows, Instances: opts.Instances,
			Variants: opts.variantSettings(),
		},
	}
	load := loadAverage()
	defer func() {
		b.prog.Step("cleaning up")
		b.cleanup()
		b.prog.Close()
		if load >= 0 {
			rep.Environment.LoadAverage = [2]float64{load, max(loadAverage(), 0)}
		}
	}()
	if err := b.setup(ctx, rep); err != nil {
		return rep, err
	}
	if opts.has(PhaseCatchUp) {
		for _, w := range b.workloads() {
			c, err := b.catchUp(ctx, w)
			if c != nil && len(c.Runs) > 0 {
				rep.CatchUp = append(rep.CatchUp, *c)
				for _, run := range c.Runs {
					for _, p := range run.Problems {
						rep.Problems = append(rep.Problems, fmt.Sprintf("catch-up %s: %s", w.name, p))
					}
					if run.Flushed {
						rep.Problems = append(rep.Problems, fmt.Sprintf("catch-up %s: the engine deleted %s0, which no row maps to: it flushed the managed keys, so the run did not measure deletes alone", w.name, keyPrefix))
					}
				}
			}
			if err != nil {
				return rep, fmt.Errorf("catch-up %s: %w", w.name, err)
			}
		}
		compareVariants(rep.CatchUp)
		if err := b.runInstances(ctx, rep); err != nil {
			return rep, err
		}
	}
	if opts.has(PhaseLatency) {
		ls, err := b.latency(ctx)
		rep.Latency = ls
		for _, l := range ls {
			if l.Lost > 0 {
				rep.Problems = append(rep.Problems, fmt.Sprintf("latency at %s: %d of %d writes were not seen invalidated within %s", l.Rate, l.Lost, l.Writes, lostAfter))
			}
		}
		if err != nil {
			return rep, fmt.Errorf("latency: %w", err)
		}
	}
	if opts.has(PhaseMemory) {
		m, err := b.memory(ctx)
		rep.Memory = m
		if err != nil {
			return rep, fmt.Errorf("memory: %w", err)
		}
	}
	return rep, nil
}

// bench is the state of one run.
type bench struct {
	opts   Options
	stderr io.Writer
	prog   *progress

	pg        *harness.Postgres // nil with given servers
	rd        *harness.Redis
	throwaway bool
	dsn       string
	redisAddr string
	version   int

	db  *pgxpool.Pool
	mon *pgx.Conn // polls the slots
	// rdb is the bench's own client: never through the delay proxy.
	rdb redis.UniversalClient

	topo topo // cluster, sentinel, replicas, delay proxy

	engineBin  string
	recvBin    string
	pluginOpts []string // pgoutput options as name=value
	tmp        string

	mu          sync.Mutex
	children    []*harness.Process
	keyspaceOld *string  // notify-keyspace-events to restore
	keysSet     int      // keys item:0..keysSet may have been set
	watermarks  []string // watermark keys set
	maxFanout   int      // keys item:N:1..item:N:(maxFanout-1) may have been set
	usedActions bool     // version, refresh, stream, generation keys may have been set

	cur variant // the rules of the engines started now (workload_options.go)
}

func (b *bench) warn(format string, args ...any) {
	fmt.Fprintf(b.stderr, "cdcinvalidate bench: warning: "+format+"\n", args...)
}

func (b *bench) setup(ctx context.Context, rep *Report) error {
	var err error
	b.engineBin = b.opts.Engine
	if b.engineBin == "" {
		if b.engineBin, err = os.Executable(); err != nil {
			return fmt.Errorf("find this executable to run as the engine: %w (name it with --engine)", err)
		}
	} else if b.engineBin, err = exec.LookPath(b.engineBin); err != nil {
		return fmt.Errorf("--engine: %w", err)
	}
	// Look for pg_recvlogical before anything starts, to fail fast.
	if b.recvBin, err = findPgRecvLogical(b.opts.PgRecvLogical); err != nil {
		return err
	}
	if b.tmp, err = os.MkdirTemp("", "cdcbench-*"); err != nil {
		return err
	}

	if b.opts.PostgresDSN == "" {
		b.prog.Step("starting a throwaway PostgreSQL and Redis")
		b.throwaway = true
		if b.pg, err = harness.StartPostgres(ctx, harness.PostgresOptions{}); err != nil {
			return err
		}
		if err := b.startRedis(ctx); err != nil {
			return err
		}
		b.dsn = b.pg.DSN("postgres")
		if b.opts.PgRecvLogical == "" {
			// The client of the server's own version, when it is there.
			if p, err := findPgRecvLogical("", b.pg.BinDir()); err == nil {
				b.recvBin = p
			}
		}
	} else {
		b.dsn = b.opts.PostgresDSN
		b.givenRedis()
	}

	b.prog.Step("connecting")
	if b.db, err = pgxpool.New(ctx, b.dsn); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if b.mon, err = pgx.Connect(ctx, b.dsn); err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	var walLevel, pgVersion string
	if err := b.db.QueryRow(ctx, "SELECT current_setting('wal_level'), current_setting('server_version'), current_setting('server_version_num')::int").Scan(&walLevel, &pgVersion, &b.version); err != nil {
		return fmt.Errorf("postgres: read settings: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("postgres runs with wal_level=%s; the bench needs wal_level=logical", walLevel)
	}
	if err := b.connectRedis(ctx); err != nil {
		return err
	}
	rep.Settings.Redis = b.redisSettings()
	info, err := b.rdb.Info(ctx, "server").Result()
	if err != nil {
		return fmt.Errorf("redis at %s: %w", b.redisAddr, err)
	}

	// The pgoutput options the engine asks for (replication/stream.go),
	// given to pg_recvlogical too so both read the same stream.
	if b.version >= 140000 {
		b.pluginOpts = []string{"proto_version=2", "publication_names=" + publication, "messages=true", "streaming=on"}
	} else {
		b.pluginOpts = []string{"proto_version=1", "publication_names=" + publication}
	}

	rep.Environment = Environment{
		EngineBinary: b.engineBin, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH,
		CPUs: runtime.NumCPU(), Postgres: pgVersion, Redis: infoField(info, "redis_version"),
		Throwaway: b.throwaway, PgRecvLogical: b.recvBin, PluginOptions: b.pluginOpts,
	}

	b.prog.Step("creating %s with %s rows and publication %s", table, thousands(int64(b.opts.Rows)), publication)
	if err := b.dropLeftovers(ctx); err != nil {
		return err
	}
	for _, sql := range b.setupSQL() {
		if _, err := b.db.Exec(ctx, sql); err != nil {
			return fmt.Errorf("postgres: %s: %w", firstWords(sql), err)
		}
	}
	return b.setupInstances(ctx)
}

// redisCounters are Redis's totals from INFO; ok is false when unread.
type redisCounters struct {
	ok       bool
	commands int64
	cpu      float64 // used_cpu_user + used_cpu_sys, seconds
}

func (b *bench) redisStats(ctx context.Context) redisCounters {
	if b.isCluster() {
		return b.clusterRedisCounters(ctx)
	}
	info, err := b.rdb.Info(ctx, "stats", "cpu").Result()
	if err != nil {
		return redisCounters{}
	}
	return parseRedisCounters(info)
}

func parseRedisCounters(info string) redisCounters {
	cmds, err1 := strconv.ParseInt(infoField(info, "total_commands_processed"), 10, 64)
	user, err2 := strconv.ParseFloat(infoField(info, "used_cpu_user"), 64)
	sys, err3 := strconv.ParseFloat(infoField(info, "used_cpu_sys"), 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return redisCounters{}
	}
	return redisCounters{ok: true, commands: cmds, cpu: user + sys}
}

// since returns the commands and CPU seconds from earlier to c, minus the
// INFO command that read c; -1 when either is unknown.
func (c redisCounters) since(earlier redisCounters) (int64, float64) {
	if !c.ok || !earlier.ok {
		return -1, -1
	}
	return c.commands - earlier.commands - 1, c.cpu - earlier.cpu
}

// loadAverage is the 1-minute load average, -1 when unknown.
func loadAverage() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// vacuum removes the dead rows of earlier updates before a measurement.
// Autovacuum is off for the bench table, so that it does not start in the
// middle of one and compete for the CPUs.
func (b *bench) vacuum(ctx context.Context) error {
	if _, err := b.db.Exec(ctx, `VACUUM `+strings.Join(b.tables(), ", ")); err != nil {
		return fmt.Errorf("postgres: VACUUM %s: %w", table, err)
	}
	return nil
}

func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return "?"
}

func firstWords(sql string) string {
	f := strings.Fields(sql)
	return strings.Join(f[:min(len(f), 3)], " ")
}

// dropLeftovers removes what an interrupted earlier run left behind.
func (b *bench) dropLeftovers(ctx context.Context) error {
	if err := b.dropInstances(ctx); err != nil {
		return err
	}
	for _, s := range []string{engineSlot, recvSlot} {
		if err := b.dropSlot(ctx, s); err != nil {
			return err
		}
	}
	for _, sql := range []string{`DROP PUBLICATION IF EXISTS ` + publication, `DROP TABLE IF EXISTS ` + table, dropMultiTablesSQL} {
		if _, err := b.db.Exec(ctx, sql); err != nil {
			return fmt.Errorf("postgres: %s: %w", firstWords(sql), err)
		}
	}
	return nil
}

// dropSlot drops a slot if it exists. A slot still active for a consumer
// that is exiting is waited for (up to 10 s).
func (b *bench) dropSlot(ctx context.Context, slot string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := b.db.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot)
		if err == nil {
			return nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" && time.Now().Before(deadline) { // object in use
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		return fmt.Errorf("drop slot %s: %w", slot, err)
	}
}

func (b *bench) createSlot(ctx context.Context, slot string) (pglogrepl.LSN, error) {
	if err := b.dropSlot(ctx, slot); err != nil {
		return 0, err
	}
	var lsn string
	if err := b.db.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, slot).Scan(&lsn); err != nil {
		return 0, fmt.Errorf("create slot %s: %w", slot, err)
	}
	return pglogrepl.ParseLSN(lsn)
}

// slotState is a slot as pg_replication_slots shows it.
type slotState struct {
	confirmed pglogrepl.LSN
	activePID int
}

func (b *bench) readSlot(ctx context.Context, slot string) (slotState, error) {
	var st slotState
	var confirmed *string
	err := b.mon.QueryRow(ctx, `SELECT confirmed_flush_lsn::text, coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&confirmed, &st.activePID)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, fmt.Errorf("slot %s is gone", slot)
	}
	if err != nil {
		return st, fmt.Errorf("read slot %s: %w", slot, err)
	}
	if confirmed != nil {
		if st.confirmed, err = pglogrepl.ParseLSN(*confirmed); err != nil {
			return st, err
		}
	}
	return st, nil
}

// flushedEnd waits until everything written so far is flushed (commits
// made with synchronous_commit off are flushed by the WAL writer within
// a few wal_writer_delay; walsenders decode only flushed WAL) and returns
// pg_current_wal_lsn(), which then covers every commit before the call.
// (A synchronous commit of an otherwise empty transaction would not do: a
// transaction that wrote no WAL besides its commit record commits
// asynchronously.)
func (b *bench) flushedEnd(ctx context.Context, conn *pgx.Conn) (pglogrepl.LSN, error) {
	var insert pglogrepl.LSN
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()`).Scan(&insert); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var flush, write pglogrepl.LSN
		if err := conn.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn(), pg_current_wal_lsn()`).Scan(&flush, &write); err != nil {
			return 0, err
		}
		if flush >= insert {
			return write, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("WAL up to %s not flushed after a minute (flushed: %s)", insert, flush)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// engineConfig writes the engine's configuration for slot and returns its
// path. The DSN goes through the environment (childEnv), not the file.
func (b *bench) engineConfig(slot, metricsListen string) (string, error) {
	var s strings.Builder
	q := func(v string) string { j, _ := json.Marshal(v); return string(j) } // a JSON string is a YAML scalar
	fmt.Fprintf(&s, "# written by cdcinvalidate bench\npostgres:\n  slot: %s\n  publication: %s\n", slot, publication)
	fmt.Fprintf(&s, "redis:\n%s", b.engineRedisYAML())
	if metricsListen != "" {
		fmt.Fprintf(&s, "metrics:\n  listen: %s\n  pprof: true\n", q(metricsListen))
	}
	fmt.Fprintf(&s, "log:\n  level: warn\n  format: console\n")
	s.WriteString(verifyYAML(b.cur.verify))
	if b.opts.Wide {
		fmt.Fprintf(&s, "rules:\n  - table: %s\n    keys: [\"%s{id}\"]\n    actions: [refresh]\n    refresh_ttl: 1h\n", table, keyPrefix)
	} else {
		s.WriteString(b.cur.rulesYAML())
	}
	path := fmt.Sprintf("%s/engine-%s.yaml", b.tmp, slot)
	if err := os.WriteFile(path, []byte(s.String()), 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// childEnv is the environment of the engine: the bench's own without
// CDC_* (which would override the file), plus the DSN, and the Redis
// credentials the bench itself uses.
func (b *bench) childEnv() []string {
	return harness.WithoutCDCEnv([]string{"CDC_REDIS_USERNAME", "CDC_REDIS_PASSWORD"}, "CDC_POSTGRES_DSN="+b.dsn)
}

// startEngine starts the engine on slot, which the bench created at
// created; metricsListen "" serves no metrics.
//
// An engine that finds an existing slot trusts the cached keys only if
// its watermark key (config.WatermarkKey) is at or above the slot's
// position; otherwise it flushes every key its rules manage before it
// streams (engine/history.go). The bench created the slot and filled the
// keys itself, so it first writes the watermark an engine that had
// created the slot would have written: the deletes being measured then
// find the prefilled keys, and with given servers no other item:* key is
// touched.
func (b *bench) startEngine(ctx context.Context, slot string, created pglogrepl.LSN, metricsListen string) (*harness.Process, error) {
	cfg, err := b.engineConfig(slot, metricsListen)
	if err != nil {
		return nil, err
	}
	if err := b.seedWatermarks(ctx, slot, created); err != nil {
		return nil, err
	}
	c, err := startChild("engine", b.engineBin, []string{"run", "--config", cfg}, b.childEnv())
	if err != nil {
		return nil, err
	}
	b.track(c)
	return c, nil
}

// seedWatermarks writes the watermark (and the per-master ones on a
// cluster) an engine that had created slot at created would have written,
// and deletes its record of managed patterns: without a record the engine
// starts one; with the record of a run with other rules (a variant of
// workload_options.go) it would flush the new patterns, the prefilled keys
// among them. Both keys are removed at the end of the run.
func (b *bench) seedWatermarks(ctx context.Context, slot string, created pglogrepl.LSN) error {
	key := watermarkKey(slot)
	if key == "" {
		return nil
	}
	b.mu.Lock()
	b.watermarks = append(b.watermarks, key, managedKey(slot))
	b.mu.Unlock()
	if err := b.rdb.Set(ctx, key, created.String(), 0).Err(); err != nil {
		return fmt.Errorf("redis: set the engine's watermark %s: %w", key, err)
	}
	if err := b.setShardWatermarks(ctx, key, created); err != nil {
		return err
	}
	if err := b.rdb.Unlink(ctx, managedKey(slot)).Err(); err != nil {
		return fmt.Errorf("redis: delete the engine's record of managed patterns: %w", err)
	}
	return nil
}

// watermarkKey is the engine's watermark key for slot with the bench's
// configuration (the default sink.watermark), "" when it keeps none.
func watermarkKey(slot string) string {
	cfg := config.Config{Postgres: config.Postgres{Slot: slot}}
	return cfg.WatermarkKey()
}

// managedKey is the engine's record of its managed patterns for slot.
func managedKey(slot string) string {
	cfg := config.Config{Postgres: config.Postgres{Slot: slot}}
	return cfg.ManagedKey()
}

func (b *bench) track(c *harness.Process) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.children = append(b.children, c)
}

// waitActive waits until a consumer streams from slot and returns the
// walsender's PID.
func (b *bench) waitActive(ctx context.Context, c *harness.Process, slot string) (int, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := b.readSlot(ctx, slot)
		if err != nil {
			return 0, err
		}
		if st.activePID != 0 {
			return st.activePID, nil
		}
		if !c.Running() {
			return 0, exitedUnexpectedly(c)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s not streaming from slot %s after 2 minutes; its output:\n%s", c.Name(), slot, outputOf(c))
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// setKeys sets the keys item:from..item:to, as cache-aside reads would.
func (b *bench) setKeys(ctx context.Context, from, to int) error {
	b.mu.Lock()
	b.keysSet = max(b.keysSet, to, 1)
	b.mu.Unlock()
	const chunk = 5000
	for lo := from; lo <= to; lo += chunk {
		pipe := b.rdb.Pipeline()
		for i := lo; i <= min(lo+chunk-1, to); i++ {
			pipe.Set(ctx, keyPrefix+strconv.Itoa(i), "cached", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("redis: set keys: %w", err)
		}
	}
	return nil
}

// countKeys counts which of item:from..item:to exist.
func (b *bench) countKeys(ctx context.Context, from, to int) (int, error) {
	const chunk = 1000
	pipe := b.rdb.Pipeline()
	var cmds []*redis.IntCmd
	for lo := from; lo <= to; lo += chunk {
		keys := make([]string, 0, chunk)
		for i := lo; i <= min(lo+chunk-1, to); i++ {
			keys = append(keys, keyPrefix+strconv.Itoa(i))
		}
		cmds = append(cmds, b.existsCmds(ctx, pipe, keys)...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("redis: count keys: %w", err)
	}
	n := 0
	for _, c := range cmds {
		n += int(c.Val())
	}
	return n, nil
}

// cleanup stops what still runs and removes what the bench created. It
// uses its own context: it also runs after an interrupt.
func (b *bench) cleanup() {
	b.mu.Lock()
	children := b.children
	b.children = nil
	b.mu.Unlock()
	for _, c := range children {
		stopChild(c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if b.rdb != nil {
		b.restoreKeyspace(ctx)
		b.cleanupVariantKeys(ctx)
		if !b.throwaway && b.keysSet > 0 {
			if err := b.deleteKeys(ctx, 0, b.keysSet); err != nil {
				b.warn("could not delete the bench's keys %s0..%s%d: %v", keyPrefix, keyPrefix, b.keysSet, err)
			}
		}
		if !b.throwaway && len(b.watermarks) > 0 {
			pipe := b.rdb.Pipeline()
			b.unlinkCmds(ctx, pipe, b.watermarks)
			if _, err := pipe.Exec(ctx); err != nil {
				b.warn("could not delete the engine's watermark key %s: %v", b.watermarks[0], err)
			}
		}
		_ = b.rdb.Close()
	}
	if b.db != nil {
		if !b.throwaway {
			if err := b.dropInstances(ctx); err != nil {
				b.warn("%v; drop the cdcbench_* slots, publications and tables yourself", err)
			}
			for _, s := range []string{engineSlot, recvSlot} {
				if err := b.dropSlot(ctx, s); err != nil {
					b.warn("%v; drop it yourself, or it keeps WAL on the server: SELECT pg_drop_replication_slot('%s')", err, s)
				}
			}
			for _, sql := range []string{`DROP PUBLICATION IF EXISTS ` + publication, `DROP TABLE IF EXISTS ` + table, dropMultiTablesSQL} {
				if _, err := b.db.Exec(ctx, sql); err != nil {
					b.warn("%s: %v", firstWords(sql), err)
				}
			}
		}
		b.db.Close()
	}
	if b.mon != nil {
		_ = b.mon.Close(ctx)
	}
	b.closeTopology()
	if b.rd != nil {
		if err := b.rd.Close(); err != nil {
			b.warn("%v", err)
		}
	}
	if b.pg != nil {
		if err := b.pg.Close(); err != nil {
			b.warn("%v", err)
		}
	}
	if b.tmp != "" {
		_ = os.RemoveAll(b.tmp)
	}
}

func (b *bench) deleteKeys(ctx context.Context, from, to int) error {
	const chunk = 1000
	pipe := b.rdb.Pipeline()
	for lo := from; lo <= to; lo += chunk {
		keys := make([]string, 0, chunk)
		for i := lo; i <= min(lo+chunk-1, to); i++ {
			keys = append(keys, keyPrefix+strconv.Itoa(i))
		}
		b.unlinkCmds(ctx, pipe, keys)
	}
	_, err := pipe.Exec(ctx)
	return err
}
