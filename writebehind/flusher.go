package writebehind

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/internal/failpoint"
	"github.com/cdcinvalidate/cdcinvalidate/internal/retry"
)

// Defaults of FlusherOptions.
const (
	DefaultGroup        = "writebehind"
	DefaultOffsetsTable = "writebehind_offsets"
	DefaultWindow       = 200 * time.Millisecond
	DefaultMaxEntries   = 5000
	DefaultMaxRows      = 10_000
	DefaultMaxBytes     = 8 << 20
	DefaultRetryMin     = 100 * time.Millisecond
	DefaultRetryMax     = 5 * time.Second
	DefaultStandbyPoll  = time.Second
	maxReadBlock        = time.Second
	claimCount          = 1000
)

// OffsetsDDL creates the idempotency table the flusher needs (the flusher
// runs it itself when its role may; otherwise run it once as the owner,
// replacing the name if FlusherOptions.OffsetsTable is set).
const OffsetsDDL = `CREATE TABLE IF NOT EXISTS writebehind_offsets (
  stream     text NOT NULL,
  grp        text NOT NULL,
  last_id    text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (stream, grp)
)`

// FlusherOptions configures a Flusher. A zero field takes the default its
// comment states.
type FlusherOptions struct {
	// DSN is the PostgreSQL connection string of a role that may INSERT
	// and UPDATE the mapped tables and the offsets table. Required.
	DSN string
	// Stream is the writers' WriterOptions.Stream. Default "writebehind".
	Stream string
	// Group is the consumer group. Default "writebehind". One flusher per
	// (Stream, Group) applies at a time (see the package documentation).
	Group string
	// Consumer is this flusher's consumer name in the group. Default
	// hostname-pid-random, so a restarted process claims its predecessor's
	// pending entries as a dead consumer's.
	Consumer string
	// OffsetsTable holds the last applied entry per (stream, group).
	// Default "writebehind_offsets" (created if absent; see OffsetsDDL).
	OffsetsTable string
	// Window is how long entries are gathered before they are applied in
	// one transaction (counted from the window's first entry). Default
	// 200ms.
	Window time.Duration
	// MaxEntries closes a window early when it holds this many entries.
	// Default 5000.
	MaxEntries int
	// MaxRows closes a window early when it holds this many distinct keys
	// (each key is at most one row, so at most this many upserts in its
	// transaction). Default 10,000. An entry is never split: a window
	// holds at least one entry, so one Apply of MaxBatch keys can exceed
	// a smaller bound.
	MaxRows int
	// MaxBytes closes a window early when its keys and values add up to
	// this many bytes, bounding the transaction's size and the flusher's
	// memory. Default 8 MiB.
	MaxBytes int
	// RetryMin and RetryMax bound the pause (doubling) between attempts
	// after PostgreSQL or Redis failed. Defaults 100ms and 5s.
	RetryMin, RetryMax time.Duration
	// StandbyPoll is how often a flusher that does not hold the stream's
	// lock (another one applies) tries again. Default 1s.
	StandbyPoll time.Duration
	// OnWindow, if set, is called after each window committed (on the
	// flusher's goroutine: keep it short). Default: none.
	OnWindow func(WindowStats)
	// Registerer, if set, gets the flusher's metrics
	// (cdcinvalidate_writebehind_*).
	Registerer prometheus.Registerer
	// Logger receives failures, retries and takeovers. Default: no logging.
	Logger *zap.Logger
}

func (o *FlusherOptions) fill() error {
	var c optChecker
	if o.DSN == "" {
		c.bad("DSN is required: the PostgreSQL connection string the flusher writes with")
	}
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&o.Stream, DefaultStream)
	def(&o.Group, DefaultGroup)
	def(&o.OffsetsTable, DefaultOffsetsTable)
	if o.Consumer == "" {
		host, _ := os.Hostname()
		o.Consumer = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), rand.Text()[:8])
	}
	parts := strings.Split(o.OffsetsTable, ".")
	if len(parts) > 2 || !isIdent(parts[0]) || (len(parts) == 2 && !isIdent(parts[1])) {
		c.bad("OffsetsTable %q must be table or schema.table (unquoted identifiers)", o.OffsetsTable)
	}
	c.duration("Window", &o.Window, DefaultWindow)
	c.duration("RetryMin", &o.RetryMin, DefaultRetryMin)
	c.duration("RetryMax", &o.RetryMax, DefaultRetryMax)
	c.duration("StandbyPoll", &o.StandbyPoll, DefaultStandbyPoll)
	count(&c, "MaxEntries", &o.MaxEntries, DefaultMaxEntries)
	count(&c, "MaxRows", &o.MaxRows, DefaultMaxRows)
	count(&c, "MaxBytes", &o.MaxBytes, DefaultMaxBytes)
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return c.err("flusher")
}

