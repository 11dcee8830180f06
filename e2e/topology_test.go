package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
)

// TestClusterEndToEnd runs the engine against a real Redis Cluster (3
// masters, 3 replicas): the first-start flush reaches keys on every
// master; inserts, updates and deletes of rows whose keys fall in many
// slots invalidate them, with leases fenced in the keys' slots; version,
// publish, stream, refresh and generation actions land; TRUNCATE removes a
// pattern's keys and leases on every master; the watermark follows.
func TestClusterEndToEnd(t *testing.T) {
	f := newFixture(t, fixtureOpts{cluster: true, extra: "client:\n  leases: true\n"})
	ctx := f.ctx()
	const n = 300
	var stale []string
	for i := 1; i <= n; i++ {
		stale = append(stale, fmt.Sprintf("user:%d", i))
	}
	f.set(stale...)
	f.set("unmanaged:1")
	sub := f.rdb.Subscribe(ctx, "cache:events")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	f.exec(`CREATE TABLE products (id bigint PRIMARY KEY, name text, price int)`)
	cfg := f.rulesConfig(`  - table: users
    keys: ["user:{id}", "user:email:{email}"]
    actions: [delete, version, publish, stream]
    publish_channel: cache:events
    stream_key: events
  - table: products
    keys: ["product:{id}"]
    actions: [refresh]
    refresh_columns: [id, name, price]
  - table: orders
    actions: [generation]
    generation_key: gen:orders
    on_truncate: generation
`)
	cfg = strings.Replace(cfg, "rules:\n", "client:\n  leases: true\nrules:\n", 1)
	f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()

	// First start: every stale key is gone, on every master; others stay.
	if left := f.present(stale...); len(left) > 0 {
		t.Fatalf("first-start flush left %d keys, e.g. %q", len(left), left[0])
	}
	f.wantKept("unmanaged:1")
	masters := map[string]bool{}
	for _, k := range stale {
		m, err := f.cl.MasterOf(ctx, keyslot.Slot(k))
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Addr()] = true
		if len(masters) == 3 {
			break
		}
	}
	if len(masters) != 3 {
		t.Fatalf("the keys lived on %d masters, want 3", len(masters))
	}

	// Inserts, updates and deletes over many slots.
	var rows []string
	for i := 1; i <= n; i++ {
		rows = append(rows, fmt.Sprintf("(%d, 'u%d@x', 'n', '')", i, i))
	}
	f.set(stale...)
	f.exec(`INSERT INTO users VALUES ` + strings.Join(rows, ","))
	f.barrier()
	f.wantGone(stale...)
	for i := 1; i <= 5; i++ {
		k := fmt.Sprintf("user:%d", i)
		if got := f.get(cacheaside.LeaseKey(k)); got != cacheaside.LeaseFence && got != "" {
			t.Errorf("lease of %s = %q, want the fence (or lapsed)", k, got)
		}
		if v := f.get(k + ":v"); v == "" {
			t.Errorf("version key %s:v not set", k)
		}
	}
	f.set(stale...)
	f.set("user:email:u7@x", "user:email:new@x")
	f.exec(`UPDATE users SET email = 'new@x' WHERE id = 7`)
	f.exec(`DELETE FROM users WHERE id > 150`)
	f.barrier()
	f.wantGone("user:7", "user:email:u7@x", "user:email:new@x")
	f.wantGone(stale[150:]...)
	f.wantKept(stale[10:149]...) // rows 11..149 did not change again

	// Messages and stream entries of those transactions.
	m, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatalf("no message on cache:events: %v", err)
	}
	var ev event
	if err := json.Unmarshal([]byte(m.Payload), &ev); err != nil || len(ev.Changes) == 0 || ev.Changes[0].Table != "public.users" {
		t.Errorf("message %q: %+v, %v", m.Payload, ev, err)
	}
	if n := f.rdb.XLen(ctx, "events").Val(); n < 3 {
		t.Errorf("stream events has %d entries, want one per transaction (at least 3)", n)
	}

	// Refresh and generation.
	f.exec(`INSERT INTO products VALUES (1, 'pen', 3), (2, 'ink', 5)`)
	f.exec(`INSERT INTO orders VALUES (1, 1, 'n')`)
	f.barrier()
	if v := f.get("product:2"); !strings.Contains(v, `"ink"`) {
		t.Errorf("product:2 = %q, want the refreshed row", v)
	}
	gen := f.get("gen:orders")
	if gen == "" {
		t.Error("gen:orders not incremented")
	}

	// TRUNCATE: every key and lease of the pattern, on every master.
	f.set(stale[:150]...)
	for _, k := range stale[:150] {
		f.rdb.Set(ctx, cacheaside.LeaseKey(k), "token", 0)
	}
	f.exec(`TRUNCATE users`)
	f.exec(`TRUNCATE orders`)
	f.barrier()
	f.wantGone(stale[:150]...)
	for _, k := range stale[:150] {
		if f.exists(cacheaside.LeaseKey(k)) {
			t.Fatalf("TRUNCATE left the lease of %s", k)
		}
	}
	if f.get("gen:orders") == gen {
		t.Error("TRUNCATE orders did not bump gen:orders")
	}
	f.wantKept("unmanaged:1")

	// The watermark is at or above the slot's confirmed position.
	if w := parseLSN(t, f.get("cdcinvalidate:cdcinvalidate:lsn")); w < f.confirmed() {
		t.Errorf("watermark %s below the confirmed position %s", w, f.confirmed())
	}
}
