package engine

import (
	"context"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/metrics"
)

// pollSlot reads the slot's statistics every metrics.slot_poll_interval
// until either context ends (the stream's, or the sink's at shutdown),
// for the slot metrics. Failures are logged at debug level and retried at
// the next tick: they must never disturb streaming.
func (e *Engine) pollSlot(streamCtx, sinkCtx context.Context) {
	ctx, cancel := context.WithCancel(streamCtx)
	defer cancel()
	stop := context.AfterFunc(sinkCtx, cancel)
	defer stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	warn := retainedWarner{threshold: int64(e.cfg.Postgres.WarnRetainedWALMB) << 20, every: 10 * time.Minute}
	tick := time.NewTicker(e.cfg.Metrics.SlotPollInterval)
	defer tick.Stop()
	for {
		if conn == nil {
			c, err := e.setupConn(ctx, "cdcinvalidate-stats")
			if err == nil {
				conn = c
			} else if ctx.Err() == nil {
				e.log.Debug("slot statistics: connect", zap.Error(err))
			}
		}
		if conn != nil {
			st, err := readSlotStats(ctx, conn, e.cfg.Postgres.Slot)
			if err != nil {
				if ctx.Err() == nil {
					e.log.Debug("slot statistics: query", zap.Error(err))
				}
				_ = conn.Close(context.Background())
				conn = nil
			} else {
				e.Metrics.SetSlot(st)
				warn.check(e.log, st.RetainedBytes, time.Now())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func readSlotStats(ctx context.Context, conn *pgx.Conn, slot string) (metrics.SlotStats, error) {
	st := metrics.SlotStats{SafeWALSize: -1, At: time.Now()}
	var confirmed *string
	err := conn.QueryRow(ctx, `
SELECT confirmed_flush_lsn::text,
       coalesce((`+currentLSNSQL+` - restart_lsn)::bigint, 0),
       coalesce(safe_wal_size, -1), coalesce(wal_status, ''), active
FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&confirmed, &st.RetainedBytes, &st.SafeWALSize, &st.WALStatus, &st.Active)
	if err != nil {
		return st, err
	}
	if confirmed != nil {
		st.ConfirmedLSN, _ = pglogrepl.ParseLSN(*confirmed)
	}
	return st, nil
}
