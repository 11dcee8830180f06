package engine

import "fmt"

// slotInvalidatedSQL reads, as two columns of pg_replication_slots s, why
// PostgreSQL invalidated a slot: invalidation_reason (PostgreSQL 17+) and
// conflicting (16+, logical slots on a standby), through to_jsonb so the
// query runs on every version (an absent column reads as NULL).
const slotInvalidatedSQL = `coalesce(to_jsonb(s) ->> 'invalidation_reason', ''), coalesce((to_jsonb(s) ->> 'conflicting')::boolean, false)`

// slotInvalidation tells whether PostgreSQL invalidated a slot, from its
// wal_status, invalidation_reason (17+; "" before) and conflicting (16+),
// and why, in words naming the setting involved. Every invalidation loses
// history: the slot can no longer decode, and the changes it had not
// confirmed are gone for it.
func slotInvalidation(walStatus, reason string, conflicting bool) (lost bool, why string) {
	switch reason {
	case "wal_removed":
		return true, "the WAL it needed was removed: it fell behind by more than max_slot_wal_keep_size"
	case "idle_timeout":
		return true, "it was inactive for longer than idle_replication_slot_timeout (PostgreSQL 18+)"
	case "rows_removed":
		return true, "decoding on a standby conflicted with recovery: the primary removed catalog rows the slot needed (hot_standby_feedback = on and primary_slot_name on the standby prevent this)"
	case "wal_level_insufficient":
		return true, "decoding on a standby conflicted with recovery: wal_level on the primary was lowered below logical"
	case "":
	default:
		return true, fmt.Sprintf("invalidation_reason = %s", reason)
	}
	switch {
	case conflicting:
		// PostgreSQL 16 has no invalidation_reason, and sets conflicting
		// for every invalidated logical slot.
		return true, "PostgreSQL 16 does not say why: the slot fell behind by more than max_slot_wal_keep_size, or, " +
			"decoding on a standby, conflicted with recovery because the primary removed catalog rows it needed " +
			"or lowered wal_level below logical (hot_standby_feedback = on and primary_slot_name on the standby " +
			"prevent that)"
	case walStatus == "lost":
		return true, "the WAL it needed was removed: it fell behind by more than max_slot_wal_keep_size"
	}
	return false, ""
}

// currentLSNSQL is the server's current WAL position, on a primary (its
// insert position) and on a standby (its replay position), where
// pg_current_wal_lsn() fails.
const currentLSNSQL = `CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END`
