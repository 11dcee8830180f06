// Package engine wires cdcinvalidate together: it prepares PostgreSQL (checks
// the rules against the catalog, creates the publication and the slot when
// absent), connects Redis, and runs the replication stream and the sink
// until the context ends or a permanent error happens.
//
// Start-up fails with an error that names every problem and its fix before
// anything streams; a clean shutdown confirms what was applied.
package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
	"github.com/cdcinvalidate/cdcinvalidate/checkpoint"
	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/config/defaults"
	"github.com/cdcinvalidate/cdcinvalidate/internal/retry"
	"github.com/cdcinvalidate/cdcinvalidate/mapping"
	"github.com/cdcinvalidate/cdcinvalidate/metrics"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
	"github.com/cdcinvalidate/cdcinvalidate/sink"
	"github.com/cdcinvalidate/cdcinvalidate/verifier"
)

// Engine is one configured cdcinvalidate.
type Engine struct {
	cfg     *config.Config
	file    string
	log     *zap.Logger
	mapper  *mapping.Mapper
	Metrics *metrics.Metrics

	// Rules reloads (reload.go): ready is closed once stream and sink
	// exist; reloadMu serialises reloads and guards mapper after that.
	ready    chan struct{}
	reloadMu sync.Mutex
	stream   *replication.Stream
	sink     *sink.Sink
	rdb      redis.UniversalClient
	verifier *verifier.Verifier // nil unless verify.enabled
}

// catchUpAge is how old the last transaction's commit must be for the sink
// to wait a moment to gather larger batches (catching up on a backlog).
const catchUpAge = time.Second

// Version is reported in logs and in cdcinvalidate_build_info.
var Version = "dev"

// New validates the rules and returns an engine. file names the
// configuration in messages.
func New(cfg *config.Config, file string, log *zap.Logger) (*Engine, error) {
	m, err := mapping.New(cfg.MappingRules(file), mapping.WithLogger(log))
	if err != nil {
		return nil, err
	}
	return &Engine{cfg: cfg, file: file, log: log, mapper: m, Metrics: metrics.New(Version, cfg.Metrics.ReadyMaxLag), ready: make(chan struct{})}, nil
}

// SetupError is a start-up problem the operator must fix; retrying does not help.
type SetupError struct{ Problems []string }

func (e *SetupError) Error() string {
	if len(e.Problems) == 1 {
		return "cannot start: " + e.Problems[0]
	}
	return "cannot start, " + fmt.Sprint(len(e.Problems)) + " problems:\n  - " + strings.Join(e.Problems, "\n  - ")
}

// Run prepares PostgreSQL and Redis and streams until ctx ends (returns
// nil after a clean shutdown) or a permanent error.
func (e *Engine) Run(ctx context.Context) error {
	if e.cfg.Metrics.Listen != "" {
		sctx, stop := context.WithCancel(ctx)
		addr, wait, err := metrics.Serve(sctx, e.cfg.Metrics.Listen, e.Metrics.Handler(e.cfg.Metrics.Pprof))
		if err != nil {
			stop()
			return &SetupError{[]string{fmt.Sprintf("metrics.listen %q: %v (choose another address, or leave it empty to serve no metrics)", e.cfg.Metrics.Listen, err)}}
		}
		e.log.Info("serving metrics and health checks", zap.Stringer("addr", addr), zap.Bool("pprof", e.cfg.Metrics.Pprof))
		defer func() {
			stop()
			_ = wait()
		}()
	}
	err := e.run(ctx)
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil // stopped while connecting or retrying: a clean stop
	}
	if err != nil {
		e.Metrics.SetFailed()
	}
	return err
}

