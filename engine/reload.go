package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/mapping"
	"github.com/cdcinvalidate/cdcinvalidate/metrics"
)

// publicationMark is the comment the engine puts on a publication it
// creates. Only a publication with this mark is changed by a reload (ALTER
// PUBLICATION ... ADD TABLE); any other belongs to the user.
const publicationMark = "managed by cdcinvalidate"

func markPublicationSQL(pub string) string {
	return fmt.Sprintf("COMMENT ON PUBLICATION %s IS '%s'", pgx.Identifier{pub}.Sanitize(), publicationMark)
}

func alterPublicationSQL(pub string, tables []string) string {
	quoted := make([]string, len(tables))
	for i, t := range tables {
		s, n := config.SplitTable(t)
		quoted[i] = pgx.Identifier{s, n}.Sanitize()
	}
	return fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", pgx.Identifier{pub}.Sanitize(), strings.Join(quoted, ", "))
}

// ReloadError is a rejected rules reload: the running rules stay.
type ReloadError struct{ Problems []string }

func (e *ReloadError) Error() string {
	if len(e.Problems) == 1 {
		return "rules not reloaded: " + e.Problems[0]
	}
	return fmt.Sprintf("rules not reloaded, %d problems:\n  - %s", len(e.Problems), strings.Join(e.Problems, "\n  - "))
}

// RejectReload counts and logs a reload that was rejected before the
// engine saw it (the file did not load or validate).
func (e *Engine) RejectReload(err error) {
	e.Metrics.RuleReload(false)
	e.log.Error("rules not reloaded: the configuration is invalid; the running rules stay", zap.String("error", config.Redact(err.Error())))
}