// Flusher applies the stream's entries to PostgreSQL exactly once. Create
// it with NewFlusher and call Run.
type Flusher struct {
	rdb      redis.UniversalClient
	opt      FlusherOptions
	mappings []compiled
	offsets  string // sanitized
	lockKey  string
	log      *zap.Logger
	met      *flusherMetrics
	dropped  atomic.Bool // the unsafe wb-drop-read test behaviour dropped its read

	// Stats are the flusher's running totals.
	Stats FlusherStats
}

// NewFlusher returns a Flusher of the writers' mappings.
func NewFlusher(rdb redis.UniversalClient, mappings []Mapping, opt FlusherOptions) (*Flusher, error) {
	if rdb == nil {
		return nil, errors.New("writebehind: no redis client")
	}
	if err := opt.fill(); err != nil {
		return nil, err
	}
	ms, err := compileMappings(mappings)
	if err != nil {
		return nil, fmt.Errorf("writebehind: %w", err)
	}
	f := &Flusher{
		rdb: rdb, opt: opt, mappings: ms, log: opt.Logger,
		offsets: pgx.Identifier(strings.Split(opt.OffsetsTable, ".")).Sanitize(),
		lockKey: "cdcinvalidate-writebehind/" + opt.Stream + "/" + opt.Group,
	}
	f.met = newFlusherMetrics(&f.Stats)
	if opt.Registerer != nil {
		if err := f.met.register(opt.Registerer); err != nil {
			return nil, fmt.Errorf("writebehind: register metrics: %w", err)
		}
	}
	return f, nil
}

// Run applies entries until ctx ends (then it returns nil) or a permanent
// error: a mapping that does not fit the schema, or a window PostgreSQL
// refuses for its data (a value the column cannot take, a constraint).
// Such a window stays pending, nothing is skipped, and the writers
// eventually get ErrBacklogFull; fix the cause and run again. PostgreSQL
// and Redis failures are retried with backoff for as long as ctx lasts.
func (f *Flusher) Run(ctx context.Context) error {
	pause := f.opt.RetryMin
	for {
		started := time.Now()
		err := f.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if isPermanent(err) {
			f.log.Error("write-behind flusher stopped; entries stay in the stream until it runs again", zap.Error(err))
			return err
		}
		reason := "postgres"
		var rerr redisError
		if errors.As(err, &rerr) {
			reason = "redis"
		}
		f.Stats.Retries.Add(1)
		f.met.retries.WithLabelValues(reason).Inc()
		if time.Since(started) > f.opt.RetryMax {
			pause = f.opt.RetryMin // it ran a while: a new failure, start over
		}
		f.log.Warn("write-behind flusher failed; retrying (nothing acknowledged is lost: pending entries are applied on the next attempt)",
			zap.String("cause", reason), zap.Duration("pause", pause), zap.Error(err))
		if err := retry.Sleep(ctx, pause); err != nil {
			return nil
		}
		pause = min(2*pause, f.opt.RetryMax)
	}
}

// redisError marks a failure of Redis (for the retries metric).
type redisError struct{ err error }

func (e redisError) Error() string { return "redis: " + e.err.Error() }
func (e redisError) Unwrap() error { return e.err }

func rerr(op string, err error) error {
	if err == nil {
		return nil
	}
	return redisError{fmt.Errorf("%s: %w", op, err)}
}