func (e *Engine) run(ctx context.Context) error {
	pgcfg, err := pgconn.ParseConfig(e.cfg.Postgres.DSN)
	if err != nil {
		return &SetupError{[]string{"postgres.dsn: " + config.Redact(err.Error())}}
	}
	e.log.Info("starting",
		zap.String("postgres", fmt.Sprintf("%s@%s:%d/%s", pgcfg.User, pgcfg.Host, pgcfg.Port, pgcfg.Database)),
		zap.String("redis", e.cfg.Redis.Describe()), zap.Int("redis_db", e.cfg.Redis.DB),
		zap.String("slot", e.cfg.Postgres.Slot), zap.String("publication", e.cfg.Postgres.Publication),
		zap.Strings("tables", e.mapper.Tables()))

	e.warnPlaintext(pgcfg)
	start, err := e.preparePostgres(ctx, pgcfg)
	if err != nil {
		return err
	}
	rdb, err := newRedisClient(e.cfg.Redis, -1) // the sink retries whole batches itself
	if err != nil {
		return err
	}
	defer rdb.Close()
	if err := e.pingRedis(ctx, rdb); err != nil {
		return err
	}

	tracker := checkpoint.NewTracker(start.confirmed)
	events := make(chan replication.Event, defaults.QueueEvents)
	st := replication.New(replication.Config{
		Conn: pgcfg, Slot: e.cfg.Postgres.Slot, Publication: e.cfg.Postgres.Publication,
		StatusInterval: e.cfg.Postgres.StatusInterval, Streaming: e.cfg.Postgres.StreamingEnabled(),
		TxnMemoryBytes: e.cfg.Postgres.TxnBufferMB << 20, SpillDir: e.cfg.Postgres.SpillDir,
		MaxBackoff: e.cfg.Postgres.MaxBackoff, Logger: e.log.Named("replication"), Observer: e.Metrics,
		StandbyRetry: e.cfg.Postgres.StandbyRetry, WALSenderTimeout: e.cfg.Postgres.WALSenderTimeout,
	}, e.mapper, tracker, events)
	e.Metrics.Attach(tracker, st)
	e.Metrics.AttachRules(metrics.RuleSource{Stats: e.mapper.Stats, RefreshFallbacks: e.mapper.RefreshFallbacks})
	vf := e.newVerifier(rdb)
	var companion func(string) string
	var fence time.Duration
	if e.cfg.Client.Leases {
		companion = cacheaside.LeaseKey
		fence = e.cfg.Client.LeaseFenceOrDefault()
	}
	sk := sink.New(sink.Config{
		Client: rdb, MaxBatchKeys: e.cfg.Sink.MaxBatchKeys, UseDel: e.cfg.Sink.DeleteCommand == config.DeleteDel,
		ScanCount: e.cfg.Sink.ScanCount, MaxBackoff: e.cfg.Sink.MaxBackoff, Logger: e.log.Named("sink"),
		PublishChannel: e.cfg.Client.PublishChannel, Companion: companion, CompanionPatterns: cacheaside.LeasePatterns, FenceValue: cacheaside.LeaseFence, Fence: fence, Observer: e.Metrics,
		Cluster: e.cfg.Redis.Cluster, WaitReplicas: e.cfg.Redis.WaitReplicas, WaitTimeout: e.cfg.Redis.WaitTimeout,
		MaxKeyBytes: e.cfg.Sink.MaxKeyBytes, MaxInFlight: e.cfg.Sink.MaxInFlight, StopOnLongKey: e.cfg.Sink.OnLongKey == config.LongKeyStop,
		WatermarkKey: e.cfg.WatermarkKey(), FlushPatterns: e.mapper.Globs(), FlushGenerations: e.mapper.Generations(),
		FlushOnHistoryLost: e.cfg.Consistency.OnHistoryLost == config.HistoryLostFlush,
		CatchUpAge:         catchUpAge, OnSession: e.sessionChecks(rdb, start), Verifier: sinkVerifier(vf),
	}, tracker)
	e.stream, e.sink, e.rdb, e.verifier = st, sk, rdb, vf
	close(e.ready) // reloads may begin

	// The sink outlives the stream: at shutdown the stream stops reading,
	// waits for the sink to apply what it handed over, confirms, and closes
	// the channel; only then is the sink's context cancelled.
	sinkCtx, cancelSink := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSink()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer cancelSink()
		return st.Run(gctx)
	})
	g.Go(func() error {
		e.pollSlot(gctx, sinkCtx)
		return nil
	})
	g.Go(func() error { return e.watchCatalog(gctx, rdb) })
	if vf != nil {
		g.Go(func() error { return vf.Run(gctx) })
	}
	g.Go(func() error {
		err := sk.Run(sinkCtx, events)
		if errors.Is(err, context.Canceled) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		return nil
	})
	err = g.Wait()
	var ue *replication.UnboundError
	if errors.As(err, &ue) {
		err = e.markUnapplied(rdb, ue.Globs, ue.Generations, err)
	}
	return err
}

