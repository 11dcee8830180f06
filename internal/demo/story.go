package main

// The story: the steps the user sees, each announcing its effect and
// checking it.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func (d *demo) story(ctx context.Context) error {
	d.section(1, "Readers fill the cache (cache-aside: on a miss, SELECT from PostgreSQL, then SET with a TTL)")
	if err := d.fill(ctx, "user:1", "user:2", "user:email:ann@example.com", "user:email:bob@example.com",
		"order:100", "order:101", "user:1:orders", "user:2:orders"); err != nil {
		return err
	}
	if err := d.showCache(ctx); err != nil {
		return err
	}

	d.section(2, "Ann's name changes: both keys of her row are invalidated")
	if err := d.sqlStep(ctx, `UPDATE users SET name = 'Ann Lee' WHERE id = 1`,
		"user:1", "user:email:ann@example.com"); err != nil {
		return err
	}

	d.section(3, "Ann changes her email address: the keys of the old AND the new address go")
	d.say("%s(user:email:ann.lee@example.com holds a cached \"not found\" from a lookup made before the change)", indent)
	if err := d.fill(ctx, "user:1", "user:email:ann@example.com", "user:email:ann.lee@example.com"); err != nil {
		return err
	}
	if err := d.sqlStep(ctx, `UPDATE users SET email = 'ann.lee@example.com' WHERE id = 1`,
		"user:1", "user:email:ann@example.com", "user:email:ann.lee@example.com"); err != nil {
		return err
	}

	d.section(4, "A new order for Bob: the order's key and Bob's order list")
	if err := d.fill(ctx, "order:102"); err != nil {
		return err
	}
	if err := d.sqlStep(ctx, `INSERT INTO orders (id, user_id, total) VALUES (102, 2, 40.00)`,
		"order:102", "user:2:orders"); err != nil {
		return err
	}

	d.section(5, "One transaction, two tables: Bob is renamed and order 101 moves from Bob to Ann")
	if err := d.fill(ctx, "user:2:orders"); err != nil {
		return err
	}
	if err := d.txnStep(ctx, []string{
		`UPDATE users SET name = 'Bob Stone' WHERE id = 2`,
		`UPDATE orders SET user_id = 1 WHERE id = 101`,
	}, "user:2", "user:email:bob@example.com", "order:101", "user:2:orders", "user:1:orders"); err != nil {
		return err
	}

	d.section(6, "A transaction that rolls back invalidates nothing")
	if err := d.fill(ctx, "user:1", "user:email:ann.lee@example.com", "user:1:orders", "order:101"); err != nil {
		return err
	}
	if err := d.rollbackStep(ctx, []string{
		`DELETE FROM orders WHERE user_id = 1`,
		`DELETE FROM users WHERE id = 1`,
	}); err != nil {
		return err
	}

	d.section(7, "An order is deleted: the order's key and its owner's order list (old row values)")
	if err := d.sqlStep(ctx, `DELETE FROM orders WHERE id = 100`,
		"order:100", "user:1:orders"); err != nil {
		return err
	}

	d.section(8, "TRUNCATE orders: every key of every orders template, found with SCAN MATCH order:* and user:*:orders, then UNLINK")
	d.say("%s(order:999 is a leftover whose row the engine never saw: the patterns still find it)", indent)
	if err := d.fill(ctx, "order:101", "order:102", "order:999", "user:1:orders", "user:2:orders"); err != nil {
		return err
	}
	if err := d.sqlStep(ctx, `TRUNCATE orders`,
		"order:101", "order:102", "order:999", "user:1:orders", "user:2:orders"); err != nil {
		return err
	}

	d.section(9, "Another service writes with plain SQL, no cache code at all (here: the psql command line)")
	if err := d.fill(ctx, "user:2", "user:email:bob@example.com"); err != nil {
		return err
	}
	if err := d.psqlStep(ctx, `UPDATE users SET email = 'bob@stone.example' WHERE id = 2`,
		"user:2", "user:email:bob@example.com"); err != nil {
		return err
	}

	d.section(10, "A leaderboard with write-behind: Redis absorbs the increments, a flusher applies them to PostgreSQL exactly once")
	return d.leaderboard(ctx)
}

func (d *demo) section(n int, title string) {
	d.say("")
	d.say("[%d] %s", n, title)
}

var (
	userKeyRE   = regexp.MustCompile(`^user:(\d+)$`)
	emailKeyRE  = regexp.MustCompile(`^user:email:(.+)$`)
	ordersKeyRE = regexp.MustCompile(`^user:(\d+):orders$`)
	orderKeyRE  = regexp.MustCompile(`^order:(\d+)$`)
)