// session is one connection's life: connect, check the schema, become the
// stream's only applier, take over pending entries, then apply windows.
// Any failure ends it; state is not carried over (what is pending in Redis
// and the offsets row are the state).
func (f *Flusher) session(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, f.opt.DSN)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if err := f.ensureOffsets(ctx, conn); err != nil {
		return err
	}
	tables, err := loadTables(ctx, conn, f.mappings)
	if err != nil {
		return err
	}
	if err := f.lock(ctx, conn); err != nil {
		return err
	}
	defer f.met.active.Set(0)
	f.met.active.Set(1)

	last, err := f.prepareStream(ctx, conn)
	if err != nil {
		return err
	}
	s := &session{f: f, conn: conn, tables: tables, last: last}
	if err := s.takeOver(ctx); err != nil {
		return err
	}
	return s.loop(ctx)
}

func (f *Flusher) ensureOffsets(ctx context.Context, conn *pgx.Conn) error {
	ddl := strings.Replace(OffsetsDDL, "writebehind_offsets", f.offsets, 1)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, f.offsets).Scan(&exists); err != nil {
		return fmt.Errorf("look up %s: %w", f.offsets, err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, ddl); err != nil {
			return pgClass(fmt.Errorf("create %s (or create it as its owner: %s): %w", f.offsets, ddl, err))
		}
	}
	_, err := conn.Exec(ctx, `INSERT INTO `+f.offsets+` (stream, grp, last_id) VALUES ($1, $2, '0-0') ON CONFLICT DO NOTHING`, f.opt.Stream, f.opt.Group)
	if err != nil {
		return pgClass(fmt.Errorf("insert the offsets row of %s/%s: %w", f.opt.Stream, f.opt.Group, err))
	}
	return nil
}

// lock takes the session-level advisory lock of (stream, group) on the
// connection every window is applied on, waiting while another flusher
// holds it. A window can thus only commit while its flusher holds the lock:
// if the connection (and with it the lock) is lost, so is the transaction.
func (f *Flusher) lock(ctx context.Context, conn *pgx.Conn) error {
	logged := false
	for {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, f.lockKey).Scan(&ok); err != nil {
			return fmt.Errorf("take the flusher lock: %w", err)
		}
		if ok {
			if logged {
				f.log.Info("write-behind flusher took over the stream", zap.String("stream", f.opt.Stream), zap.String("group", f.opt.Group))
			}
			return nil
		}
		if !logged {
			f.log.Info("another write-behind flusher applies this stream; standing by", zap.String("stream", f.opt.Stream), zap.String("group", f.opt.Group))
			logged = true
		}
		if err := retry.Sleep(ctx, f.opt.StandbyPoll); err != nil {
			return err
		}
	}
}

// prepareStream creates the group (and the stream) if absent, and reads the
// last applied ID. If Redis went back in time (restored from an older
// state, or its AOF lost acknowledged writes), new entries could get IDs
// at or below the last applied one and be skipped: XSETID moves the
// stream's last ID up first, and the loss is reported.
func (f *Flusher) prepareStream(ctx context.Context, conn *pgx.Conn) (streamID, error) {
	err := f.rdb.XGroupCreateMkStream(ctx, f.opt.Stream, f.opt.Group, "0").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return streamID{}, rerr("create the consumer group", err)
	}
	var lastStr string
	if err := conn.QueryRow(ctx, `SELECT last_id FROM `+f.offsets+` WHERE stream = $1 AND grp = $2`, f.opt.Stream, f.opt.Group).Scan(&lastStr); err != nil {
		return streamID{}, fmt.Errorf("read the last applied entry: %w", err)
	}
	last, err := parseStreamID(lastStr)
	if err != nil {
		return streamID{}, permanent(fmt.Errorf("%s holds %q for %s/%s: %w", f.offsets, lastStr, f.opt.Stream, f.opt.Group, err))
	}
	info, err := f.rdb.XInfoStream(ctx, f.opt.Stream).Result()
	if err != nil {
		return streamID{}, rerr("XINFO STREAM", err)
	}
	gen, err := parseStreamID(info.LastGeneratedID)
	if err != nil {
		return streamID{}, rerr("XINFO STREAM", err)
	}
	if gen.less(last) {
		f.log.Error("Redis is behind PostgreSQL: the stream's last ID is below the last applied one, so Redis lost "+
			"writes that were already applied (a restore, or a crash with appendfsync everysec); the values in "+
			"Redis may be lower than the database's. Moving the stream's ID up so new writes are not skipped.",
			zap.String("stream_last_id", gen.String()), zap.String("applied_last_id", last.String()))
		if err := f.rdb.Do(ctx, "XSETID", f.opt.Stream, last.String()).Err(); err != nil {
			return streamID{}, rerr("XSETID", err)
		}
		f.Stats.RedisBehind.Add(1)
	}
	return last, nil
}