// sinkVerifier is v as the sink's optional Verifier: nil stays a nil
// interface, so the sink skips sampling.
func sinkVerifier(v *verifier.Verifier) sink.Verifier {
	if v == nil {
		return nil
	}
	return v
}

func (e *Engine) pingRedis(ctx context.Context, rdb redis.UniversalClient) error {
	p := retry.Policy{Min: 200 * time.Millisecond, Max: 5 * time.Second, EscalateAfter: startEscalateAfter,
		Classify: func(err error) error {
			if perm := sink.Classify(err); perm != nil {
				return &SetupError{[]string{fmt.Sprintf("redis at %s: %v", e.cfg.Redis.Describe(), perm)}}
			}
			if p := tlsProblem(err); p != "" {
				return &SetupError{[]string{fmt.Sprintf("redis at %s: %s", e.cfg.Redis.Describe(), p)}}
			}
			return nil
		},
		OnFailure: e.logStartRetry("redis not reachable yet", zap.String("addr", e.cfg.Redis.Describe())),
	}
	_, err := p.Do(ctx, func() error { return rdb.Ping(ctx).Err() })
	return err
}

// startEscalateAfter is how long a start-up connection may keep failing
// before the log says so as an error (it goes on retrying).
const startEscalateAfter = defaults.EscalateAfter

// logStartRetry logs the failures of a start-up connection: the first and
// every tenth as warnings, the escalation as an error.
func (e *Engine) logStartRetry(what string, fields ...zap.Field) func(retry.Failure) {
	return func(f retry.Failure) {
		fs := append(fields[:len(fields):len(fields)], zap.String("error", config.Redact(f.Err.Error())), zap.Int("attempt", f.Attempt))
		switch {
		case f.Escalate:
			e.Metrics.Stalled(f.Err)
			e.log.Error(what+" for a long time; still retrying", append(fs, zap.Duration("failing_for", f.Failing.Round(time.Second)))...)
		case f.Attempt == 1 || f.Attempt%10 == 0:
			e.log.Warn(what+"; retrying", fs...)
		}
	}
}

// connectRetry connects, retrying errors that waiting can fix.
func (e *Engine) connectRetry(ctx context.Context, connect func() error, what string) error {
	p := retry.Policy{Min: 200 * time.Millisecond, Max: e.cfg.Postgres.MaxBackoff, EscalateAfter: startEscalateAfter,
		Classify: func(err error) error {
			if replication.IsPermanent(err) {
				return explainPgError(err)
			}
			if msg := tlsProblem(err); msg != "" {
				return &SetupError{[]string{"postgres: " + msg}}
			}
			return nil
		},
		OnFailure: e.logStartRetry(what + " failed"),
	}
	_, err := p.Do(ctx, connect)
	if retry.IsPermanent(err) {
		return explainPgError(err)
	}
	return err
}

// explainPgError turns a PostgreSQL error that retrying cannot fix
// (replication.Classify) into a SetupError that says what to fix.
func explainPgError(err error) error {
	var setup *SetupError
	if errors.As(err, &setup) {
		return err
	}
	if perm := replication.Classify(err); perm != nil {
		return &SetupError{[]string{config.Redact(perm.Error())}}
	}
	return err
}

