package harness

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
)

// DB is what the helpers here use of PostgreSQL: a *pgxpool.Pool or a
// *pgx.Conn.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// queryTimeout bounds each query of a poll.
const queryTimeout = 5 * time.Second

// EngineStreaming reports whether an engine streams from slot: a
// walsender named cdcinvalidate (the engine's application_name) in state
// streaming or catchup holds it. That is the streaming connection, not
// the set-up one that creates the slot (a slot is active while it is
// being created, too). Changes committed before the slot exists are not
// part of its history, so tests wait for this before writing.
func EngineStreaming(ctx context.Context, db DB, slot string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	var n int
	err := db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
WHERE s.slot_name = $1 AND r.application_name = 'cdcinvalidate' AND r.state IN ('streaming', 'catchup')`, slot).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("read pg_stat_replication: %w", err)
	}
	return n == 1, nil
}

// WaitStreaming waits until EngineStreaming holds, at most within. gone,
// when not nil, is asked on every poll whether the engine stopped: its
// error ends the wait. A failing query is retried until within passes.
func WaitStreaming(ctx context.Context, db DB, slot string, within time.Duration, gone func() error) error {
	var last error
	err := Poll(ctx, within, func() (bool, error) {
		ok, err := EngineStreaming(ctx, db, slot)
		if ok {
			return true, nil
		}
		last = err
		if gone != nil {
			return false, gone()
		}
		return false, nil
	})
	if errors.Is(err, ErrPollTimeout) {
		err = fmt.Errorf("no engine streams from slot %q after %s (no walsender named cdcinvalidate streams from it in pg_stat_replication)", slot, within)
		if last != nil {
			err = fmt.Errorf("%w; last error: %v", err, last)
		}
	}
	return err
}

// QueryLSN runs sql, which returns one LSN as text (or NULL, read as 0),
// e.g. SELECT pg_current_wal_lsn()::text.
func QueryLSN(ctx context.Context, db DB, sql string, args ...any) (pglogrepl.LSN, error) {
	var s *string
	if err := db.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		return 0, fmt.Errorf("%s: %w", Abbreviate(sql, 80), err)
	}
	if s == nil {
		return 0, nil
	}
	l, err := pglogrepl.ParseLSN(*s)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", Abbreviate(sql, 80), err)
	}
	return l, nil
}

// Barrier describes a marker transaction for AwaitBarrier.
type Barrier struct {
	// Key is SET in Redis before Commit; the engine must delete it when it
	// applies the transaction Commit commits.
	Key string
	// Commit commits the marker transaction.
	Commit func(ctx context.Context) error
	// Applied, when not nil, must hold too once Key is gone (e.g. the
	// engine's watermark passed the transaction).
	Applied func(ctx context.Context) (bool, error)
	// Gone, when not nil, is asked on every poll whether the engine
	// stopped: its error ends the wait.
	Gone func() error
	// Within bounds the wait after the commit.
	Within time.Duration
}

// AwaitBarrier proves that an engine applied everything committed before
// the barrier: it SETs b.Key, commits b.Commit and waits until the key is
// gone (and b.Applied holds). The engine applies in commit order, so every
// earlier transaction has been applied by then. Errors say which step
// failed.
func AwaitBarrier(ctx context.Context, rdb redis.Cmdable, b Barrier) error {
	if err := rdb.Set(ctx, b.Key, "barrier", 0).Err(); err != nil {
		return fmt.Errorf("barrier %s: set the key: %w", b.Key, err)
	}
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("barrier %s: commit: %w", b.Key, err)
	}
	keyGone := false
	var last error
	err := Poll(ctx, b.Within, func() (bool, error) {
		if !keyGone {
			n, err := rdb.Exists(ctx, b.Key).Result()
			last = err
			keyGone = err == nil && n == 0
		}
		done := keyGone
		if done && b.Applied != nil {
			done, last = b.Applied(ctx) // an error: try again
		}
		if done {
			return true, nil
		}
		if b.Gone != nil {
			return false, b.Gone()
		}
		return false, nil
	})
	switch {
	case err == nil:
		return nil
	case !errors.Is(err, ErrPollTimeout):
		return fmt.Errorf("barrier %s: %w", b.Key, err)
	case !keyGone:
		return fmt.Errorf("barrier %s: the engine did not delete the key within %s of the commit (last error: %v)", b.Key, b.Within, last)
	default:
		return fmt.Errorf("barrier %s: the key is gone, but the barrier was not applied within %s of the commit (last error: %v)", b.Key, b.Within, last)
	}
}

// BarrierRow is the usual barrier of the tests: row id of table barrier,
// whose rule deletes the key barrier:<id>.
func BarrierRow(db DB, id int64, within time.Duration) Barrier {
	return Barrier{
		Key: fmt.Sprintf("barrier:%d", id),
		Commit: func(ctx context.Context) error {
			_, err := db.Exec(ctx, `INSERT INTO barrier VALUES ($1)`, id)
			return err
		},
		Within: within,
	}
}