// pgClass makes PostgreSQL errors that retrying cannot cure permanent:
// data exceptions (22), integrity violations (23), privileges and
// undefined objects (42).
func pgClass(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && len(pe.Code) >= 2 {
		switch pe.Code[:2] {
		case "22", "23", "42":
			return permanent(err)
		}
	}
	return err
}

// session is the state of one session: everything in it is rebuilt after
// a failure.
type session struct {
	f      *Flusher
	conn   *pgx.Conn
	tables []*tableInfo
	last   streamID // last applied, as committed
	window []entry
	opened time.Time // when the window's first entry was added
	// keys and bytes are the window's distinct keys and its size (MaxRows,
	// MaxBytes).
	keys  map[string]struct{}
	bytes int
	// held counts the entries delivered to this session (read or claimed)
	// and not yet acknowledged: the window and, during a takeover, the rest
	// of the claimed page.
	held int64
}

// takeOver claims every pending entry of the group (whoever it was
// delivered to: under the lock, every other consumer is dead or a zombie
// whose transactions cannot commit) and applies them in ID order before
// anything new is read, so windows stay contiguous.
func (s *session) takeOver(ctx context.Context) error {
	f := s.f
	cursor := "0-0"
	for {
		v, err := f.rdb.Do(ctx, "XAUTOCLAIM", f.opt.Stream, f.opt.Group, f.opt.Consumer, 0, cursor, "COUNT", claimCount).Slice()
		if err != nil {
			return rerr("XAUTOCLAIM", err)
		}
		if len(v) < 2 {
			return rerr("XAUTOCLAIM", fmt.Errorf("unexpected reply %v", v))
		}
		entries, err := parseEntries(v[1])
		if err != nil {
			return rerr("XAUTOCLAIM", err)
		}
		if len(v) >= 3 {
			if gone, ok := v[2].([]any); ok {
				for _, g := range gone {
					if id, err := parseStreamID(fmt.Sprint(g)); err == nil && s.last.less(id) {
						s.lost(id)
					}
				}
			}
		}
		if len(entries) > 0 {
			f.Stats.Claimed.Add(uint64(len(entries)))
		}
		s.hold(entries)
		for _, e := range entries {
			if err := s.add(ctx, e); err != nil {
				return err
			}
		}
		cursor, _ = v[0].(string)
		if cursor == "" || cursor == "0-0" {
			break
		}
	}
	if len(s.window) > 0 {
		if err := s.flush(ctx); err != nil {
			return err
		}
	}
	s.forgetIdleConsumers(ctx)
	return nil
}

// forgetIdleConsumers deletes the group's other consumers that hold no
// entries (dead flushers, whose entries were just claimed), so the group
// does not collect one consumer per restart. Failures only cost tidiness.
func (s *session) forgetIdleConsumers(ctx context.Context) {
	f := s.f
	cs, err := f.rdb.XInfoConsumers(ctx, f.opt.Stream, f.opt.Group).Result()
	if err != nil {
		return
	}
	for _, c := range cs {
		if c.Name != f.opt.Consumer && c.Pending == 0 {
			_ = f.rdb.XGroupDelConsumer(ctx, f.opt.Stream, f.opt.Group, c.Name).Err()
		}
	}
}

func (s *session) lost(id streamID) {
	s.f.Stats.Lost.Add(1)
	s.f.log.Error("a stream entry was deleted before it was applied (someone trimmed or deleted the stream); its writes are lost to the database",
		zap.String("stream", s.f.opt.Stream), zap.String("id", id.String()))
}

