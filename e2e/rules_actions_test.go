package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/sink"
)

// event is the JSON of the publish and stream actions, as consumers decode it.
type event = sink.Message

func (f *fixture) get(key string) string {
	f.t.Helper()
	v, err := f.rdb.Get(context.Background(), key).Result()
	if err == redis.Nil {
		return ""
	}
	if err != nil {
		f.t.Fatalf("get %s: %v", key, err)
	}
	return v
}

func parseLSN(t *testing.T, s string) pglogrepl.LSN {
	t.Helper()
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatalf("parse LSN %q: %v", s, err)
	}
	return l
}

// TestRulesActionsVersionPublishStream checks version, publish and stream
// against real transactions: one message and one stream entry per
// transaction, carrying its keys, tables and operations, with the commit
// LSN that the version keys hold too.
func TestRulesActionsVersionPublishStream(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	sub := f.rdb.Subscribe(context.Background(), "cache:events")
	defer sub.Close()
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.startRules(`  - table: users
    keys: ["user:{id}", "user:email:{email}"]
    actions: [delete, version, publish, stream]
    publish_channel: cache:events
    stream_key: events
    version_ttl: 1h
  - table: orders
    keys: ["order:{id}"]
    actions: [publish, stream]
    publish_channel: cache:events
    stream_key: events
`)
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'Ann', ''), (2, 'b@x', 'Bob', '')`)
	f.exec(`INSERT INTO orders VALUES (10, 1, 'n')`)
	f.barrier()
	for { // drain the messages of the set-up transactions
		if _, err := sub.ReceiveTimeout(context.Background(), 200*time.Millisecond); err != nil {
			break
		}
	}
	f.set("user:1", "user:email:a@x", "user:email:c@x", "order:10")
	before := f.currentLSN()
	tx := f.begin(
		`UPDATE users SET email = 'c@x' WHERE id = 1`,
		`UPDATE users SET name = 'Ann B' WHERE id = 1`,
		`DELETE FROM orders WHERE id = 10`,
	)
	if err := tx.Commit(f.ctx()); err != nil {
		t.Fatal(err)
	}
	after := f.currentLSN()
	f.barrier()

	f.wantGone("user:1", "user:email:a@x", "user:email:c@x")
	f.wantKept("order:10") // the orders rule does not delete
	ver := f.get("user:1:v")
	if l := parseLSN(t, ver); l <= before || l > after {
		t.Errorf("user:1:v = %s, want the commit LSN, between %s and %s", ver, before, after)
	}
	for _, k := range []string{"user:email:a@x:v", "user:email:c@x:v"} {
		if got := f.get(k); got != ver {
			t.Errorf("%s = %q, want %q (same transaction)", k, got, ver)
		}
	}
	if ttl := f.rdb.PTTL(context.Background(), "user:1:v").Val(); ttl < 59*time.Minute {
		t.Errorf("version TTL %v, want about 1h", ttl)
	}

	msg, err := sub.ReceiveTimeout(context.Background(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var ev event
	if err := json.Unmarshal([]byte(msg.(*redis.Message).Payload), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.LSN != ver || !ev.Last || len(ev.Changes) != 2 {
		t.Fatalf("message %+v, want lsn %s with 2 changes", ev, ver)
	}
	if c := ev.Changes[0]; c.Table != "public.users" || c.Op != "update" || !slices.Equal(c.Keys, []string{"user:1", "user:email:a@x", "user:email:c@x"}) {
		t.Errorf("first change %+v", c)
	}
	if c := ev.Changes[1]; c.Table != "public.orders" || c.Op != "delete" || !slices.Equal(c.Keys, []string{"order:10"}) {
		t.Errorf("second change %+v", c)
	}
	if extra, err := sub.ReceiveTimeout(context.Background(), 300*time.Millisecond); err == nil {
		t.Errorf("a second message for one transaction: %v", extra)
	}

	entries, err := f.rdb.XRevRangeN(context.Background(), "events", "+", "-", 1).Result()
	if err != nil || len(entries) != 1 {
		t.Fatalf("stream: %v %v", entries, err)
	}
	if want := fmt.Sprintf("%d-0", uint64(parseLSN(t, ver))); entries[0].ID != want || entries[0].Values["lsn"] != ver {
		t.Errorf("stream entry %s lsn %v, want ID %s lsn %s", entries[0].ID, entries[0].Values["lsn"], want, ver)
	}
	var sev event
	if err := json.Unmarshal([]byte(entries[0].Values["event"].(string)), &sev); err != nil || sev.LSN != ver || len(sev.Changes) != 2 {
		t.Errorf("stream event %+v %v", sev, err)
	}
	// A rolled-back transaction leaves no trace.
	n := f.rdb.XLen(context.Background(), "events").Val()
	tx, _ = f.db.Begin(f.ctx())
	_, _ = tx.Exec(f.ctx(), `UPDATE users SET name = 'x' WHERE id = 2`)
	_ = tx.Rollback(f.ctx())
	f.barrier()
	if m := f.rdb.XLen(context.Background(), "events").Val(); m != n {
		t.Errorf("stream grew from %d to %d after a rollback", n, m)
	}
}

// TestRulesActionRefresh checks write-through: rows become JSON in their
// keys, a moved key is deleted, a deleted row's keys go, and an UPDATE
// that leaves a TOASTed value unchanged never writes a placeholder.
func TestRulesActionRefresh(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE products (id bigint PRIMARY KEY, sku text, price numeric(10,2), active boolean, attrs jsonb);
ALTER TABLE products REPLICA IDENTITY FULL;
CREATE TABLE docs (id bigint PRIMARY KEY, title text, body text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL`)
	f.startRules(`  - table: products
    keys: ["product:{id}", "product:sku:{sku}"]
    actions: [refresh]
    refresh_ttl: 1h
    refresh_ttl_jitter: 0.1
  - table: products
    keys: ["product:card:{id}"]
    actions: [refresh]
    refresh_columns: [id, price]
  - table: docs
    keys: ["doc:{id}"]
    actions: [refresh]
  - table: docs
    keys: ["doc:title:{id}"]
    actions: [refresh]
    refresh_columns: [id, title]
`)
	f.exec(`INSERT INTO products VALUES (1, 'A-1', 9.50, true, '{"c": [1, 2]}')`)
	f.barrier()
	var row map[string]any
	if err := json.Unmarshal([]byte(f.get("product:1")), &row); err != nil {
		t.Fatalf("product:1 = %q: %v", f.get("product:1"), err)
	}
	if row["id"] != float64(1) || row["sku"] != "A-1" || row["price"] != 9.5 || row["active"] != true {
		t.Errorf("product:1 = %v", row)
	}
	if attrs, _ := row["attrs"].(map[string]any); attrs == nil || fmt.Sprint(attrs["c"]) != "[1 2]" {
		t.Errorf("attrs = %v, want the jsonb as JSON", row["attrs"])
	}
	if got := f.get("product:sku:A-1"); got != f.get("product:1") {
		t.Errorf("product:sku:A-1 = %q", got)
	}
	if got := f.get("product:card:1"); got != `{"id":1,"price":9.50}` {
		t.Errorf("product:card:1 = %q", got)
	}
	if ttl := f.rdb.PTTL(context.Background(), "product:1").Val(); ttl < 53*time.Minute || ttl > time.Hour {
		t.Errorf("TTL %v, want 1h less up to 10%%", ttl)
	}
	if ttl := f.rdb.PTTL(context.Background(), "product:card:1").Val(); ttl != -1 {
		t.Errorf("product:card:1 TTL %v, want none", ttl)
	}

	// The SKU changes: the old SKU key goes, the new ones are written.
	f.exec(`UPDATE products SET sku = 'A-2', price = 12 WHERE id = 1`)
	f.barrier()
	f.wantGone("product:sku:A-1")
	if err := json.Unmarshal([]byte(f.get("product:sku:A-2")), &row); err != nil || row["price"] != float64(12) || row["sku"] != "A-2" {
		t.Errorf("product:sku:A-2 = %q", f.get("product:sku:A-2"))
	}
	if got := f.get("product:card:1"); got != `{"id":1,"price":12.00}` {
		t.Errorf("product:card:1 = %q", got)
	}
	f.exec(`DELETE FROM products WHERE id = 1`)
	f.barrier()
	f.wantGone("product:1", "product:sku:A-2", "product:card:1")

	// A TOASTed body left unchanged is not in the change (identity
	// DEFAULT): the full-row key is deleted, never written without it; the
	// title key, which leaves body out, is written.
	body := strings.Repeat("0123456789abcdef", 400)
	f.exec(`INSERT INTO docs VALUES (1, 'a', $1)`, body)
	f.barrier()
	if err := json.Unmarshal([]byte(f.get("doc:1")), &row); err != nil || row["body"] != body {
		t.Fatalf("doc:1 after insert: %v", err)
	}
	f.exec(`UPDATE docs SET title = 'b' WHERE id = 1`)
	f.barrier()
	f.wantGone("doc:1")
	if got := f.get("doc:title:1"); got != `{"id":1,"title":"b"}` {
		t.Errorf("doc:title:1 = %q", got)
	}
	// With the body in the change the row is written again.
	f.exec(`UPDATE docs SET body = body || 'x' WHERE id = 1`)
	f.barrier()
	if err := json.Unmarshal([]byte(f.get("doc:1")), &row); err != nil || row["body"] != body+"x" || row["title"] != "b" {
		t.Errorf("doc:1 = %.80q", f.get("doc:1"))
	}
}

