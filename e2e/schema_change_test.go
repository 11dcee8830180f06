package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// The cases of "a table that stops matching its rule while streaming"
// (issue 11): the engine must stop rather than confirm changes it did not
// apply, name the table and the fix, and the next start must flush what
// may have gone stale.

// TestTableRenamedWhileStreamingStopsAndRestartFlushes is the user report:
// a table renamed during a migration, updated, and renamed back. The
// updates made under the other name must not leave stale keys, and the
// log must say what happened.
func TestTableRenamedWhileStreamingStopsAndRestartFlushes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	const n = 50
	f.exec(fmt.Sprintf(`INSERT INTO users SELECT g, 'e' || g, 'n', '' FROM generate_series(1, %d) g`, n))
	f.exec(`INSERT INTO big VALUES (1, 'x')`)
	run := f.start()
	f.barrier()
	keys := userKeys(1, n)
	f.set(keys...)
	f.set("big:1")

	f.exec(`ALTER TABLE users RENAME TO users_migrating`)
	f.exec(`UPDATE users_migrating SET name = 'm'`)
	err := run.wait(t, 60*time.Second)
	if err == nil {
		t.Fatal("engine stopped without an error after its table was renamed")
	}
	for _, w := range []string{"public.users", "public.users_migrating", "rules.yaml"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("engine error lacks %q: %v", w, err)
		}
	}
	t.Logf("engine stopped with: %v", err)

	// The migration ends: the table gets its name back. The rows updated
	// in between must not keep their old cached values.
	f.exec(`ALTER TABLE users_migrating RENAME TO users`)
	f.start()
	f.barrier()
	if stale := f.present(keys...); len(stale) > 0 {
		t.Fatalf("%d of %d keys of rows updated while the table was renamed are still cached: %q", len(stale), n, stale[:min(5, len(stale))])
	}
	// Only the renamed table's patterns are flushed.
	f.wantKept("big:1")
	// And it streams on.
	f.set("user:1")
	f.exec(`UPDATE users SET name = 'z' WHERE id = 1`)
	f.barrier()
	f.wantGone("user:1")
}

// TestTableRenamedWhileStoppedIsCaught: the rename, the updates and the
// rename back all happen while the engine is stopped; at its start the
// replayed changes arrive under the other name.
func TestTableRenamedWhileStoppedIsCaught(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	const n = 20
	f.exec(fmt.Sprintf(`INSERT INTO users SELECT g, 'e' || g, 'n', '' FROM generate_series(1, %d) g`, n))
	run := f.start()
	f.barrier()
	if err := run.stop(t); err != nil {
		t.Fatal(err)
	}
	keys := userKeys(1, n)
	f.set(keys...)
	f.exec(`ALTER TABLE users RENAME TO users_migrating`)
	f.exec(`UPDATE users_migrating SET name = 'm'`)
	f.exec(`ALTER TABLE users_migrating RENAME TO users`)

	cfg, err := engineConfigRun(f)
	if err == nil {
		t.Fatalf("engine did not stop on changes of public.users replayed under another name; output:\n%s", cfg)
	}
	t.Logf("first start stopped with: %v", err)
	f.start()
	f.barrier()
	if stale := f.present(keys...); len(stale) > 0 {
		t.Fatalf("%d of %d keys of rows updated while the table was renamed are still cached: %q", len(stale), n, stale[:min(5, len(stale))])
	}
}

// engineConfigRun runs the engine with the fixture's configuration until
// it stops by itself (within 60s) and returns its error.
func engineConfigRun(f *fixture) (string, error) {
	f.t.Helper()
	p := f.startBinary(f.cfgPath)
	code := p.ExitT(f.t, 60*time.Second)
	if code == 0 {
		return p.Output(), nil
	}
	return p.Output(), fmt.Errorf("exit code %d: %s", code, p.Tail(3))
}

// TestTableMovedToAnotherSchemaStops: ALTER TABLE ... SET SCHEMA takes the
// table away from its rule as a rename does.
func TestTableMovedToAnotherSchemaStops(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`INSERT INTO users VALUES (1, 'a', 'a', ''); CREATE SCHEMA archive`)
	run := f.start()
	f.barrier()
	f.exec(`ALTER TABLE users SET SCHEMA archive`)
	f.exec(`UPDATE archive.users SET name = 'b'`)
	err := run.wait(t, 60*time.Second)
	if err == nil || !strings.Contains(err.Error(), "archive.users") || !strings.Contains(err.Error(), "public.users") {
		t.Fatalf("engine error = %v, want one naming public.users and archive.users", err)
	}
}