// preparePostgres checks the server and the rules, creates the publication
// and the slot when absent, and returns the slot's confirmed position.
func (e *Engine) preparePostgres(ctx context.Context, pgcfg *pgconn.Config) (slotState, error) {
	var conn *pgx.Conn
	if err := e.connectRetry(ctx, func() (err error) {
		conn, err = e.setupConn(ctx, "cdcinvalidate-setup")
		return err
	}, "connect to postgres"); err != nil {
		return slotState{}, err
	}
	defer conn.Close(context.Background())

	e.warnIfSyncStandby(ctx, conn)
	cat, err := checkCatalog(ctx, conn, e.mapper) // check.go, shared with `cdcinvalidate check`
	if err != nil {
		return slotState{}, err
	}
	e.mapper.Expect(cat.infos) // a rule table renamed while stopped is caught (schema.go)
	if e.cfg.Postgres.FailoverSlot && cat.version < 170000 {
		return slotState{}, &SetupError{[]string{fmt.Sprintf("postgres.failover_slot: failover slots need PostgreSQL "+
			"17 or later (this server is %d.%d); on older versions a promoted standby has no copy of the slot, "+
			"and the engine's fail-closed path (consistency.on_history_lost) handles the failover: set "+
			"failover_slot: false", cat.version/10000, cat.version%10000)}}
	}
	if probs := standbyProblems(cat.version, cat.inRecovery, e.cfg.Postgres.FailoverSlot); len(probs) > 0 {
		return slotState{}, &SetupError{probs}
	}
	if cat.inRecovery {
		e.warnStandby(ctx, conn)
	}
	if err := e.ensurePublication(ctx, conn, cat, cat.problems); err != nil {
		return slotState{}, err
	}
	st, err := e.ensureSlot(ctx, conn, pgcfg, cat.inRecovery)
	if err == nil && e.cfg.Postgres.FailoverSlot && !st.created {
		err = e.ensureFailover(ctx, conn, pgcfg)
	}
	if err == nil {
		st.walNow, err = currentWAL(ctx, conn)
	}
	return st, err
}

// ensureFailover turns on the failover property of an existing slot
// (PostgreSQL 17+), so that standbys with sync_replication_slots keep a
// copy of it.
func (e *Engine) ensureFailover(ctx context.Context, conn *pgx.Conn, pgcfg *pgconn.Config) error {
	slot := e.cfg.Postgres.Slot
	var failover bool
	if err := conn.QueryRow(ctx, `SELECT coalesce((to_jsonb(s) ->> 'failover')::boolean, false) FROM pg_replication_slots s WHERE slot_name = $1`, slot).Scan(&failover); err != nil {
		return fmt.Errorf("read failover property of slot %q: %w", slot, err)
	}
	if failover {
		return nil
	}
	rconn, err := e.replicationConn(ctx, pgcfg)
	if err != nil {
		return err
	}
	defer rconn.Close(context.Background())
	if _, err := rconn.Exec(ctx, fmt.Sprintf("ALTER_REPLICATION_SLOT %s (FAILOVER true)", pgx.Identifier{slot}.Sanitize())).ReadAll(); err != nil {
		return &SetupError{[]string{fmt.Sprintf("turn on failover for slot %q: %s (the slot may be in use by another "+
			"instance; retry, or run SELECT pg_drop_replication_slot('%s') while nothing uses it and let the "+
			"engine create it)", slot, err, slot)}}
	}
	e.log.Info("turned on failover for the slot", zap.String("slot", slot))
	return nil
}

func (e *Engine) replicationConn(ctx context.Context, pgcfg *pgconn.Config) (*pgconn.PgConn, error) {
	rcfg := pgcfg.Copy()
	if rcfg.RuntimeParams == nil {
		rcfg.RuntimeParams = map[string]string{}
	}
	rcfg.RuntimeParams["replication"] = "database"
	rcfg.RuntimeParams["application_name"] = "cdcinvalidate-setup"
	rconn, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		return nil, explainPgError(fmt.Errorf("connect for replication: %w", err))
	}
	return rconn, nil
}

