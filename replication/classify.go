package replication

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cdcinvalidate/cdcinvalidate/internal/retry"
)

// PermanentError marks an error that reconnecting cannot fix: the engine
// stops and says what to do (the type shared with the sink).
type PermanentError = retry.PermanentError

func permanent(err error) error { return retry.Permanent(err) }

// isSlotActive recognises the server's refusal to start streaming from a
// slot another process holds (SQLSTATE 55006, object_in_use).
func isSlotActive(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55006"
}

// IsPermanent reports whether err must stop the engine instead of a reconnect.
func IsPermanent(err error) bool {
	return retry.IsPermanent(err) || Classify(err) != nil
}

// Classify is the one judgement of PostgreSQL errors (by SQLSTATE), for
// the stream, the start-up connections and `check`: it returns a
// PermanentError that says what to fix for errors that retrying cannot
// fix, and nil for the others (a lost connection, a server restarting or
// shutting down, too many connections, a slot another process holds).
func Classify(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return nil
	}
	var fix string
	switch pgErr.Code {
	case "28P01": // invalid_password
		fix = "postgres refused the login: check the user and password in postgres.dsn / CDC_POSTGRES_DSN, and pg_hba.conf; the role needs LOGIN REPLICATION"
	case "28000": // invalid_authorization_specification
		fix = "postgres refused the login: check the user in postgres.dsn and pg_hba.conf; the role needs LOGIN REPLICATION and a pg_hba.conf line that allows it"
	case "3D000": // invalid_catalog_name
		fix = "check the database name in postgres.dsn"
	case "42704": // undefined_object: slot or publication missing
		fix = "the slot or the publication is missing: restart cdcinvalidate to create them (after a dropped slot, flush the managed keys first)"
	case "42501": // insufficient_privilege
		fix = "grant the role what it lacks: ALTER ROLE ... REPLICATION, and SELECT on the rule tables"
	case "55000": // object_not_in_prerequisite_state
		fix = "the server or the slot is not in the state logical replication needs (wal_level = logical, a slot that was not invalidated); fix what the message names and restart"
	case "58P01": // undefined_file: WAL the slot needs was removed
		fix = "PostgreSQL removed WAL the slot still needed, so the changes in it are lost to the cache: drop the slot " +
			"(SELECT pg_drop_replication_slot('<slot>')) and start again; the engine then finds the watermark " +
			"without its slot and flushes the keys the rules manage (consistency.on_history_lost: flush; with " +
			"stop, flush them yourself first). Keep WAL for the slot (max_slot_wal_keep_size, no manual removal) " +
			"so that it does not happen again"
	default:
		return nil
	}
	return &PermanentError{Err: fmt.Errorf("postgres: %w (%s)", err, fix)}
}