// TestTableDroppedFromPublicationStops: a table dropped from the
// publication sends nothing more, so only the catalog tells; the periodic
// check must stop the engine, and the next start flush the table's keys.
func TestTableDroppedFromPublicationStops(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{pgExtra: "  catalog_check_interval: 1s\n"})
	f.exec(`INSERT INTO users VALUES (1, 'a', 'a', ''); INSERT INTO big VALUES (1, 'x')`)
	run := f.start()
	f.barrier()
	f.set("user:1", "big:1")
	f.exec(`ALTER PUBLICATION cdcinvalidate DROP TABLE users`)
	f.exec(`UPDATE users SET name = 'b'`)
	err := run.wait(t, 60*time.Second)
	if err == nil || !strings.Contains(err.Error(), "public.users") || !strings.Contains(err.Error(), "ALTER PUBLICATION") {
		t.Fatalf("engine error = %v, want one naming public.users and the ALTER PUBLICATION to run", err)
	}
	t.Logf("engine stopped with: %v", err)
	f.exec(`ALTER PUBLICATION cdcinvalidate ADD TABLE users`)
	f.start()
	f.barrier()
	f.wantGone("user:1")
	f.wantKept("big:1")
}

// TestPublishViaRootTurnedOffStops: partitions' changes then arrive under
// the partitions' own names, which no rule names.
func TestPublishViaRootTurnedOffStops(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE measurements (id bigint PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE m_1 PARTITION OF measurements FOR VALUES FROM (0) TO (100);
INSERT INTO measurements VALUES (1, 'a')`)
	run := f.startRules("  - table: measurements\n    keys: [\"m:{id}\"]\n")
	f.set("m:1")
	f.exec(`UPDATE measurements SET v = 'b' WHERE id = 1`)
	f.barrier()
	f.wantGone("m:1")
	f.exec(`ALTER PUBLICATION cdcinvalidate SET (publish_via_partition_root = false)`)
	f.exec(`UPDATE measurements SET v = 'c' WHERE id = 1`)
	err := run.wait(t, 60*time.Second)
	if err == nil || !strings.Contains(err.Error(), "public.m_1") || !strings.Contains(err.Error(), "publish_via_partition_root = true") {
		t.Fatalf("engine error = %v, want one naming partition public.m_1 and the fix", err)
	}
	t.Logf("engine stopped with: %v", err)
}

// TestNewPartitionWithNarrowIdentityStops: a partition created after the
// start does not inherit the root's REPLICA IDENTITY FULL, so its old rows
// lack the columns the templates need. The periodic check must stop the
// engine, naming the partition and the ALTER TABLE to run; after the fix
// the next start flushes the rule's keys.
func TestNewPartitionWithNarrowIdentityStops(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE events (id bigint, tenant text, v text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE events_0 PARTITION OF events FOR VALUES FROM (0) TO (100);
ALTER TABLE events REPLICA IDENTITY FULL;
ALTER TABLE events_0 REPLICA IDENTITY FULL`)
	rules := "  - table: events\n    keys: [\"ev:{id}\", \"ev:tenant:{tenant}\"]\n"
	cfg := strings.Replace(f.rulesConfig(rules), "  status_interval: 1s\n", "  status_interval: 1s\n  catalog_check_interval: 1s\n", 1)
	run := f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()

	// A partition manager adds the next range; the application writes to it.
	f.exec(`CREATE TABLE events_100 PARTITION OF events FOR VALUES FROM (100) TO (200)`)
	f.exec(`INSERT INTO events VALUES (150, 'acme', 'a')`)
	f.set("ev:tenant:acme")
	f.exec(`UPDATE events SET tenant = 'other' WHERE id = 150`)
	err := run.wait(t, 60*time.Second)
	if err == nil || !strings.Contains(err.Error(), "public.events_100") || !strings.Contains(err.Error(), "ALTER TABLE public.events_100 REPLICA IDENTITY FULL") {
		t.Fatalf("engine error = %v, want one naming partition public.events_100 and its ALTER TABLE", err)
	}
	t.Logf("engine stopped with: %v", err)
	f.exec(`ALTER TABLE events_100 REPLICA IDENTITY FULL`)
	f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()
	f.wantGone("ev:tenant:acme")
}

