package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// standbyPublication is the publication an operator creates on the
// primary for an engine that decodes from a standby (which is read-only).
const standbyPublication = `CREATE PUBLICATION cdcinvalidate FOR TABLE users, orders, big, barrier`

// standbyConfig is the engine configuration on the standby alone.
func (sp *standbyPair) standbyConfig(extra string) string {
	return sp.f.writeConfig(fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\nredis:\n  addr: %q\n%s%s", sp.standby.DSN("postgres"), sp.f.rd.Addr(), extra, rules))
}

func (sp *standbyPair) standbyDB() *pgxpool.Pool {
	t := sp.f.t
	db, err := pgxpool.New(context.Background(), sp.standby.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

// startOnStandby starts the engine binary on the standby and waits until
// it streams there. Creating a slot on a standby waits for the primary to
// log its running transactions: the test asks the primary to, as an
// operator would (pg_log_standby_snapshot, PostgreSQL 16+).
func (sp *standbyPair) startOnStandby(cfg string, sdb *pgxpool.Pool) *harness.Process {
	f, t := sp.f, sp.f.t
	p := f.startBinary(cfg)
	deadline := time.Now().Add(90 * time.Second)
	for {
		var n int
		err := sdb.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
WHERE s.slot_name = 'cdcinvalidate' AND r.application_name = 'cdcinvalidate' AND r.state IN ('streaming', 'catchup')`).Scan(&n)
		if err == nil && n == 1 {
			return p
		}
		select {
		case <-p.Done():
			t.Fatalf("engine exited (code %d) before streaming from the standby; output:\n%s", p.ExitCode(), p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("engine not streaming from the standby after 90s; output:\n%s", p.Output())
		}
		if f.pg.Port() != 0 {
			_, _ = f.db.Exec(context.Background(), `SELECT pg_log_standby_snapshot()`)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// standbySlotReason is the invalidation of the slot on the standby:
// invalidation_reason (17+) or, on 16, "conflicting".
func standbySlotReason(db *pgxpool.Pool) string {
	var reason string
	var conflicting bool
	err := db.QueryRow(context.Background(), `SELECT coalesce(to_jsonb(s) ->> 'invalidation_reason', ''), coalesce((to_jsonb(s) ->> 'conflicting')::boolean, false)
FROM pg_replication_slots s WHERE slot_name = 'cdcinvalidate'`).Scan(&reason, &conflicting)
	if err != nil {
		return ""
	}
	if reason == "" && conflicting {
		return "conflicting"
	}
	return reason
}

// TestCompatStandbyDecoding (PostgreSQL 16+): the engine decodes from a
// physical standby (hot_standby_feedback, primary_slot_name) while the
// application writes on the primary: the slot is created on the standby,
// the publication must come from the primary, and invalidations arrive.
// Then the standby is promoted: the engine keeps its slot and position on
// the new primary, with no flush and no lost invalidation.
func TestCompatStandbyDecoding(t *testing.T) {
	t.Parallel()
	forVersions(t, 16, func(t *testing.T, major int) {
		f := newFixture(t, fixtureOpts{pgVersion: major})
		const n = 300
		sp := f.newStandbyPair(false)
		sdb := sp.standbyDB()

		// The publication does not exist: a standby cannot create it.
		out := f.startFails(mustRead(t, sp.standbyConfig("")), []string{"this server is a standby (read-only): create it on the primary", "CREATE PUBLICATION"})
		t.Logf("refusal: %s", harness.LastLines(out, 1))
		f.exec(standbyPublication)
		// The standby replays it a moment later (asynchronous replication;
		// started at once, the engine once found it missing there).
		harness.WaitFor(t, 30*time.Second, "the standby to replay the publication", func() bool {
			var n int
			return sdb.QueryRow(context.Background(), `SELECT count(*) FROM pg_publication WHERE pubname = 'cdcinvalidate'`).Scan(&n) == nil && n == 1
		})

		cfg := sp.standbyConfig("")
		p := sp.startOnStandby(cfg, sdb)
		f.barrier()
		if out := p.Output(); !strings.Contains(out, "decoding from a standby") {
			t.Errorf("the engine did not say it decodes from a standby; output:\n%s", out)
		}
		var onStandby bool
		if err := sdb.QueryRow(context.Background(), `SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = 'cdcinvalidate' AND slot_type = 'logical'`).Scan(&onStandby); err != nil || !onStandby {
			t.Fatalf("the logical slot is not on the standby: %v %v", onStandby, err)
		}
		var onPrimary int
		if err := f.db.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'`).Scan(&onPrimary); err != nil || onPrimary != 0 {
			t.Fatalf("%d logical slots on the primary (%v), want none", onPrimary, err)
		}

		// Row changes, TRUNCATE and a message, written on the primary.
		f.rowChangeCases()
		f.compatTruncate()
		f.compatMessages()

		// Promotion under a concurrent writer: the slot is the standby's
		// own, so it keeps its history.
		f.exec(`DELETE FROM users`)
		f.seedUsers(n)
		f.barrier()
		sp.promoteUnderWriter(p, n, nil)
		if code, _ := p.TermT(t, 30*time.Second); code != 0 {
			t.Fatalf("SIGTERM: exit code %d; output:\n%s", code, p.Output())
		}
	})
}

// TestCompatStandbySlotConflict (PostgreSQL 16+): without
// hot_standby_feedback, VACUUM on the primary removes catalog rows the
// standby's slot still needs, and PostgreSQL invalidates the slot
// (rows_removed). That is lost history: the engine refuses with
// on_history_lost: stop, and flushes by default.
func TestCompatStandbySlotConflict(t *testing.T) {
	t.Parallel()
	forVersions(t, 16, func(t *testing.T, major int) {
		f := newFixture(t, fixtureOpts{pgVersion: major})
		f.seedUsers(10)
		f.exec(standbyPublication)
		sp := f.newStandbyPairFeedback(false, false)
		sdb := sp.standbyDB()
		cfg := sp.standbyConfig("")
		p := sp.startOnStandby(cfg, sdb)
		f.barrier()
		if out := p.Output(); !strings.Contains(out, "hot_standby_feedback is off") {
			t.Errorf("no warning about hot_standby_feedback; output:\n%s", out)
		}
		if code, _ := p.TermT(t, 30*time.Second); code != 0 {
			t.Fatalf("SIGTERM: exit code %d", code)
		}

		// Catalog rows newer than the slot's catalog_xmin, removed on the
		// primary, which knows nothing of the standby's slot.
		// VACUUM FULL: a plain VACUUM did not always conflict within a minute.
		harness.WaitFor(t, 90*time.Second, "the standby's slot to be invalidated by a conflict with recovery", func() bool {
			f.exec(`CREATE TABLE conflict_t (i int); DROP TABLE conflict_t`)
			f.exec(`VACUUM FULL pg_class`)
			f.exec(`INSERT INTO other (v) VALUES ('flush the WAL')`)
			time.Sleep(200 * time.Millisecond)
			return standbySlotReason(sdb) != ""
		})
		reason := standbySlotReason(sdb)
		t.Logf("slot invalidated on the standby: %s", reason)
		if major >= 17 && reason != "rows_removed" {
			t.Fatalf("invalidation_reason = %q, want rows_removed", reason)
		}

		f.set("user:1", "unmanaged:1")
		f.exec(`UPDATE users SET name = 'while the slot was invalidated' WHERE id = 1`)
		out := f.startFails(strings.Replace(mustRead(t, cfg), "rules:", "consistency:\n  on_history_lost: stop\nrules:", 1), []string{"was invalidated by PostgreSQL", "conflicted with recovery", "hot_standby_feedback"})
		t.Logf("refusal: %s", harness.LastLines(out, 1))
		if !f.exists("user:1") {
			t.Fatal("on_history_lost: stop deleted keys")
		}
		p = sp.startOnStandby(cfg, sdb)
		harness.WaitFor(t, 60*time.Second, "the managed keys to be flushed", func() bool { return !f.exists("user:1") })
		f.wantKept("unmanaged:1")
		f.barrier()
		if code, _ := p.TermT(t, 30*time.Second); code != 0 {
			t.Fatalf("SIGTERM: exit code %d", code)
		}
	})
}

// TestStandbyBefore16IsRefused: on PostgreSQL 14 and 15 a standby cannot
// decode; the engine refuses at start with the fix, creating nothing.
// Runs on the default server when it is older than 16.
func TestStandbyBefore16IsRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	if f.pg.ServerVersionNum() >= 160000 {
		t.Skip("PostgreSQL 16+: decoding from a standby is supported (TestCompatStandbyDecoding)")
	}
	f.exec(standbyPublication)
	sp := f.newStandbyPair(false)
	f.startFails(mustRead(t, sp.standbyConfig("")), []string{"names a standby", "needs PostgreSQL 16 or later", "target_session_attrs=read-write"})
	var n int
	if err := sp.standbyDB().QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("logical slots on the standby after a refused start: %d (%v), want 0", n, err)
	}
}
