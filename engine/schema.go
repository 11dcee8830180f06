package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/mapping"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// A table that stops matching its rules while the engine streams (renamed,
// moved to another schema, dropped from the publication, published as its
// partitions, or given a partition whose replica identity cannot carry the
// old keys) stops the engine: its changes are not applied, so they must not
// be confirmed silently. Before it stops, the engine takes the table's
// patterns out of the record of managed patterns (history.go), so the next
// start flushes them (consistency.on_first_start: flush): the changes the
// engine missed, or will skip when it replays them under the other name,
// leave no stale key behind.

// flushed records what a flush at this start covered.
func (st *slotState) flushed(globs, gens []string) {
	st.flushedGlobs = append(st.flushedGlobs, globs...)
	st.flushedGens = append(st.flushedGens, gens...)
}

// currentWAL reads the server's WAL position: the insert position on a
// primary, the replayed position on a standby.
func currentWAL(ctx context.Context, conn *pgx.Conn) (replication.LSN, error) {
	var s string
	if err := conn.QueryRow(ctx, `SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text`).Scan(&s); err != nil {
		return 0, fmt.Errorf("read the current WAL position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		return 0, fmt.Errorf("parse the current WAL position %q: %w", s, err)
	}
	return lsn, nil
}

// markUnappliedScript removes ARGV[2..] from the managed record (KEYS[1])
// and adds the marker ARGV[1], so the set stays non-empty (an empty record
// means "no record", which flushes nothing). It uses only the commands the
// record needs anyway (SMEMBERS, UNLINK, SADD), so the ACL stays as it is.
var markUnappliedScript = redis.NewScript(`
local drop = {}
for i = 2, #ARGV do drop[ARGV[i]] = true end
local keep = {ARGV[1]}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not drop[m] then keep[#keep + 1] = m end
end
redis.call('UNLINK', KEYS[1])
redis.call('SADD', KEYS[1], unpack(keep))
return 1`)

// markUnapplied makes the next start flush globs and increment gens, whose
// keys may be stale since the engine did not apply some changes, and
// returns cause with what the next start does (or what the operator must).
func (e *Engine) markUnapplied(rdb redis.UniversalClient, globs, gens []string, cause error) error {
	if len(globs) == 0 && len(gens) == 0 {
		return cause
	}
	manual := fmt.Errorf("%w. Keys of patterns %v may be stale: flush them (and increment generation keys %v) before starting again", cause, globs, gens)
	key := e.cfg.ManagedKey()
	if key == "" {
		return manual // without the record (sink.watermark: false) nothing is remembered
	}
	args := []any{"unapplied:" + time.Now().UTC().Format(time.RFC3339)}
	for _, m := range managedSet(globs, gens) {
		args = append(args, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := markUnappliedScript.Run(ctx, rdb, []string{key}, args...).Err(); err != nil && !errors.Is(err, redis.Nil) {
		e.log.Error("could not record in Redis that the next start must flush the patterns of the table", zap.String("key", key), zap.Error(err))
		return manual
	}
	if e.cfg.Consistency.OnFirstStart != "flush" {
		return manual
	}
	return fmt.Errorf("%w. The next start flushes the keys of patterns %v, which may be stale", cause, append(slices.Clone(globs), gens...))
}

// watchCatalog checks the rule tables and the publication against the
// rules every postgres.catalog_check_interval, as at start: a table
// dropped from the publication sends nothing more, and a partition
// created since the start sends its first change only when written. A
// problem stops the engine (after markUnapplied: changes may have been
// confirmed without their keys). Failures to read the catalog are logged
// and retried at the next tick.
func (e *Engine) watchCatalog(ctx context.Context, rdb redis.UniversalClient) error {
	every := e.cfg.Postgres.CatalogCheckInterval
	if every <= 0 {
		return nil
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		problems, globs, gens, err := e.recheckCatalog(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			e.log.Warn("could not check the rule tables and the publication; trying again later", zap.Error(err), zap.Duration("every", every))
			continue
		}
		if len(problems) == 0 {
			continue
		}
		cause := fmt.Errorf("the rule tables or the publication changed while streaming, so the rules no longer see every change: %s", strings.Join(problems, "; "))
		return e.markUnapplied(rdb, globs, gens, cause)
	}
}

// recheckCatalog runs the start-up checks of the rules and the
// publication again and returns the problems and the patterns and
// generation keys of the rules concerned (every rule's, for a problem of
// the publication).
func (e *Engine) recheckCatalog(ctx context.Context) (problems, globs, gens []string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := e.setupConn(ctx, "cdcinvalidate-check")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(context.Background())
	// The running rules: a reload swaps them under reloadMu. While one
	// runs (it checks the catalog itself), this check waits for the next
	// tick rather than block the engine's shutdown behind it.
	if !e.reloadMu.TryLock() {
		return nil, nil, nil, nil
	}
	m := e.mapper
	e.reloadMu.Unlock()
	cat, err := checkCatalog(ctx, conn, m)
	if err != nil {
		return nil, nil, nil, err
	}
	pub, err := readPublication(ctx, conn, e.cfg.Postgres.Publication, cat.version)
	if err != nil {
		return nil, nil, nil, err
	}
	var ps []mapping.Problem
	if !pub.Exists {
		ps = append(ps, mapping.Problem{Msg: fmt.Sprintf("publication %q does not exist any more", e.cfg.Postgres.Publication), Fix: "restart cdcinvalidate to create it"})
		globs, gens = m.Globs(), m.Generations()
	} else {
		// A table dropped from the publication concerns its own rules;
		// any other problem of the publication concerns them all.
		missing := missingFromPublication(pub, m.Tables(), cat.infos)
		for _, t := range missing {
			g, n := m.TableGlobs(t)
			globs, gens = append(globs, g...), append(gens, n...)
		}
		assumed := pub
		assumed.Tables = maps.Clone(pub.Tables)
		for _, t := range missing {
			assumed.Tables[t] = true
		}
		if len(publicationProblems(e.cfg.Postgres.Publication, assumed, cat.version, m.Tables(), cat.infos)) > 0 {
			globs, gens = m.Globs(), m.Generations()
		}
		ps = append(ps, publicationProblems(e.cfg.Postgres.Publication, pub, cat.version, m.Tables(), cat.infos)...)
	}
	for _, t := range m.Tables() {
		var tps []mapping.Problem
		for _, r := range m.Rules(t) {
			tps = append(tps, mapping.CheckTableProblems(r, cat.infos[t])...)
		}
		if len(tps) == 0 {
			continue
		}
		if !cat.infos[t].Exists {
			tps[len(tps)-1].Msg += " (renamed, moved to another schema or dropped while the engine streamed?)"
		}
		ps = append(ps, tps...)
		g, n := m.TableGlobs(t)
		globs, gens = append(globs, g...), append(gens, n...)
	}
	slices.Sort(globs)
	slices.Sort(gens)
	return mapping.Strings(ps), slices.Compact(globs), slices.Compact(gens), nil
}