// loop reads new entries and applies a window when it is full or old
// enough.
func (s *session) loop(ctx context.Context) error {
	f := s.f
	for {
		block := f.opt.Window
		if len(s.window) > 0 {
			block = f.opt.Window - time.Since(s.opened)
			if block <= 0 {
				if err := s.flush(ctx); err != nil {
					return err
				}
				continue
			}
		}
		block = min(max(block, time.Millisecond), maxReadBlock)
		v, err := f.rdb.Do(ctx, "XREADGROUP", "GROUP", f.opt.Group, f.opt.Consumer,
			"COUNT", f.opt.MaxEntries-len(s.window), "BLOCK", block.Milliseconds(),
			"STREAMS", f.opt.Stream, ">").Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return rerr("XREADGROUP", err)
		}
		entries, err := parseReadGroup(v)
		if err != nil {
			return rerr("XREADGROUP", err)
		}
		if len(entries) > 0 && failpoint.Unsafe("wb-drop-read") && f.dropped.CompareAndSwap(false, true) {
			continue // simulate a reply lost on the way, once: delivered, never seen
		}
		s.hold(entries)
		for _, e := range entries {
			if err := s.add(ctx, e); err != nil {
				return err
			}
		}
		if len(entries) == 0 && len(s.window) == 0 {
			s.observeBacklog(ctx)
		}
	}
}

// hold counts entries just delivered to this session.
func (s *session) hold(entries []entry) {
	for _, e := range entries {
		if !e.deleted {
			s.held++
		}
	}
}

// add puts e into the window, applying the window first if it is full.
func (s *session) add(ctx context.Context, e entry) error {
	if e.deleted {
		if s.last.less(e.id) {
			s.lost(e.id)
		}
		return nil
	}
	opt := &s.f.opt
	if len(s.window) > 0 {
		// Would e take the window past a bound? Then apply it first. (A
		// key repeated within e counts each time: the bound may close a
		// window a little early, never late.)
		newKeys, size := 0, 0
		for _, op := range e.ops {
			size += len(op.key) + len(op.value)
			if _, ok := s.keys[op.key]; !ok {
				newKeys++
			}
		}
		if len(s.keys)+newKeys > opt.MaxRows || s.bytes+size > opt.MaxBytes {
			if err := s.flush(ctx); err != nil {
				return err
			}
		}
	}
	if len(s.window) == 0 {
		s.opened = time.Now()
		if s.keys == nil {
			s.keys = map[string]struct{}{}
		}
	}
	s.window = append(s.window, e)
	for _, op := range e.ops {
		s.keys[op.key] = struct{}{}
		s.bytes += len(op.key) + len(op.value)
	}
	if len(s.window) >= opt.MaxEntries || len(s.keys) >= opt.MaxRows || s.bytes >= opt.MaxBytes {
		return s.flush(ctx)
	}
	return nil
}

// flush applies the window in one transaction with the offsets row, then
// acknowledges its entries and trims the stream up to the last applied
// entry. Entries at or below the committed last ID (applied by an earlier
// session that died before acknowledging) are acknowledged, not applied.
func (s *session) flush(ctx context.Context) error {
	f := s.f
	w := s.window
	s.window = nil
	clear(s.keys)
	s.bytes = 0
	if len(w) == 0 {
		return nil
	}
	ids := make([]string, len(w))
	for i, e := range w {
		ids[i] = e.id.String()
	}
	// Every entry delivered to this consumer and not yet acknowledged must
	// be in the window. If the PEL holds more, a read's reply was lost
	// (a client that retried XREADGROUP after a broken connection): those
	// entries sit below newer ones, and committing past them would make
	// them look applied. Start over: the next session claims them in order.
	pend, err := f.rdb.XPending(ctx, f.opt.Stream, f.opt.Group).Result()
	if err != nil {
		return rerr("XPENDING", err)
	}
	if mine := pend.Consumers[f.opt.Consumer]; mine != s.held {
		return rerr("check the window", fmt.Errorf("%d entries are pending for this flusher but it has read %d: a read's reply was lost; starting over from the pending entries", mine, s.held))
	}
	unsafeEarlyAck := failpoint.Unsafe("wb-ack-before-commit")
	if unsafeEarlyAck { // the negative control: acknowledge, then commit
		if err := f.rdb.XAck(ctx, f.opt.Stream, f.opt.Group, ids...).Err(); err != nil {
			return rerr("XACK", err)
		}
		failpoint.Hit("wb-after-early-ack")
	}
	newLast, done, err := s.commit(ctx, w)
	if err != nil {
		return err
	}
	failpoint.Hit("wb-after-commit")
	if !unsafeEarlyAck {
		if err := f.rdb.XAck(ctx, f.opt.Stream, f.opt.Group, ids...).Err(); err != nil {
			return rerr("XACK", err)
		}
	}
	s.held -= int64(len(w))
	failpoint.Hit("wb-after-ack")
	if done.entries > 0 {
		done.Lag = time.Since(w[0].id.time())
		f.met.lag.Observe(done.Lag.Seconds())
		f.Stats.lastLagNanos.Store(int64(done.Lag))
		if f.opt.OnWindow != nil {
			f.opt.OnWindow(done.WindowStats)
		}
	}
	s.last = newLast
	// Trim what is applied, keeping the last applied entry (MINID keeps
	// IDs >= it), so the stream holds only the backlog.
	if err := f.rdb.XTrimMinID(ctx, f.opt.Stream, newLast.String()).Err(); err != nil {
		return rerr("XTRIM", err)
	}
	s.observeBacklog(ctx)
	return nil
}

