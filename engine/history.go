package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
	"github.com/cdcinvalidate/cdcinvalidate/sink"
)

// sessionChecks returns the sink's OnSession hook: the start-up
// consistency checks (checkHistory) run every time a replication session
// acquires the slot, not once per process. A standby that takes over hours
// after it started must not trust what it saw then: Redis may have gone
// back in time meanwhile, or the last leader may have run other rules.
// first is what preparePostgres found or made at process start; whether
// the slot was just created (or recreated after it was invalidated) counts
// for the first session only, and "just created" only while nobody has
// moved the slot's confirmed position since.
func (e *Engine) sessionChecks(rdb redis.UniversalClient, first slotState) func(context.Context, replication.LSN) error {
	sessions := 0 // used by the sink's goroutine only
	return func(ctx context.Context, start replication.LSN) error {
		st := slotState{confirmed: start}
		if sessions == 0 {
			st.created = first.created && start == first.confirmed
			st.lost = first.lost
		}
		sessions++
		if sessions > 1 {
			e.log.Info("replication session acquired the slot; checking the cache's history again", zap.Stringer("confirmed_lsn", start))
		}
		patterns, gens := e.sink.Managed()
		if err := e.checkHistory(ctx, rdb, e.sink, &st, patterns, gens); err != nil {
			return err
		}
		if sessions == 1 && (len(st.flushedGlobs) > 0 || len(st.flushedGens) > 0) {
			// What this flush covers: transactions that committed below
			// the WAL position read at process start, before it (the
			// stream waits for these checks, so it reads this after).
			e.stream.SetFlushed(first.walNow, st.flushedGlobs, st.flushedGens)
		}
		return nil
	}
}

// checkHistory decides, before streaming, whether the cache can be trusted
// to reflect every change up to the slot's confirmed position, and flushes
// the managed keys (or stops, by consistency.on_history_lost) when it
// cannot. The evidence is the watermark key, which the sink keeps at or
// above the confirmed position while Redis keeps its writes:
//   - a new slot while a watermark exists: the slot was dropped and created
//     again (by someone, or after a failover to a standby without the slot);
//   - an existing slot without a watermark, or with one below the slot's
//     confirmed position: Redis lost acknowledged writes;
//   - an invalidated slot (found by ensureSlot).
//
// A new slot without a watermark is a first start: cached values may
// predate the slot, so they are flushed unless consistency.on_first_start
// is keep.
func (e *Engine) checkHistory(ctx context.Context, rdb redis.UniversalClient, sk *sink.Sink, st *slotState, patterns, gens []string) error {
	key := e.cfg.WatermarkKey()
	var lost, first string
	switch {
	case st.lost != "":
		lost = st.lost
	case key == "":
		// Without a watermark nothing can be proved either way.
		if st.created {
			first = "the slot was just created"
		}
	default:
		val, err := rdb.Get(ctx, key).Result()
		exists := err == nil
		if err != nil && !errors.Is(err, redis.Nil) {
			if perm := sink.Classify(err); perm != nil {
				return &SetupError{[]string{fmt.Sprintf("read watermark %s: %v", key, perm)}}
			}
			return fmt.Errorf("read watermark %s: %w", key, err)
		}
		var mark pglogrepl.LSN
		if exists {
			if mark, err = pglogrepl.ParseLSN(val); err != nil {
				exists = false
			}
		}
		switch {
		case st.created && exists:
			lost = fmt.Sprintf("slot %q did not exist although Redis holds the watermark %s = %s from an earlier one: "+
				"the slot was dropped (or this is a promoted standby without it), so the changes since are "+
				"unknown", e.cfg.Postgres.Slot, key, val)
		case st.created:
			first = "the slot was just created"
		case !exists:
			lost = fmt.Sprintf("slot %q exists but Redis has no watermark %s: Redis lost its data (restart without persistence, failover, FLUSHALL) or this cache never had one", e.cfg.Postgres.Slot, key)
		case mark < st.confirmed:
			lost = fmt.Sprintf("the watermark %s = %s in Redis is below the slot's confirmed position %s: Redis went "+
				"back in time (restore, failover to a lagging replica), so keys deleted since may be back",
				key, mark, st.confirmed)
		case e.cfg.Redis.Cluster:
			lost, err = shardHistoryLost(ctx, rdb, key, st.confirmed)
			if err != nil {
				return err
			}
		}
	}
	if lost == "" && first == "" {
		return e.flushNewlyManaged(ctx, rdb, sk, st, patterns, gens)
	}
	switch {
	case lost != "" && e.cfg.Consistency.OnHistoryLost != config.HistoryLostFlush:
		return &SetupError{[]string{lost + "; flush the keys the rules manage " +
			"(patterns: " + fmt.Sprint(patterns) + ") and start again, " +
			"or set consistency.on_history_lost: flush to let cdcinvalidate do it"}}
	case lost != "":
		e.log.Error("cannot prove the cache saw every change; flushing every managed key before streaming", zap.String("reason", lost), zap.Strings("patterns", patterns))
	case first != "" && e.cfg.Consistency.OnFirstStart == config.FirstStartFlush:
		e.log.Warn("first start: flushing every managed key, since cached values may predate the slot (consistency.on_first_start: keep trusts them)", zap.Strings("patterns", patterns))
	default:
		// A first start that trusts the cache: nothing before the slot's
		// consistent point is owed, so the watermark may say so (the sink
		// then checks later batches against it).
		if err := sk.SetWatermark(ctx, st.confirmed); err != nil {
			return err
		}
		return e.recordManaged(ctx, rdb, managedSet(patterns, gens))
	}
	if err := sk.FlushSome(ctx, patterns, gens); err != nil {
		return err
	}
	st.flushed(patterns, gens)
	if err := sk.SetWatermark(ctx, st.confirmed); err != nil {
		return err
	}
	e.log.Info("flushed the managed keys", zap.Uint64("deleted", sk.Stats.Deleted.Load()))
	return e.recordManaged(ctx, rdb, managedSet(patterns, gens))
}