// ensurePublication checks the publication, or creates it when absent.
// problems are those found so far: with any, nothing is created, and they
// are reported with the publication's own.
func (e *Engine) ensurePublication(ctx context.Context, conn *pgx.Conn, cat *catalogCheck, problems []mapping.Problem) error {
	version, infos := cat.version, cat.infos
	pub := e.cfg.Postgres.Publication
	tables := e.mapper.Tables()
	p, err := readPublication(ctx, conn, pub, version) // check.go
	if err != nil {
		return err
	}
	if problems = append(problems, publicationProblems(pub, p, version, tables, infos)...); len(problems) > 0 {
		return &SetupError{mapping.Strings(problems)}
	}
	if p.Exists {
		return nil
	}
	sql := createPublicationSQL(pub, tables, version)
	if cat.inRecovery {
		return &SetupError{[]string{fmt.Sprintf("publication %q does not exist, and this server is a standby (read-only): create it on the primary, as the tables' owner: %s", pub, sql)}}
	}
	// Marked in the same transaction: a reload adds tables only to a
	// publication the engine created (reload.go).
	if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, markPublicationSQL(pub))
		return err
	}); err != nil {
		return &SetupError{[]string{fmt.Sprintf("create publication %q: %s (the role must own the tables, or create it as the owner: %s)", pub, err, sql)}}
	}
	e.log.Info("created publication", zap.String("publication", pub), zap.Strings("tables", tables))
	return nil
}

// slotState is what ensureSlot found or made.
type slotState struct {
	confirmed replication.LSN
	created   bool   // the slot did not exist and was created now
	lost      string // why the slot's history is known to be lost ("" if not)
	// walNow is the server's WAL position read before any flush at this
	// start: every transaction that commits below it committed before.
	walNow replication.LSN
	// flushedGlobs and flushedGens are what a flush at this start deleted
	// and incremented (set by checkHistory).
	flushedGlobs, flushedGens []string
}

func (e *Engine) ensureSlot(ctx context.Context, conn *pgx.Conn, pgcfg *pgconn.Config, standby bool) (slotState, error) {
	slot := e.cfg.Postgres.Slot
	var plugin, slotType, db, walStatus, reason string
	var conflicting bool
	var confirmed *string
	err := conn.QueryRow(ctx, `SELECT coalesce(plugin, ''), slot_type, coalesce(database, ''), confirmed_flush_lsn::text,
       coalesce((to_jsonb(s) ->> 'wal_status'), ''), `+slotInvalidatedSQL+`
FROM pg_replication_slots s WHERE slot_name = $1`, slot).Scan(&plugin, &slotType, &db, &confirmed, &walStatus, &reason, &conflicting)
	if err == nil {
		var problems []string
		if slotType != "logical" || plugin != "pgoutput" {
			problems = append(problems, fmt.Sprintf("slot %q exists but is a %s slot with plugin %q; cdcinvalidate "+
				"needs a logical slot with plugin pgoutput: choose another postgres.slot, or drop it (SELECT "+
				"pg_drop_replication_slot('%s')) if nothing uses it", slot, slotType, plugin, slot))
		} else if db != pgcfg.Database {
			problems = append(problems, fmt.Sprintf("slot %q belongs to database %q, not %q; choose another postgres.slot", slot, db, pgcfg.Database))
		}
		if len(problems) > 0 {
			return slotState{}, &SetupError{problems}
		}
		if lost, cause := slotInvalidation(walStatus, reason, conflicting); lost || confirmed == nil {
			// PostgreSQL invalidated the slot (WAL removed, idle too long, a
			// conflict with recovery on a standby): it cannot decode any more,
			// and the changes it had not confirmed are gone for good.
			if cause == "" {
				cause = "it has no confirmed position"
			}
			why := fmt.Sprintf("slot %q was invalidated by PostgreSQL (%s), so the changes it missed are gone", slot, cause)
			if e.cfg.Consistency.OnHistoryLost != config.HistoryLostFlush {
				fix := fmt.Sprintf("; flush the keys the rules manage, then drop the slot "+
					"(SELECT pg_drop_replication_slot('%s')) and start again, "+
					"or set consistency.on_history_lost: flush to let cdcinvalidate do both", slot)
				return slotState{}, &SetupError{[]string{why + fix}}
			}
			e.log.Error("slot invalidated; dropping and recreating it, then flushing every managed key", zap.String("slot", slot))
			if _, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
				return slotState{}, fmt.Errorf("drop invalidated slot %q: %w", slot, err)
			}
			st, err := e.createSlot(ctx, pgcfg, standby)
			st.lost = why
			return st, err
		}
		lsn, err := pglogrepl.ParseLSN(*confirmed)
		if err != nil {
			return slotState{}, fmt.Errorf("parse confirmed position of slot %q: %w", slot, err)
		}
		e.log.Info("using existing slot", zap.String("slot", slot), zap.Stringer("confirmed_lsn", lsn))
		return slotState{confirmed: lsn}, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return slotState{}, fmt.Errorf("read slot %q: %w", slot, err)
	}
	st, err := e.createSlot(ctx, pgcfg, standby)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" {
		// Another instance created it at the same moment: use it.
		return e.ensureSlot(ctx, conn, pgcfg, standby)
	}
	return st, err
}