// load reads what a cache-aside reader would cache under key: the row as
// JSON, or "null" for a cached "not found".
func (d *demo) load(ctx context.Context, key string) (string, error) {
	var q, arg string
	switch {
	case userKeyRE.MatchString(key):
		q, arg = `SELECT row_to_json(u)::text FROM users u WHERE id = $1::bigint`, userKeyRE.FindStringSubmatch(key)[1]
	case ordersKeyRE.MatchString(key):
		q, arg = `SELECT coalesce(array_to_json(array_agg(o ORDER BY o.id)), '[]')::text FROM orders o WHERE user_id = $1::bigint`, ordersKeyRE.FindStringSubmatch(key)[1]
	case emailKeyRE.MatchString(key):
		q, arg = `SELECT row_to_json(u)::text FROM users u WHERE email = $1`, emailKeyRE.FindStringSubmatch(key)[1]
	case orderKeyRE.MatchString(key):
		q, arg = `SELECT row_to_json(o)::text FROM orders o WHERE id = $1::bigint`, orderKeyRE.FindStringSubmatch(key)[1]
	default:
		return "", fmt.Errorf("no loader for key %q", key)
	}
	var v string
	err := d.db.QueryRow(ctx, q, arg).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "null", nil
	}
	if err != nil {
		return "", fmt.Errorf("load %s: %w", key, err)
	}
	return v, nil
}

// fill caches keys the way cache-aside readers do.
func (d *demo) fill(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		v, err := d.load(ctx, k)
		if err != nil {
			return err
		}
		if err := d.rdb.Set(ctx, k, v, cacheTTL).Err(); err != nil {
			return fmt.Errorf("SET %s: %w", k, err)
		}
		d.evMu.Lock()
		d.cached[k] = true
		d.evMu.Unlock()
		shown := v
		if len(shown) > 64 {
			shown = shown[:61] + "..."
		}
		d.say("%scache  SET %-30s %s  EX %d", indent, k, shown, int(cacheTTL.Seconds()))
	}
	return nil
}

// sqlStep runs one statement in its own transaction (autocommit).
func (d *demo) sqlStep(ctx context.Context, sql string, expect ...string) error {
	st, err := d.begin(expect)
	if err != nil {
		return err
	}
	d.say("%sSQL   %s;", indent, sql)
	if _, err := d.db.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	d.committed(ctx, st, time.Now())
	return d.finish(ctx, st)
}

// txnStep runs statements in one transaction, showing that nothing is
// invalidated before COMMIT.
func (d *demo) txnStep(ctx context.Context, stmts []string, expect ...string) error {
	st, err := d.begin(expect)
	if err != nil {
		return err
	}
	conn, err := d.beginTxn(ctx, stmts)
	if err != nil {
		return err
	}
	defer conn.Release()
	const pause = 500 * time.Millisecond
	select {
	case <-time.After(pause):
	case <-ctx.Done():
		_, _ = conn.Exec(context.Background(), "ROLLBACK")
		return ctx.Err()
	}
	d.evMu.Lock()
	early := len(st.got) + len(st.unexpected)
	d.evMu.Unlock()
	if early > 0 {
		_, _ = conn.Exec(context.Background(), "ROLLBACK")
		return errors.New("keys were invalidated before the transaction committed")
	}
	d.say("%s      (%d ms later, not yet committed: nothing invalidated; readers still see the old rows)", indent, pause.Milliseconds())
	d.say("%sSQL   COMMIT;", indent)
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("COMMIT: %w", err)
	}
	d.committed(ctx, st, time.Now())
	return d.finish(ctx, st)
}

// rollbackStep runs statements in a transaction that rolls back, then waits
// until the slot's confirmed position passed the rollback: the engine has
// read past it, so anything it would have deleted is deleted by then.
func (d *demo) rollbackStep(ctx context.Context, stmts []string) error {
	st, err := d.begin(nil)
	if err != nil {
		return err
	}
	close(st.known)
	conn, err := d.beginTxn(ctx, stmts)
	if err != nil {
		return err
	}
	defer conn.Release()
	d.say("%sSQL   ROLLBACK;", indent)
	if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
		return fmt.Errorf("ROLLBACK: %w", err)
	}
	// A committed logical decoding message after the ROLLBACK is a marker
	// in the WAL: once the slot's confirmed position passed it, the engine
	// has read (and skipped) the rolled-back transaction.
	marker, err := harness.QueryLSN(ctx, d.db, `SELECT pg_logical_emit_message(true, 'cdcinvalidate-demo', 'after the rollback')::text`)
	if err != nil {
		return err
	}
	confirmed, took, err := d.waitConfirmed(ctx, marker, stepTimeout)
	if err != nil {
		return err
	}
	d.say("%s      a marker written after the ROLLBACK (pg_logical_emit_message, at %s) was confirmed by the slot",
		indent, marker)
	d.say("%s      %d ms later (confirmed_flush_lsn %s): the engine read past the ROLLBACK and deleted nothing",
		indent, took.Milliseconds(), confirmed)
	return d.finish(ctx, st)
}