// shardHistoryLost checks, on a cluster, each master's watermark against
// the slot's confirmed position: one below it means that master lost
// acknowledged writes (while the engine was stopped, or before its last
// flush). A missing one proves nothing (a master's lowest slot changed by
// resharding starts a new key) and is started by the first batch.
func shardHistoryLost(ctx context.Context, rdb redis.UniversalClient, main string, confirmed pglogrepl.LSN) (string, error) {
	keys, err := sink.ShardWatermarkKeys(ctx, rdb, main)
	if err != nil {
		return "", fmt.Errorf("list the cluster's masters for their watermarks: %w", err)
	}
	for _, k := range keys {
		val, err := rdb.Get(ctx, k).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("read watermark %s: %w", k, err)
		}
		if mark, perr := pglogrepl.ParseLSN(val); perr == nil && mark < confirmed {
			return fmt.Sprintf("the watermark %s = %s of a cluster master is below the slot's confirmed position %s: "+
				"that master lost acknowledged writes (a failover to a lagging replica, a restart without "+
				"persistence), so keys deleted since may be back", k, mark, confirmed), nil
		}
	}
	return "", nil
}

// managedSet lists what the rules manage, as the members of the Redis set
// ManagedKey: "pattern:<glob>" and "generation:<key>".
func managedSet(globs, gens []string) []string {
	var out []string
	for _, g := range globs {
		out = append(out, "pattern:"+g)
	}
	for _, g := range gens {
		out = append(out, "generation:"+g)
	}
	return out
}

// replaceSetScript replaces the set KEYS[1] with ARGV, atomically (UNLINK
// and SADD: the commands an ACL user needs, besides SMEMBERS to read it).
var replaceSetScript = redis.NewScript(`
redis.call('UNLINK', KEYS[1])
if #ARGV > 0 then redis.call('SADD', KEYS[1], unpack(ARGV)) end
return 1`)

// recordManaged replaces the record of what the rules manage.
func (e *Engine) recordManaged(ctx context.Context, rdb redis.UniversalClient, members []string) error {
	key := e.cfg.ManagedKey()
	if key == "" {
		return nil
	}
	args := make([]any, len(members))
	for i, m := range members {
		args[i] = m
	}
	if err := replaceSetScript.Run(ctx, rdb, []string{key}, args...).Err(); err != nil && !errors.Is(err, redis.Nil) {
		if perm := sink.Classify(err); perm != nil {
			return &SetupError{[]string{fmt.Sprintf("record the managed patterns in %s: %v", key, perm)}}
		}
		return fmt.Errorf("record the managed patterns in %s: %w", key, err)
	}
	return nil
}

// flushNewlyManaged flushes, at a start that otherwise trusts the cache,
// the patterns and generation keys that the rules manage now but did not
// when the engine last ran (rules edited while it was stopped, a reload
// whose flush may not have reached Redis, or a standby with new rules
// taking over from a leader with old ones in a rolling change): their cached values were not
// kept consistent. It follows consistency.on_first_start. Without a record
// (an engine from before the record existed) nothing is flushed and the
// record is started.
func (e *Engine) flushNewlyManaged(ctx context.Context, rdb redis.UniversalClient, sk *sink.Sink, st *slotState, allPatterns, allGens []string) error {
	key := e.cfg.ManagedKey()
	if key == "" {
		return nil
	}
	now := managedSet(allPatterns, allGens)
	had, err := rdb.SMembers(ctx, key).Result()
	if err != nil {
		if perm := sink.Classify(err); perm != nil {
			return &SetupError{[]string{fmt.Sprintf("read the managed patterns in %s: %v", key, perm)}}
		}
		return fmt.Errorf("read the managed patterns in %s: %w", key, err)
	}
	if len(had) == 0 {
		e.log.Info("no record of the patterns the rules managed before; starting one", zap.String("key", key))
		return e.recordManaged(ctx, rdb, now)
	}
	if len(had) == len(now) && !slices.ContainsFunc(now, func(m string) bool { return !slices.Contains(had, m) }) {
		return nil // the same rules: nothing to flush or to write
	}
	var globs, gens []string
	for _, m := range now {
		if slices.Contains(had, m) {
			continue
		}
		if g, ok := strings.CutPrefix(m, "pattern:"); ok {
			globs = append(globs, g)
		} else if g, ok := strings.CutPrefix(m, "generation:"); ok {
			gens = append(gens, g)
		}
	}
	if (len(globs) > 0 || len(gens) > 0) && e.cfg.Consistency.OnFirstStart == config.FirstStartFlush {
		e.log.Warn("the rules manage keys that the last run did not (rules edited while the engine was stopped, a "+
			"reload, or a takeover from an instance with other rules): flushing them, since their cached values "+
			"may be stale (consistency.on_first_start: keep trusts them)",
			zap.Strings("patterns", globs), zap.Strings("generations", gens))
		if err := sk.FlushSome(ctx, globs, gens); err != nil {
			return err
		}
		st.flushed(globs, gens)
	}
	return e.recordManaged(ctx, rdb, now)
}
