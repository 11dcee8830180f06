package faults

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// renameRun: with every key cached, table users is renamed, its rows are
// updated under the other name, and it is renamed back (a migration). The
// engine must stop on the first change under the other name (exit 1,
// naming both names), and its restart must leave no stale key: it flushes
// the table's patterns, then replays the changes made under the other
// name. With unsafe set (CDC_UNSAFE=ignore-unbound, the old behaviour)
// the engine skips those changes silently and streams on.
func renameRun(t *testing.T, sc *scenario, f *fixture, p *harness.Process, i int, unsafe string) (checkResult, *harness.Process) {
	t.Helper()
	sc.run()
	f.fill()
	f.exec(`ALTER TABLE users RENAME TO users_migrating`)
	sc.fault("ALTER TABLE users RENAME while streaming")
	f.exec(`UPDATE users_migrating SET name = name || '+', rev = rev + 1 WHERE id % 3 = $1`, i%3)
	f.exec(`UPDATE users_migrating SET rev = rev + 1 WHERE id % 7 = $1`, i%7)
	f.exec(`ALTER TABLE users_migrating RENAME TO users`)
	if unsafe == "" {
		if code := p.ExitT(t, 60*time.Second); code != 1 || !strings.Contains(p.Output(), "public.users_migrating") {
			t.Fatalf("run %d: engine ended with %s, want exit status 1 and an error naming public.users_migrating; output:\n%s", i, p.State(), p.Tail(20))
		}
		sc.note("run %d: the engine stopped with exit status 1 on the renamed table and named it", i)
		p = f.startStreaming()
	} else if !p.Running() {
		t.Fatalf("run %d: the broken engine (CDC_UNSAFE=%s) stopped: %s", i, unsafe, p.Tail(20))
	}
	r := f.quiesce()
	sc.record(fmt.Sprintf("run %d, after the rename back", i), r)
	return r, p
}

// TestTableRenamedWhileStreaming: fail closed on a renamed table, and no
// stale key after the rename back and the restart.
func TestTableRenamedWhileStreaming(t *testing.T) {
	sc := newScenario(t, "table renamed while streaming, updated, renamed back", "stop naming the table; the restart flushes its patterns", false)
	f := newFixture(t, fixtureOpts{})
	p := f.startStreaming()
	for i := 1; i <= runs(2); i++ {
		_, p = renameRun(t, sc, f, p, i, "")
	}
}

// partitionsSchema is a partitioned table whose root has REPLICA IDENTITY
// FULL (its rule's templates use a non-key column), as has its first
// partition; partitionRules is its rule.
const partitionsSchema = `
CREATE TABLE events (id bigint PRIMARY KEY, tenant text NOT NULL) PARTITION BY RANGE (id);
CREATE TABLE events_0 PARTITION OF events FOR VALUES FROM (0) TO (1000);
ALTER TABLE events REPLICA IDENTITY FULL;
ALTER TABLE events_0 REPLICA IDENTITY FULL;
INSERT INTO events SELECT g, 't' || (g % 5) FROM generate_series(1, 100) g;
`

const partitionRules = `  - table: events
    keys: ["ev:{id}", "ev:tenant:{tenant}"]
`

// partitionRun: a partition manager creates the next partition while the
// engine streams; it does not inherit the root's REPLICA IDENTITY FULL, so
// its old rows lack the tenant the templates use. A row is written through
// it, a reader caches its tenant key, and the row moves to another tenant
// (the old key must go). The engine must stop at the first change through
// the partition (exit 1, naming the partition and the ALTER TABLE to run);
// after the fix its restart must leave no stale key. With unsafe set
// (CDC_UNSAFE=ignore-unbound) the engine skips the partition's changes
// silently and the old tenant key stays.
func partitionRun(t *testing.T, sc *scenario, f *fixture, p *harness.Process, i int, unsafe string) (checkResult, *harness.Process) {
	t.Helper()
	sc.run()
	lo := 1000 * i
	part := fmt.Sprintf("events_%d", lo)
	f.exec(fmt.Sprintf(`CREATE TABLE %s PARTITION OF events FOR VALUES FROM (%d) TO (%d)`, part, lo, lo+1000))
	sc.fault("partition created while streaming, narrower replica identity than its FULL root")
	id, old := lo+500, fmt.Sprintf("acme%d", i)
	f.exec(`INSERT INTO events VALUES ($1, $2)`, id, old)
	oldKey := "ev:tenant:" + old
	if err := f.rdb.Set(context.Background(), oldKey, "cached", 0).Err(); err != nil {
		t.Fatal(err)
	}
	f.exec(`UPDATE events SET tenant = 'moved' WHERE id = $1`, id)
	if unsafe == "" {
		want := []string{"partition public." + part, "ALTER TABLE public." + part + " REPLICA IDENTITY FULL"}
		if code := p.ExitT(t, 60*time.Second); code != 1 || !strings.Contains(p.Output(), want[0]) || !strings.Contains(p.Output(), want[1]) {
			t.Fatalf("run %d: engine ended with %s, want exit status 1 and an error naming %q and %q; output:\n%s", i, p.State(), want[0], want[1], p.Tail(20))
		}
		sc.note("run %d: the engine stopped with exit status 1, naming the partition and the ALTER TABLE", i)
		f.exec(fmt.Sprintf(`ALTER TABLE %s REPLICA IDENTITY FULL`, part))
		p = f.startStreaming()
	} else if !p.Running() {
		t.Fatalf("run %d: the broken engine (CDC_UNSAFE=%s) stopped: %s", i, unsafe, p.Tail(20))
	}
	f.barrier(60 * time.Second)
	r := checkResult{plain: 1}
	if v, err := f.rdb.Get(context.Background(), oldKey).Result(); err == nil {
		r.stalePlain = append(r.stalePlain, fmt.Sprintf("%s: cached %q, database: no row of tenant %s", oldKey, v, old))
	}
	sc.record(fmt.Sprintf("run %d, after the row moved", i), r)
	return r, p
}

// TestNewPartitionWhileStreaming: fail closed on a partition created with a
// narrower replica identity than its FULL root, naming it and the fix; no
// stale key after the fix and the restart.
func TestNewPartitionWhileStreaming(t *testing.T) {
	sc := newScenario(t, "partition created while streaming with REPLICA IDENTITY DEFAULT under a FULL root",
		"stop naming the partition and its ALTER TABLE; the restart flushes", false)
	f := newFixture(t, fixtureOpts{partitions: true})
	p := f.startStreaming()
	for i := 1; i <= runs(1); i++ {
		_, p = partitionRun(t, sc, f, p, i, "")
	}
}
