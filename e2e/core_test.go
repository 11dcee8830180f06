// Package e2e holds the end-to-end tests: real PostgreSQL (wal_level=logical)
// and real Redis started by internal/harness on free loopback ports, the
// engine in process or as its binary, and one test per guarantee that the
// README states.
package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

func TestInsertUpdateDeleteInvalidateOldAndNewKeys(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.start()
	f.barrier()
	f.rowChangeCases()
}

// rowChangeCases checks the keys INSERT, UPDATE and DELETE invalidate, on
// an engine that streams and empty users and orders tables; it leaves
// users 8 and order 10 behind.
func (f *fixture) rowChangeCases() {
	// INSERT deletes the keys of the new row (a cached miss marker, say).
	f.set("user:1", "user:email:a@x", "user:2")
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'Ann', 'bio')`)
	f.barrier()
	f.wantGone("user:1", "user:email:a@x")
	f.wantKept("user:2")

	// UPDATE of a non-key column: keys of the row (old = new).
	f.set("user:1", "user:email:a@x")
	f.exec(`UPDATE users SET name = 'Anna' WHERE id = 1`)
	f.barrier()
	f.wantGone("user:1", "user:email:a@x")

	// UPDATE of a key column: keys of the old row and of the new row.
	f.set("user:1", "user:email:a@x", "user:email:b@x")
	f.exec(`UPDATE users SET email = 'b@x' WHERE id = 1`)
	f.barrier()
	f.wantGone("user:1", "user:email:a@x", "user:email:b@x")

	// Primary key change: old and new id keys.
	f.set("user:1", "user:7", "user:email:b@x")
	f.exec(`UPDATE users SET id = 7 WHERE id = 1`)
	f.barrier()
	f.wantGone("user:1", "user:7", "user:email:b@x")

	// DELETE: keys of the old row.
	f.set("user:7", "user:email:b@x")
	f.exec(`DELETE FROM users WHERE id = 7`)
	f.barrier()
	f.wantGone("user:7", "user:email:b@x")

	// Fan-out to a related entity.
	f.set("order:10", "user:2:orders", "user:3:orders")
	f.exec(`INSERT INTO orders VALUES (10, 2, 'n')`)
	f.barrier()
	f.wantGone("order:10", "user:2:orders")
	f.wantKept("user:3:orders", "user:2")

	// Moving an order to another user invalidates both users' lists.
	f.set("user:2:orders", "user:3:orders")
	f.exec(`UPDATE orders SET user_id = 3 WHERE id = 10`)
	f.barrier()
	f.wantGone("user:2:orders", "user:3:orders")

	// NULL makes no key: nothing named "user:email:" or "<nil>".
	f.set("user:email:", "user:email:<nil>", "user:email:null")
	f.exec(`INSERT INTO users VALUES (8, NULL, 'n', 'b')`)
	f.barrier()
	f.wantKept("user:email:", "user:email:<nil>", "user:email:null")
}

func TestMultiTableTransactionAndRollback(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'a', ''), (2, 'b@x', 'b', '')`)
	f.start()
	f.barrier()

	f.set("user:1", "user:email:a@x", "order:5", "user:1:orders")
	f.exec(`BEGIN; UPDATE users SET name = 'z' WHERE id = 1; INSERT INTO orders VALUES (5, 1, ''); COMMIT;`)
	f.barrier()
	f.wantGone("user:1", "user:email:a@x", "order:5", "user:1:orders")

	// A rolled-back transaction invalidates nothing.
	f.set("user:2", "user:email:b@x", "order:6")
	f.exec(`BEGIN; UPDATE users SET name = 'q' WHERE id = 2; INSERT INTO orders VALUES (6, 2, ''); ROLLBACK;`)
	f.barrier()
	f.wantKept("user:2", "user:email:b@x", "order:6")

	// A savepoint rolled back inside a committed transaction: only the
	// committed part invalidates.
	f.set("user:1", "user:2")
	f.exec(`BEGIN; UPDATE users SET name = 'r' WHERE id = 1; SAVEPOINT s; UPDATE users SET name = 's' WHERE id = 2; ROLLBACK TO s; COMMIT;`)
	f.barrier()
	f.wantGone("user:1")
	f.wantKept("user:2")

	// Many changes to one row in one transaction.
	f.set("user:1")
	var b strings.Builder
	b.WriteString("BEGIN;")
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&b, "UPDATE users SET name = 'n%d' WHERE id = 1;", i)
	}
	b.WriteString("COMMIT;")
	f.exec(b.String())
	f.barrier()
	f.wantGone("user:1")
}

