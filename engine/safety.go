package engine

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// appName is the application_name of the streaming connection
// (replication/stream.go sets it unless the DSN names one).
const appName = "cdcinvalidate"

// syncStandbyMatch reports whether synchronous_standby_names would make a
// walsender with application name app a synchronous standby: then every
// commit on the primary waits until the engine confirms it, that is, until
// Redis acknowledged its deletes, and a Redis outage blocks all writes.
func syncStandbyMatch(setting, app string) bool {
	s := strings.TrimSpace(setting)
	if s == "" {
		return false
	}
	// FIRST n (a, b), ANY n (a, b), n (a, b), or a plain list.
	if i := strings.IndexByte(s, '('); i >= 0 {
		s = strings.TrimSuffix(strings.TrimSpace(s[i+1:]), ")")
	}
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if unq, ok := strings.CutPrefix(name, `"`); ok {
			name = strings.TrimSuffix(unq, `"`)
			if name == app {
				return true
			}
			continue
		}
		if name == "*" || strings.EqualFold(name, app) {
			return true
		}
	}
	return false
}

// warnIfSyncStandby logs a warning when the server would treat the engine
// as a synchronous standby.
func (e *Engine) warnIfSyncStandby(ctx context.Context, conn *pgx.Conn) {
	var setting string
	if err := conn.QueryRow(ctx, `SELECT current_setting('synchronous_standby_names')`).Scan(&setting); err != nil {
		return
	}
	app := appName
	if v := e.pgApplicationName(); v != "" {
		app = v
	}
	if syncStandbyMatch(setting, app) {
		e.log.Warn("synchronous_standby_names matches the engine's application_name: the engine can become a "+
			"synchronous standby, and then every commit waits for Redis (a Redis outage blocks all writes); list "+
			"the real standbys by name instead",
			zap.String("synchronous_standby_names", setting), zap.String("application_name", app))
	}
}

// pgApplicationName returns the application_name the DSN sets, if any.
func (e *Engine) pgApplicationName() string {
	cfg, err := pgx.ParseConfig(e.cfg.Postgres.DSN)
	if err != nil || cfg.RuntimeParams == nil {
		return ""
	}
	return cfg.RuntimeParams["application_name"]
}

// retainedWarner logs when the slot keeps more WAL than the threshold, at
// most once per interval.
type retainedWarner struct {
	threshold int64
	every     time.Duration
	last      time.Time
}

func (w *retainedWarner) check(log *zap.Logger, retained int64, now time.Time) bool {
	if w.threshold <= 0 || retained < w.threshold || now.Sub(w.last) < w.every {
		return false
	}
	w.last = now
	log.Warn("the replication slot retains a lot of WAL on the database server's disk: the engine is behind or was down; if it stays so the disk fills (set max_slot_wal_keep_size on the server as a guard)",
		zap.Int64("retained_bytes", retained), zap.Int64("warn_above_bytes", w.threshold))
	return true
}
