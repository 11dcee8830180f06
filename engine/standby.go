package engine

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// Logical decoding on a physical standby (PostgreSQL 16+): the slot lives
// on the standby, the publication is created on the primary (a standby
// is read-only) and reaches the standby by replication. The slot is
// invalidated (a conflict with recovery) when the primary removes catalog
// rows it still needs, unless the standby sends hot_standby_feedback,
// through a physical slot (primary_slot_name) so that the feedback
// survives disconnections.

// standbyProblems says why the engine cannot decode from this server,
// a standby when inRecovery; none for a primary.
func standbyProblems(version int, inRecovery, failoverSlot bool) []string {
	if !inRecovery {
		return nil
	}
	var out []string
	if version < 160000 {
		out = append(out, fmt.Sprintf("postgres.dsn names a standby (the server is in recovery) of PostgreSQL %d.%d, "+
			"and logical decoding on a standby needs PostgreSQL 16 or later: point postgres.dsn at the primary "+
			"(with several hosts in the DSN, add target_session_attrs=read-write)", version/10000, version%10000))
	}
	if failoverSlot {
		out = append(out, "postgres.failover_slot: a slot on a standby cannot be a failover slot (PostgreSQL "+
			"synchronizes only the primary's slots): set failover_slot: false to decode from this standby, or "+
			"point postgres.dsn at the primary (with several hosts in the DSN, add "+
			"target_session_attrs=read-write)")
	}
	return out
}

// standbySettings reads what protects a standby's slot from conflicts.
func standbySettings(ctx context.Context, conn *pgx.Conn) (feedback bool, primarySlot string, err error) {
	var fb string
	if err := conn.QueryRow(ctx, `SELECT current_setting('hot_standby_feedback'), current_setting('primary_slot_name')`).Scan(&fb, &primarySlot); err != nil {
		return false, "", fmt.Errorf("read standby settings: %w", err)
	}
	return fb == "on", primarySlot, nil
}

// standbySettingsAdvice is a warning about a standby's settings, "" when
// they protect its slot.
func standbySettingsAdvice(feedback bool, primarySlot string) string {
	switch {
	case !feedback:
		return "hot_standby_feedback is off on this standby: VACUUM on the primary can remove catalog rows the slot " +
			"needs, and PostgreSQL then invalidates the slot (rows_removed), which makes the engine flush every " +
			"managed key (or stop); set hot_standby_feedback = on on the standby, and primary_slot_name to a " +
			"physical slot on the primary"
	case primarySlot == "":
		return "this standby uses no physical slot on the primary (primary_slot_name is empty): while it is " +
			"disconnected its hot_standby_feedback does not hold back VACUUM on the primary, which can " +
			"invalidate the slot (rows_removed) and make the engine flush; create a physical slot on the primary " +
			"and set primary_slot_name"
	}
	return ""
}

// warnStandby logs what decoding from a standby implies.
func (e *Engine) warnStandby(ctx context.Context, conn *pgx.Conn) {
	feedback, primarySlot, err := standbySettings(ctx, conn)
	if err != nil {
		e.log.Warn("decoding from a standby; could not read its settings", zap.Error(err))
		return
	}
	e.log.Info("decoding from a standby (the server is in recovery)", zap.Bool("hot_standby_feedback", feedback), zap.String("primary_slot_name", primarySlot))
	if advice := standbySettingsAdvice(feedback, primarySlot); advice != "" {
		e.log.Warn(advice)
	}
}