// TestStreamedDropColumnRolledBackKeepsStreaming: a DROP COLUMN of a column
// a template uses, inside a streamed transaction that rolls back, changes
// nothing: the engine must not stop (and, restarted, stop again). The same
// transaction committed must still stop it.
func TestStreamedDropColumnRolledBackKeepsStreaming(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{pgSettings: map[string]string{"logical_decoding_work_mem": "64kB"}})
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'a', ''); INSERT INTO big SELECT g, 'p' FROM generate_series(1, 5000) g`)
	run := f.start()
	f.barrier()
	f.set("user:1", "big:1")
	// The transaction stays open until the engine received its streamed
	// chunks (a transaction already aborted when it is decoded is not
	// streamed on: PostgreSQL notices the abort).
	f.openStreamedDropColumn(func(tx pgx.Tx) error { return tx.Rollback(context.Background()) })
	f.barrier()
	select {
	case err := <-run.done:
		t.Fatalf("engine stopped on a rolled-back DROP COLUMN: %v", err)
	default:
	}
	f.wantKept("user:1", "big:1")
	// The table is as before: its changes still invalidate.
	f.exec(`UPDATE users SET name = 'c' WHERE id = 1`)
	f.barrier()
	f.wantGone("user:1")

	f.openStreamedDropColumn(func(tx pgx.Tx) error { return tx.Commit(context.Background()) })
	err := run.wait(t, 60*time.Second)
	if err == nil || !strings.Contains(err.Error(), `"email"`) {
		t.Fatalf("engine error = %v, want one naming the dropped column \"email\"", err)
	}
}

// openStreamedDropColumn runs a transaction large enough to be streamed
// that drops users.email and updates users after it, waits until the
// engine received it in streamed chunks, then ends it with end.
func (f *fixture) openStreamedDropColumn(end func(pgx.Tx) error) {
	f.t.Helper()
	ctx := context.Background()
	var before int64
	if err := f.db.QueryRow(ctx, `SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&before); err != nil {
		f.t.Fatal(err)
	}
	tx, err := f.db.Begin(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	for _, q := range []string{
		`UPDATE big SET payload = 'q'`,
		`ALTER TABLE users DROP COLUMN email`,
		`UPDATE users SET name = 'b' WHERE id = 1`,
		`UPDATE big SET payload = 'r'`,
		`UPDATE big SET payload = 's'`,
		`SELECT pg_switch_wal()`, // flush the WAL so that the walsender decodes it now
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			f.t.Fatalf("%s: %v", q, err)
		}
	}
	// The chunks were streamed once the slot's statistics count the
	// transaction (they are updated after each streamed chunk).
	harness.WaitFor(f.t, 60*time.Second, "the open transaction to be streamed", func() bool {
		var n int64
		_ = f.db.QueryRow(ctx, `SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&n)
		return n > before
	})
	time.Sleep(2 * time.Second) // the last chunks
	if err := end(tx); err != nil {
		f.t.Fatal(err)
	}
}

// TestNewPartitionFirstChangeStops: the same as
// TestNewPartitionWithNarrowIdentityStops with the periodic check out of
// the way: pgoutput describes the partition right before the first change
// that goes through it, so that change is refused at once, before it is
// confirmed. Fixed and restarted, the engine replays the refused change,
// which the start-up flush covers.
func TestNewPartitionFirstChangeStops(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE events (id bigint, tenant text, v text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE events_0 PARTITION OF events FOR VALUES FROM (0) TO (100);
ALTER TABLE events REPLICA IDENTITY FULL;
ALTER TABLE events_0 REPLICA IDENTITY FULL;
INSERT INTO events VALUES (1, 'acme', 'a')`)
	rules := "  - table: events\n    keys: [\"ev:{id}\", \"ev:tenant:{tenant}\"]\n"
	cfg := strings.Replace(f.rulesConfig(rules), "  status_interval: 1s\n", "  status_interval: 1s\n  catalog_check_interval: 1h\n", 1)
	run := f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()
	f.set("ev:1", "ev:tenant:acme")
	f.exec(`UPDATE events SET v = 'b' WHERE id = 1`) // through events_0, FULL: fine
	f.barrier()
	f.wantGone("ev:1", "ev:tenant:acme")

	f.exec(`CREATE TABLE events_100 PARTITION OF events FOR VALUES FROM (100) TO (200)`)
	f.set("ev:150", "ev:tenant:acme")
	f.exec(`INSERT INTO events VALUES (150, 'acme', 'a')`)
	err := run.wait(t, 60*time.Second)
	if err == nil || !strings.Contains(err.Error(), "partition public.events_100") || !strings.Contains(err.Error(), "ALTER TABLE public.events_100 REPLICA IDENTITY FULL") {
		t.Fatalf("engine error = %v, want one naming partition public.events_100 and its ALTER TABLE", err)
	}
	t.Logf("engine stopped with: %v", err)
	f.exec(`ALTER TABLE events_100 REPLICA IDENTITY FULL`)
	f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()
	f.wantGone("ev:150", "ev:tenant:acme")
	// Streams on, through the fixed partition.
	f.set("ev:tenant:acme", "ev:tenant:other")
	f.exec(`UPDATE events SET tenant = 'other' WHERE id = 150`)
	f.barrier()
	f.wantGone("ev:tenant:acme", "ev:tenant:other")
}
