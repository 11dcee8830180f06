package e2e

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
)

// TestLeaseFenceOnEveryPath: with client.lease_fence, every path that
// invalidates a key fences its lease, so a reader that took the lease
// before the invalidation cannot fill afterwards and no reader takes a new
// one for a moment: a rule with its own delete_command, refresh (the fence
// and the write in one script), TRUNCATE patterns (the leases found are
// fenced, not deleted) and explicit invalidations (keys and patterns).
func TestLeaseFenceOnEveryPath(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE notes (id bigint PRIMARY KEY, body text)`)
	cfg := f.rulesConfig(`  - table: users
    keys: ["user:{id}"]
    actions: [delete]
    delete_command: del
  - table: orders
    keys: ["order:{id}"]
    actions: [refresh]
    refresh_columns: [id, note]
  - table: big
    keys: ["big:{id}"]
`) + "client:\n  leases: true\n  lease_fence: 10s\n"
	f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'A', '')`)
	f.exec(`INSERT INTO orders VALUES (1, 1, 'n1')`)
	f.exec(`INSERT INTO big VALUES (1, 'p')`)
	f.barrier()
	// The inserts fenced the leases; they lapse (here: go at once), and the
	// refreshed row goes (evicted, say), so the readers below miss and load.
	f.rdb.Del(f.ctx(), "order:1", cacheaside.LeaseKey("order:1"), cacheaside.LeaseKey("user:1"), cacheaside.LeaseKey("big:1"))

	c, err := cacheaside.New(f.rdb, cacheaside.Options{TTL: time.Hour, LeaseTTL: 30 * time.Second, MaxWait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// raced takes key's lease, loads "old" while invalidate runs, then
	// tries to fill; it returns the value left in Redis.
	raced := func(name, key string, invalidate func()) string {
		t.Helper()
		loading, release := make(chan struct{}), make(chan struct{})
		done := make(chan error, 1)
		go func() {
			_, err := c.Get(context.Background(), key, func(context.Context) ([]byte, error) {
				close(loading)
				<-release
				return []byte("old"), nil
			})
			done <- err
		}()
		select {
		case <-loading:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the reader never loaded", name)
		}
		invalidate()
		f.barrier()

		if got := f.get(cacheaside.LeaseKey(key)); got != cacheaside.LeaseFence {
			t.Errorf("%s: lease of %s = %q after the invalidation, want the fence", name, key, got)
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return f.get(key)
	}
	if got := raced("delete_command: del", "user:1", func() { f.exec(`UPDATE users SET name = 'B' WHERE id = 1`) }); got != "" {
		t.Errorf("delete_command: user:1 = %q after the late fill, want it gone", got)
	}
	if got := raced("refresh", "order:1", func() { f.exec(`UPDATE orders SET note = 'n2' WHERE id = 1`) }); got != `{"id":1,"note":"n2"}` {
		t.Errorf("refresh: order:1 = %q after the late fill, want the refreshed row", got)
	}
	if got := raced("TRUNCATE", "big:1", func() { f.exec(`TRUNCATE big`) }); got != "" {
		t.Errorf("TRUNCATE: big:1 = %q after the late fill, want it gone", got)
	}
	if got := raced("explicit key", "note:1", func() { f.exec(emit, "note:1") }); got != "" {
		t.Errorf("explicit key: note:1 = %q after the late fill, want it gone", got)
	}
	if got := raced("explicit pattern", "note:2", func() { f.exec(emit, `{"patterns":["note:*"]}`) }); got != "" {
		t.Errorf("explicit pattern: note:2 = %q after the late fill, want it gone", got)
	}
}