// TestRulesActionGeneration checks generation bumps per change, and
// TRUNCATE that bumps instead of scanning.
func TestRulesActionGeneration(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.startRules(`  - table: orders
    actions: [generation]
    on_truncate: generation
  - table: users
    keys: ["user:{id}"]
    actions: [delete, generation]
    generation_key: gen:people
`)
	gen := func(k string) int {
		n, _ := f.rdb.Get(context.Background(), k).Int()
		return n
	}
	f.exec(`INSERT INTO orders VALUES (1, 1, 'a')`)
	f.barrier()
	g1 := gen("gen:orders")
	if g1 < 1 {
		t.Fatalf("gen:orders = %d after an insert", g1)
	}
	f.set("orders:g1:page:1", "user:1")
	f.exec(`TRUNCATE orders`)
	f.barrier()
	if g := gen("gen:orders"); g <= g1 {
		t.Errorf("gen:orders = %d after TRUNCATE, want above %d", g, g1)
	}
	f.wantKept("orders:g1:page:1") // no SCAN: the generation retires it
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'A', '')`)
	f.barrier()
	if gen("gen:people") < 1 {
		t.Error("gen:people not bumped")
	}
	f.wantGone("user:1")
}

// TestRulesActionsStreamedTransaction runs actions through a transaction
// that PostgreSQL streams before it commits and that spills to disk: its
// actions are buffered, applied at its commit, and its events come in parts.
func TestRulesActionsStreamedTransaction(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{pgSettings: map[string]string{"logical_decoding_work_mem": "64kB"}})
	cfg := fmt.Sprintf(`postgres:
  dsn: %q
  status_interval: 1s
  txn_buffer_mb: 1