// beginTxn shows and runs BEGIN and stmts on a connection of its own,
// which the caller releases; on an error it rolls back and releases it.
func (d *demo) beginTxn(ctx context.Context, stmts []string) (*pgxpool.Conn, error) {
	conn, err := d.db.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	d.say("%sSQL   BEGIN;", indent)
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		conn.Release()
		return nil, err
	}
	for _, s := range stmts {
		d.say("%sSQL   %s;", indent, s)
		if _, err := conn.Exec(ctx, s); err != nil {
			_, _ = conn.Exec(context.Background(), "ROLLBACK")
			conn.Release()
			return nil, fmt.Errorf("%s: %w", s, err)
		}
	}
	return conn, nil
}

// psqlStep runs one statement through the psql command line, as any other
// program would: no cache code anywhere.
func (d *demo) psqlStep(ctx context.Context, sql string, expect ...string) error {
	psql := filepath.Join(d.pg.BinDir(), "psql")
	if _, err := os.Stat(psql); err != nil {
		if psql, err = exec.LookPath("psql"); err != nil {
			d.say("%s(psql not found; running the statement through the demo's own connection instead)", indent)
			return d.sqlStep(ctx, sql, expect...)
		}
	}
	st, err := d.begin(expect)
	if err != nil {
		return err
	}
	dsn := d.pg.DSN("postgres")
	d.say("%s$ psql '%s' -c \"%s\"", indent, dsn, sql)
	cmd := exec.CommandContext(ctx, psql, "-X", "-v", "ON_ERROR_STOP=1", "-c", sql, dsn)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=5")
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			d.say("%spsql | %s", indent, line)
		}
	}
	if err != nil {
		return fmt.Errorf("psql: %w", err)
	}
	d.committed(ctx, st, time.Now())
	return d.finish(ctx, st)
}

// showCache prints the keys Redis holds and checks them against the demo's model.
func (d *demo) showCache(ctx context.Context) error {
	var have []string
	iter := d.rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		// The engine's own bookkeeping (its applied-position watermark
		// cdcinvalidate:<slot>:lsn) is not part of the application's cache.
		if strings.HasPrefix(iter.Val(), "cdcinvalidate:") {
			continue
		}
		have = append(have, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("SCAN: %w", err)
	}
	sort.Strings(have)
	d.evMu.Lock()
	var want []string
	for k := range d.cached {
		want = append(want, k)
	}
	d.evMu.Unlock()
	sort.Strings(want)
	list := strings.Join(have, " ")
	if list == "" {
		list = "(empty)"
	}
	d.say("%scached now (%d): %s", indent, len(have), list)
	if !slices.Equal(have, want) {
		return fmt.Errorf("Redis holds %v, but after this step it should hold %v", have, want)
	}
	return nil
}

func (d *demo) showPositions(ctx context.Context, title string) error {
	d.say("")
	d.say("== %s", title)
	target, err := d.currentLSN(ctx)
	if err != nil {
		return err
	}
	confirmed, took, err := d.waitConfirmed(ctx, target, stepTimeout)
	if err != nil {
		return err
	}
	d.say("%spg_current_wal_lsn   %s   (end of the WAL when asked)", indent, target)
	d.say("%sconfirmed_flush_lsn  %s   (what the engine confirmed, %d ms later: Redis acknowledged every delete before it)",
		indent, confirmed, took.Milliseconds())
	return nil
}

// explore keeps everything running until Ctrl-C.
func (d *demo) explore(ctx context.Context) {
	psql := filepath.Join(d.pg.BinDir(), "psql")
	if _, err := exec.LookPath("psql"); err == nil {
		psql = "psql"
	}
	dsn := d.pg.DSN("postgres")
	d.say("")
	d.say("== Everything keeps running until Ctrl-C (--keep). In another terminal:")
	d.say("%s%s '%s'", indent, psql, dsn)
	d.say("%sredis-cli -p %d", indent, d.rd.Port())
	d.say("%sfor example:", indent)
	d.say("%s  redis-cli -p %d SET user:1 cached", indent, d.rd.Port())
	d.say("%s  %s '%s' -c \"UPDATE users SET name = 'Zoe' WHERE id = 1\"", indent, psql, dsn)
	d.say("%sInvalidations are printed here as they happen; the engine log too.", indent)
	select {
	case <-ctx.Done():
	case <-d.eng.Done():
	}
}