// Reload replaces the running rules with cfg's, without losing the
// position: the replication connection stays, and the stream switches at a
// transaction boundary. Only the rules change; other sections that differ
// are logged as needing a restart.
//
// Before the switch the new rules are checked against the catalog as at
// start-up (tables, columns, replica identity), and tables the publication
// lacks are added to it if the engine created it (publicationMark); else
// the reload is rejected with the ALTER PUBLICATION to run. With
// consistency.on_first_start: flush, the keys of templates the old rules
// did not keep invalidated are deleted at the switch, in order with the
// stream. On any problem the old rules keep running and a *ReloadError
// says why. Reload waits until the engine has started streaming.
func (e *Engine) Reload(ctx context.Context, cfg *config.Config) (err error) {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	select {
	case <-e.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() {
		if err == nil || ctx.Err() != nil {
			return
		}
		var re *ReloadError
		if !errors.As(err, &re) {
			re = &ReloadError{[]string{err.Error()}}
			err = re
		}
		e.Metrics.RuleReload(false)
		e.log.Error("rules not reloaded; the running rules stay", zap.Strings("problems", config.RedactAll(re.Problems)))
	}()
	if sections := config.RestartSections(e.cfg, cfg); len(sections) > 0 {
		e.log.Warn("the reloaded configuration changes more than the rules; only the rules are applied, restart to apply the rest",
			zap.Strings("sections", sections))
	}
	m, err := mapping.New(cfg.MappingRules(e.file), mapping.WithLogger(e.log))
	if err != nil {
		return &ReloadError{[]string{err.Error()}}
	}
	conn, err := e.setupConn(ctx, "cdcinvalidate-reload")
	if err != nil {
		return fmt.Errorf("connect to postgres: %s", config.Redact(err.Error()))
	}
	defer conn.Close(context.Background())
	cat, err := checkCatalog(ctx, conn, m)
	if err != nil {
		return err
	}
	m.Expect(cat.infos)
	added, err := e.reloadPublication(ctx, conn, m, cat)
	if err != nil {
		return err
	}
	old := e.mapper
	if newTables := slices.DeleteFunc(m.Tables(), func(t string) bool { return slices.Contains(old.Tables(), t) }); len(newTables) > 0 {
		if err := e.waitOlderTransactions(ctx, conn, newTables); err != nil {
			return err
		}
	}
	newGlobs := mapping.NewlyManagedGlobs(old, m)
	newGens := mapping.NewGenerations(old, m)
	flush := e.cfg.Consistency.OnFirstStart == config.FirstStartFlush
	// The flush of the new patterns and generation keys goes through the
	// stream to the sink, in order: a Redis error there is the sink's (it
	// retries, or stops the engine), never a reload that half happened.
	if err := e.stream.SetMapper(ctx, m, newGlobs, newGens, flush); err != nil {
		return err
	}
	e.sink.SetFlush(m.Globs(), m.Generations())
	// The record of what the rules manage drops what they no longer manage
	// but gains the new patterns only at the next start, which flushes them
	// (again): the flush at the switch may not reach Redis before a crash.
	before := managedSet(old.Globs(), old.Generations())
	kept := slices.DeleteFunc(managedSet(m.Globs(), m.Generations()), func(x string) bool { return !slices.Contains(before, x) })
	if err := e.recordManaged(ctx, e.rdb, kept); err != nil {
		e.log.Warn("could not update the record of the managed patterns; the next start flushes the new ones", zap.Error(err))
	}
	e.Metrics.AttachRules(metrics.RuleSource{Stats: m.Stats, RefreshFallbacks: m.RefreshFallbacks})
	if e.verifier != nil {
		e.verifier.SetLabeler(labelerOf(m))
	}
	e.mapper = m
	e.Metrics.RuleReload(true)
	fields := []zap.Field{zap.Strings("tables", m.Tables()), zap.Int("rules", len(m.AllRules()))}
	if len(added) > 0 {
		fields = append(fields, zap.Strings("added_to_publication", added))
	}
	switch {
	case len(newGlobs)+len(newGens) == 0:
	case flush:
		fields = append(fields, zap.Strings("flushed_patterns", newGlobs), zap.Strings("incremented_generation_keys", newGens))
	default:
		fields = append(fields, zap.Strings("new_patterns_not_flushed", newGlobs), zap.Strings("new_generation_keys_not_incremented", newGens),
			zap.String("why", "consistency.on_first_start: keep"))
	}
	e.log.Info("rules reloaded", fields...)
	return nil
}

// reloadPublication checks the publication against the new rules and adds
// the tables it lacks when the engine manages it. It returns the tables
// added.
func (e *Engine) reloadPublication(ctx context.Context, conn *pgx.Conn, m *mapping.Mapper, cat *catalogCheck) ([]string, error) {
	pub := e.cfg.Postgres.Publication
	tables := m.Tables()
	p, err := readPublication(ctx, conn, pub, cat.version)
	if err != nil {
		return nil, err
	}
	if !p.Exists {
		return nil, &ReloadError{[]string{fmt.Sprintf("publication %q does not exist (any more); restart cdcinvalidate to create it", pub)}}
	}
	missing := missingFromPublication(p, tables, cat.infos)
	// The other publication problems, as if the missing tables were in it.
	assumed := p
	assumed.Tables = maps.Clone(p.Tables)
	for _, t := range missing {
		assumed.Tables[t] = true
	}
	problems := append(slices.Clone(cat.problems), publicationProblems(pub, assumed, cat.version, tables, cat.infos)...)
	if len(missing) == 0 {
		if len(problems) > 0 {
			return nil, &ReloadError{mapping.Strings(problems)}
		}
		return nil, nil
	}
	sql := alterPublicationSQL(pub, missing)
	var comment string
	if err := conn.QueryRow(ctx, `SELECT coalesce(obj_description(oid, 'pg_publication'), '') FROM pg_publication WHERE pubname = $1`, pub).Scan(&comment); err != nil {
		return nil, fmt.Errorf("read the comment of publication %q: %w", pub, err)
	}
	if comment != publicationMark {
		problems = append(problems, mapping.Problem{
			Msg: fmt.Sprintf("publication %q does not include %s, which the new rules name; cdcinvalidate did not create this publication (it lacks the comment %q), so it does not change it",
				pub, strings.Join(missing, ", "), publicationMark),
			Fix: fmt.Sprintf("run %s as the owner of the publication and the tables, then send SIGHUP again (or let cdcinvalidate manage it: %s)", sql, markPublicationSQL(pub)),
		})
	}
	if len(problems) > 0 {
		return nil, &ReloadError{mapping.Strings(problems)}
	}
	if _, err := conn.Exec(ctx, sql); err != nil {
		return nil, &ReloadError{[]string{fmt.Sprintf("add %s to publication %q: %s (the role must own the publication and the tables; or run as their owner: %s, then send SIGHUP again)",
			strings.Join(missing, ", "), pub, err, sql)}}
	}
	e.log.Info("added tables to the publication", zap.String("publication", pub), zap.Strings("tables", missing))
	return missing, nil
}

// missingFromPublication returns the rule tables that exist and that the
// publication could publish but does not include (publicationProblems
// reports the others).
func missingFromPublication(p publication, tables []string, infos map[string]mapping.TableInfo) []string {
	var out []string
	for _, t := range tables {
		info := infos[t]
		if p.Tables[t] || !info.Exists || (info.Kind == 'p' && !p.ViaRoot) || (info.PartitionOf != "" && p.ViaRoot) {
			continue
		}
		out = append(out, t)
	}
	return out
}

// waitOlderTransactions waits until every transaction that had an ID when
// it was called has ended. A transaction open across a change of the
// publication (ALTER PUBLICATION, by the engine or the user) is decoded with
// the catalog as it was at each of its changes, so what it wrote to a new
// table before the change is not published. Only after it ended may the
// new rules take over and their keys be flushed; as CREATE INDEX
// CONCURRENTLY does, this waits for as long as it takes.
func (e *Engine) waitOlderTransactions(ctx context.Context, conn *pgx.Conn, tables []string) error {
	var xmax int64
	if err := conn.QueryRow(ctx, `SELECT txid_snapshot_xmax(txid_current_snapshot())`).Scan(&xmax); err != nil {
		return fmt.Errorf("read the transaction horizon: %w", err)
	}
	start := time.Now()
	logged := start
	for {
		var done bool
		if err := conn.QueryRow(ctx, `SELECT txid_snapshot_xmin(txid_current_snapshot()) >= $1`, xmax).Scan(&done); err != nil {
			return fmt.Errorf("read the transaction horizon: %w", err)
		}
		if done {
			return nil
		}
		if time.Since(logged) >= 10*time.Second {
			logged = time.Now()
			e.log.Warn("reload waits for transactions older than it to end, since what they wrote to the new tables "+
				"before the publication included them is not in the stream; the old rules run until then (see "+
				"pg_stat_activity and pg_prepared_xacts for old transactions)",
				zap.Strings("new_tables", tables), zap.Int64("waiting_for_xids_below", xmax), zap.Duration("waited", time.Since(start).Round(time.Second)))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
