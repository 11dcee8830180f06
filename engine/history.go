package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/sink"
)

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
func (e *Engine) checkHistory(ctx context.Context, rdb *redis.Client, sk *sink.Sink, st slotState) error {
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
			lost = fmt.Sprintf("slot %q did not exist although Redis holds the watermark %s = %s from an earlier one: the slot was dropped (or this is a promoted standby without it), so the changes since are unknown", e.cfg.Postgres.Slot, key, val)
		case st.created:
			first = "the slot was just created"
		case !exists:
			lost = fmt.Sprintf("slot %q exists but Redis has no watermark %s: Redis lost its data (restart without persistence, failover, FLUSHALL) or this cache never had one", e.cfg.Postgres.Slot, key)
		case mark < st.confirmed:
			lost = fmt.Sprintf("the watermark %s = %s in Redis is below the slot's confirmed position %s: Redis went back in time (restore, failover to a lagging replica), so keys deleted since may be back", key, mark, st.confirmed)
		}
	}
	switch {
	case lost != "" && e.cfg.Consistency.OnHistoryLost != "flush":
		return &SetupError{[]string{lost + "; flush the keys the rules manage (patterns: " + fmt.Sprint(e.mapper.Globs()) + ") and start again, or set consistency.on_history_lost: flush to let cdcinvalidate do it"}}
	case lost != "":
		e.log.Error("cannot prove the cache saw every change; flushing every managed key before streaming", zap.String("reason", lost), zap.Strings("patterns", e.mapper.Globs()))
	case first != "" && e.cfg.Consistency.OnFirstStart == "flush":
		e.log.Warn("first start: flushing every managed key, since cached values may predate the slot (consistency.on_first_start: keep trusts them)", zap.Strings("patterns", e.mapper.Globs()))
	default:
		return nil
	}
	if err := sk.Flush(ctx); err != nil {
		return err
	}
	if err := sk.SetWatermark(ctx, st.confirmed); err != nil {
		return err
	}
	e.log.Info("flushed the managed keys", zap.Uint64("deleted", sk.Stats.Deleted.Load()))
	return nil
}