func TestValuesAreInsertedLiterally(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.start()
	f.barrier()
	emails := []string{"with space@x", "colon:in:it", "star*glob?[a]", "ünïcødé@例え.jp", "{id}", `back\slash`, "new\nline"}
	var keys []string
	for _, e := range emails {
		keys = append(keys, "user:email:"+e)
	}
	// Keys a glob reading of "star*glob?[a]" would match: they must stay.
	decoys := []string{"user:email:starXglobY[a]", "user:email:starglob?a", "user:email:"}
	f.set(keys...)
	f.set(decoys...)
	for i, e := range emails {
		f.exec(`INSERT INTO users VALUES ($1, $2, '', '')`, i+1, e)
	}
	f.barrier()
	f.wantGone(keys...)
	f.wantKept(decoys...)
}

func TestTruncateDeletesEveryKeyOfTheTable(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`INSERT INTO orders VALUES (1, 1, ''), (2, 2, '')`)
	f.start()
	f.barrier()
	f.set("order:1", "order:2", "order:999", "user:1:orders", "user:2:orders")
	keep := []string{"orders", "order", "order_1", "user:1", "user:email:a", "other:1", "xorder:1"}
	f.set(keep...)
	f.exec(`TRUNCATE orders`)
	f.barrier()
	f.wantGone("order:1", "order:2", "order:999", "user:1:orders", "user:2:orders")
	f.wantKept(keep...)

	// TRUNCATE of several tables at once, with a literal glob character in a template's prefix.
	f.set("big:1", "big:2", "order:3")
	f.exec(`TRUNCATE big, orders`)
	f.barrier()
	f.wantGone("big:1", "big:2", "order:3")
	f.wantKept(keep...)
}

