package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/verifier"
)

// Status is what `cdcinvalidate status` reports.
type Status struct {
	Slot          string
	SlotExists    bool
	Plugin        string
	Active        bool
	ActivePID     int
	Confirmed     pglogrepl.LSN
	Restart       pglogrepl.LSN
	WALStatus     string
	Invalidated   string // why PostgreSQL invalidated the slot; "" if it did not
	SafeWALSize   int64  // -1: unlimited or unknown
	Current       pglogrepl.LSN
	Publication   string
	PubExists     bool
	PubTables     []string
	Watermark     pglogrepl.LSN // 0: none
	WatermarkKey  string
	WatermarkErr  string
	ServerVersion int
	// Verify holds the verifier's latest figures (verify.enabled), as the
	// engine last stored them; VerifyErr says why there are none.
	Verify    *verifyRecord
	VerifyOn  bool
	VerifyErr string
}

// ReadStatus reads the slot, the publication and the watermark. It
// changes nothing.
func ReadStatus(ctx context.Context, cfg *config.Config) (*Status, error) {
	e := &Engine{cfg: cfg}
	conn, err := e.setupConn(ctx, "cdcinvalidate-status")
	if err != nil {
		return nil, explainPgError(fmt.Errorf("connect to postgres: %w", err))
	}
	defer conn.Close(context.Background())
	st := &Status{Slot: cfg.Postgres.Slot, Publication: cfg.Postgres.Publication, SafeWALSize: -1, WatermarkKey: cfg.WatermarkKey()}
	var current string
	if err := conn.QueryRow(ctx, `SELECT (`+currentLSNSQL+`)::text, current_setting('server_version_num')::int`).Scan(&current, &st.ServerVersion); err != nil {
		return nil, fmt.Errorf("read server position: %w", err)
	}
	st.Current, _ = pglogrepl.ParseLSN(current)
	var confirmed, restart *string
	var pid *int
	var reason string
	var conflicting bool
	err = conn.QueryRow(ctx, `
SELECT coalesce(plugin, ''), active, active_pid, confirmed_flush_lsn::text, restart_lsn::text,
       coalesce(wal_status, ''), coalesce(safe_wal_size, -1), `+slotInvalidatedSQL+`
FROM pg_replication_slots s WHERE slot_name = $1`, st.Slot).Scan(&st.Plugin, &st.Active, &pid, &confirmed, &restart, &st.WALStatus, &st.SafeWALSize, &reason, &conflicting)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("read slot %q: %w", st.Slot, err)
	default:
		st.SlotExists = true
		if lost, cause := slotInvalidation(st.WALStatus, reason, conflicting); lost {
			st.Invalidated = cause
		}
		if pid != nil {
			st.ActivePID = *pid
		}
		if confirmed != nil {
			st.Confirmed, _ = pglogrepl.ParseLSN(*confirmed)
		}
		if restart != nil {
			st.Restart, _ = pglogrepl.ParseLSN(*restart)
		}
	}
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1`, st.Publication)
	if err != nil {
		return nil, fmt.Errorf("read publication %q: %w", st.Publication, err)
	}
	st.PubTables, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read publication %q: %w", st.Publication, err)
	}
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, st.Publication).Scan(&st.PubExists); err != nil {
		return nil, fmt.Errorf("read publication %q: %w", st.Publication, err)
	}
	st.VerifyOn = cfg.Verify.Enabled
	if st.WatermarkKey == "" && !st.VerifyOn {
		return st, nil
	}
	rdb, err := newRedisClient(cfg.Redis, 1)
	if err != nil {
		return nil, err
	}
	defer rdb.Close()
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if st.WatermarkKey != "" {
		v, err := rdb.Get(rctx, st.WatermarkKey).Result()
		switch {
		case errors.Is(err, redis.Nil):
			st.WatermarkErr = "not set (nothing applied yet)"
		case err != nil:
			st.WatermarkErr = "redis: " + err.Error()
		default:
			if st.Watermark, err = pglogrepl.ParseLSN(v); err != nil {
				st.WatermarkErr = fmt.Sprintf("unreadable value %q", v)
			}
		}
	}
	if st.VerifyOn {
		v, err := rdb.Get(rctx, cfg.VerifyKey()).Bytes()
		var rec verifyRecord
		switch {
		case errors.Is(err, redis.Nil):
			st.VerifyErr = "no figures yet (the engine stores them every 10s while it streams)"
		case err != nil:
			st.VerifyErr = "redis: " + err.Error()
		case json.Unmarshal(v, &rec) != nil:
			st.VerifyErr = fmt.Sprintf("unreadable figures in %s", cfg.VerifyKey())
		default:
			st.Verify = &rec
		}
	}
	return st, nil
}

func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%d B (%.1f %ciB)", n, float64(n)/float64(div), "KMGTPE"[exp])
}

// Print writes the status as a readable table.
func (st *Status) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("server WAL position", st.Current.String())
	if !st.SlotExists {
		row("slot", st.Slot+": does not exist (the engine creates it at its first start)")
	} else {
		active := "no"
		if st.Active {
			active = fmt.Sprintf("yes, walsender PID %d", st.ActivePID)
		}
		row("slot", fmt.Sprintf("%s (plugin %s)", st.Slot, st.Plugin))
		row("streaming", active)
		row("confirmed position", st.Confirmed.String())
		if st.Current >= st.Confirmed {
			row("lag (confirmed)", bytesText(int64(st.Current-st.Confirmed)))
		}
		if st.Restart != 0 && st.Current >= st.Restart {
			row("WAL retained by the slot", bytesText(int64(st.Current-st.Restart)))
		}
		if st.WALStatus != "" {
			status := st.WALStatus
			if st.Invalidated != "" {
				status += ": the slot was invalidated (" + st.Invalidated + "); changes were lost, flush the managed keys and recreate the slot"
			}
			row("wal_status", status)
		}
		if st.SafeWALSize >= 0 {
			row("safe_wal_size", bytesText(st.SafeWALSize))
		} else {
			row("safe_wal_size", "unlimited (max_slot_wal_keep_size = -1)")
		}
	}
	switch {
	case !st.PubExists:
		row("publication", st.Publication+": does not exist (the engine creates it at its first start)")
	default:
		row("publication", fmt.Sprintf("%s: %s", st.Publication, strings.Join(st.PubTables, ", ")))
	}
	switch {
	case st.WatermarkKey == "":
		row("watermark", "off (sink.watermark: false)")
	case st.WatermarkErr != "":
		row("watermark", st.WatermarkKey+": "+st.WatermarkErr)
	default:
		row("watermark", fmt.Sprintf("%s = %s", st.WatermarkKey, st.Watermark))
		if st.Current >= st.Watermark {
			row("lag (applied in Redis)", bytesText(int64(st.Current-st.Watermark)))
		}
	}
	switch {
	case !st.VerifyOn:
		row("consistency", "not measured (verify.enabled: false)")
	case st.Verify == nil:
		row("consistency", st.VerifyErr)
	default:
		for _, f := range st.Verify.Windows {
			row("consistency after "+verifier.WindowLabel(f.Window), fmt.Sprintf("%.6f of %d judged checks (absent %d, newer %d, stale %d; unverifiable %d; dropped %d) as of %s",
				f.Ratio(), f.Absent+f.Newer+f.Stale, f.Absent, f.Newer, f.Stale, f.Unverifiable, f.Dropped, st.Verify.At.Format(time.RFC3339)))
		}
	}
	_ = tw.Flush()
}