// WindowStats describe one committed window.
type WindowStats struct {
	// Entries and Ops are the stream entries and operations applied.
	Entries, Ops int
	// Skipped are entries of the window applied before (redelivered).
	Skipped int
	// Rows are the rows written (one upsert each).
	Rows int
	// Lag is the age of the window's oldest entry at its commit.
	Lag time.Duration
}

type applied struct {
	WindowStats
	entries int
}

// commit runs the window's transaction and returns the new last applied ID
// and what it applied.
func (s *session) commit(ctx context.Context, w []entry) (streamID, applied, error) {
	f := s.f
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		return streamID{}, applied{}, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var lastStr string
	if err := tx.QueryRow(ctx, `SELECT last_id FROM `+f.offsets+` WHERE stream = $1 AND grp = $2 FOR UPDATE`, f.opt.Stream, f.opt.Group).Scan(&lastStr); err != nil {
		return streamID{}, applied{}, fmt.Errorf("read the last applied entry: %w", err)
	}
	last, err := parseStreamID(lastStr)
	if err != nil {
		return streamID{}, applied{}, permanent(fmt.Errorf("%s: %w", f.offsets, err))
	}
	fresh := w[:0:0]
	for _, e := range w {
		if last.less(e.id) {
			fresh = append(fresh, e)
		}
	}
	skipped := len(w) - len(fresh)
	if len(fresh) == 0 {
		f.Stats.EntriesSkipped.Add(uint64(skipped))
		return last, applied{}, nil // all applied before: only acknowledge
	}
	rows, ops, err := aggregate(f.mappings, s.tables, fresh)
	if err != nil {
		return streamID{}, applied{}, permanent(err)
	}
	b := &pgx.Batch{}
	for _, rw := range rows {
		sql, args := rw.table.upsert(rw)
		b.Queue(sql, args...)
	}
	newLast := fresh[len(fresh)-1].id
	b.Queue(`UPDATE `+f.offsets+` SET last_id = $3, updated_at = now() WHERE stream = $1 AND grp = $2`, f.opt.Stream, f.opt.Group, newLast.String())
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return streamID{}, applied{}, pgClass(fmt.Errorf("apply a window of %d entries (%s..%s) to %d rows: %w", len(fresh), fresh[0].id, newLast, len(rows), err))
	}
	failpoint.Hit("wb-before-commit")
	if err := tx.Commit(ctx); err != nil {
		return streamID{}, applied{}, fmt.Errorf("commit a window (%s..%s): %w", fresh[0].id, newLast, err)
	}
	f.Stats.Windows.Add(1)
	f.Stats.EntriesApplied.Add(uint64(len(fresh)))
	f.Stats.EntriesSkipped.Add(uint64(skipped))
	f.Stats.OpsApplied.Add(uint64(ops))
	f.Stats.RowsWritten.Add(uint64(len(rows)))
	return newLast, applied{WindowStats: WindowStats{Entries: len(fresh), Ops: ops, Skipped: skipped, Rows: len(rows)}, entries: len(fresh)}, nil
}

func (s *session) observeBacklog(ctx context.Context) {
	if n, err := s.f.rdb.XLen(ctx, s.f.opt.Stream).Result(); err == nil {
		s.f.Stats.backlog.Store(n)
	}
}