func TestAlterTableKeepsWorkingAndDroppedColumnStops(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'a', '')`)
	run := f.start()
	f.barrier()

	// A new column: the Relation message is refreshed and keys stay right.
	f.exec(`ALTER TABLE users ADD COLUMN age int`)
	f.set("user:1", "user:email:a@x")
	f.exec(`UPDATE users SET age = 3 WHERE id = 1`)
	f.barrier()
	f.wantGone("user:1", "user:email:a@x")

	// Dropping a column a template uses: the engine must stop rather than
	// compute wrong keys, and say which column.
	f.exec(`ALTER TABLE users DROP COLUMN email`)
	f.exec(`UPDATE users SET name = 'b' WHERE id = 1`)
	err := run.wait(t, 30e9)
	if err == nil || !strings.Contains(err.Error(), `"email"`) {
		t.Fatalf("engine error = %v, want one that names the dropped column \"email\"", err)
	}
	t.Logf("engine stopped with: %v", err)
}

// TestLeasesAndPublish checks the engine's side of the client library:
// with client.leases the lease key is fenced with the key, and with
// client.publish_channel every applied batch is announced with its keys.
func TestLeasesAndPublish(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{extra: "client:\n  leases: true\n  publish_channel: cdc-invalidations\n"})
	sub := f.rdb.Subscribe(f.ctx(), "cdc-invalidations")
	defer sub.Close()
	if _, err := sub.Receive(f.ctx()); err != nil { // the subscription confirmation
		t.Fatal(err)
	}
	f.start()
	f.barrier()
	f.set("user:1", cacheaside.LeaseKey("user:1"), cacheaside.LeaseKey("user:2"))
	f.exec(`INSERT INTO users VALUES (1, 'a@x', '', '')`)
	f.barrier()
	f.wantGone("user:1")
	// The lease now holds the engine's fence (or nothing, once it lapsed):
	// the reader's token is gone, so its fill would be refused.
	if v, _ := f.rdb.Get(f.ctx(), cacheaside.LeaseKey("user:1")).Result(); v != "" && v != cacheaside.LeaseFence {
		t.Errorf("lease of an invalidated key holds %q, want the fence or nothing", v)
	}
	f.wantKept(cacheaside.LeaseKey("user:2"))
	var got []string
	for !slices.Contains(got, "user:1") || !slices.Contains(got, "user:email:a@x") {
		m, err := sub.ReceiveMessage(f.ctx())
		if err != nil {
			t.Fatal(err)
		}
		var payload struct {
			LSN      string   `json:"lsn"`
			Keys     []string `json:"keys"`
			Patterns []string `json:"patterns"`
		}
		if err := json.Unmarshal([]byte(m.Payload), &payload); err != nil {
			t.Fatalf("payload %q: %v", m.Payload, err)
		}
		if len(payload.Patterns) > 0 {
			continue // the first start's flush
		}
		if payload.LSN == "" {
			t.Fatalf("payload %q has no lsn", m.Payload)
		}
		got = append(got, payload.Keys...)
	}
	if slices.Contains(got, cacheaside.LeaseKey("user:1")) {
		t.Errorf("lease keys are published too: %q", got)
	}

	// TRUNCATE fences the leases of the table's keys (the reader's token is
	// gone), deletes the keys and announces its patterns.
	f.set("user:5", cacheaside.LeaseKey("user:5"), "order:1", cacheaside.LeaseKey("order:1"))
	f.exec(`TRUNCATE users`)
	f.barrier()
	f.wantGone("user:5")
	if v, _ := f.rdb.Get(f.ctx(), cacheaside.LeaseKey("user:5")).Result(); v != "" && v != cacheaside.LeaseFence {
		t.Errorf("lease of user:5 = %q after TRUNCATE, want the fence or nothing", v)
	}
	f.wantKept("order:1", cacheaside.LeaseKey("order:1"))
	for {
		m, err := sub.ReceiveMessage(f.ctx())
		if err != nil {
			t.Fatal(err)
		}
		var payload struct {
			Patterns []string `json:"patterns"`
		}
		if err := json.Unmarshal([]byte(m.Payload), &payload); err != nil {
			t.Fatalf("payload %q: %v", m.Payload, err)
		}
		if len(payload.Patterns) > 0 {
			if !slices.Contains(payload.Patterns, "user:*") {
				t.Fatalf("TRUNCATE message %q lacks the pattern user:*", m.Payload)
			}
			break
		}
	}
}

// TestWatermarkFollowsAppliedPosition checks the watermark key: it reaches
// the LSN of a commit once that commit is invalidated (also for commits to
// tables outside the rules, through keepalives), so an application can wait
// for its own write; and it never moves back.
func TestWatermarkFollowsAppliedPosition(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.start()
	f.barrier()
	const key = "cdcinvalidate:cdcinvalidate:lsn"
	watermark := func() pglogrepl.LSN {
		s, err := f.rdb.Get(f.ctx(), key).Result()
		if err != nil {
			return 0
		}
		l, err := pglogrepl.ParseLSN(s)
		if err != nil {
			t.Fatalf("watermark %q: %v", s, err)
		}
		return l
	}
	// Read-your-writes: the writer takes its commit's position and waits.
	f.set("user:1")
	f.exec(`INSERT INTO users VALUES (1, 'a@x', '', '')`)
	mine := f.currentLSN()
	harness.WaitFor(t, 30*time.Second, "watermark to reach the insert", func() bool { return watermark() >= mine })
	if f.exists("user:1") {
		t.Fatal("watermark passed the commit but its key is still cached")
	}
	f.exec(`INSERT INTO other (v) VALUES ('x')`)
	mine = f.currentLSN()
	harness.WaitFor(t, 30*time.Second, "watermark to follow a commit outside the rules", func() bool { return watermark() >= mine })

	// Never lowered: a value above anything applied stays.
	if err := f.rdb.Set(f.ctx(), key, "FF/0", 0).Err(); err != nil {
		t.Fatal(err)
	}
	f.exec(`INSERT INTO users VALUES (2, 'b@x', '', '')`)
	f.barrier()
	if got := watermark(); got != pglogrepl.LSN(0xFF<<32) {
		t.Fatalf("watermark = %s after a lower position was applied, want FF/0 kept", got)
	}
}