func (e *Engine) createSlot(ctx context.Context, pgcfg *pgconn.Config, standby bool) (slotState, error) {
	slot := e.cfg.Postgres.Slot
	if standby {
		e.log.Info("creating the slot on a standby: this waits until the primary logs its running transactions (every "+
			"15 s while it writes; SELECT pg_log_standby_snapshot() on the primary makes it immediate)",
			zap.String("slot", slot))
	}
	rconn, err := e.replicationConn(ctx, pgcfg)
	if err != nil {
		return slotState{}, err
	}
	defer rconn.Close(context.Background())
	var res pglogrepl.CreateReplicationSlotResult
	if e.cfg.Postgres.FailoverSlot {
		// PostgreSQL 17+ (checked before): the option list form.
		res, err = pglogrepl.ParseCreateReplicationSlot(rconn.Exec(ctx, fmt.Sprintf("CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT 'nothing', FAILOVER true)", pgx.Identifier{slot}.Sanitize())))
	} else {
		res, err = pglogrepl.CreateReplicationSlot(ctx, rconn, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	}
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42501" {
			return slotState{}, &SetupError{[]string{fmt.Sprintf("create slot %q: %s (the role needs the REPLICATION attribute: ALTER ROLE %s REPLICATION)", slot, err, pgcfg.User)}}
		}
		return slotState{}, fmt.Errorf("create slot %q: %w", slot, err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return slotState{}, fmt.Errorf("parse consistent point of new slot %q: %w", slot, err)
	}
	e.log.Info("created slot", zap.String("slot", slot), zap.Stringer("consistent_lsn", lsn))
	return slotState{confirmed: lsn, created: true}, nil
}

// setupConn opens an ordinary (non-replication) connection.
func (e *Engine) setupConn(ctx context.Context, appName string) (*pgx.Conn, error) {
	ccfg, err := pgx.ParseConfig(e.cfg.Postgres.DSN)
	if err != nil {
		return nil, &SetupError{[]string{"postgres.dsn: " + config.Redact(err.Error())}}
	}
	if ccfg.RuntimeParams == nil {
		ccfg.RuntimeParams = map[string]string{}
	}
	ccfg.RuntimeParams["application_name"] = appName
	return pgx.ConnectConfig(ctx, ccfg)
}