redis:
  addr: %q
rules:
  - table: barrier
    keys: ["barrier:{id}"]
  - table: big
    keys: ["big:{id}"]
    actions: [refresh, version, stream]
    stream_key: big:events
    refresh_columns: [id]
`, f.pg.DSN("postgres"), f.rd.Addr())
	f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	f.barrier()
	const n = 12000
	f.exec(fmt.Sprintf(`INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, %d) g`, n))
	f.barrier()
	// The barrier's key goes in the same pipeline as the refreshed values
	// but before them (deletes precede the other actions of a batch), so a
	// read right after it can come between the two.
	harness.WaitFor(t, 10*time.Second, "the last refreshed value", func() bool {
		return f.get(fmt.Sprintf("big:%d", n)) != ""
	})
	for _, id := range []int{1, n / 2, n} {
		if got := f.get(fmt.Sprintf("big:%d", id)); got != fmt.Sprintf(`{"id":%d}`, id) {
			t.Errorf("big:%d = %q", id, got)
		}
	}
	if c := f.count("big:*:v"); c != n {
		t.Errorf("%d version keys, want %d", c, n)
	}
	entries, err := f.rdb.XRange(context.Background(), "big:events", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	keys := 0
	for i, e := range entries {
		var ev event
		if err := json.Unmarshal([]byte(e.Values["event"].(string)), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Part != i || ev.Last != (i == len(entries)-1) {
			t.Errorf("entry %d: part %d last %v", i, ev.Part, ev.Last)
		}
		for _, c := range ev.Changes {
			keys += len(c.Keys)
		}
	}
	if len(entries) != n/1000 || keys != n {
		t.Errorf("%d entries with %d keys, want %d entries with %d", len(entries), keys, n/1000, n)
	}
}
