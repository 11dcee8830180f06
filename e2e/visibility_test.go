package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// TestLeaseFenceCoversCommitVisibility reproduces, deterministically, the
// moment in which a commit is in the WAL (so the engine has invalidated its
// keys) but not yet visible to other sessions: a synchronous standby that
// never confirms holds the committing session there, while the logical
// walsender already sends the commit. A cacheaside reader that misses in
// that moment reads the old row. With client.lease_fence: 0 (the lease
// deleted) it takes a fresh lease and caches the old row for good: the
// negative control. With the fence it takes no lease while the fence holds;
// once the commit is visible and the fence lapsed it loads and caches the
// new row.
func TestLeaseFenceCoversCommitVisibility(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, fence string
		wantCached  string
	}{
		{"lease deleted (negative control)", "0s", "old"},
		{"fence", "2s", "new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{extra: "client:\n  leases: true\n  lease_fence: " + tc.fence + "\n"})
			f.start()
			f.barrier()
			f.exec(`INSERT INTO users VALUES (1, 'a@x', 'old', '')`)
			f.barrier()
			ctx := f.ctx()
			c, err := cacheaside.New(f.rdb, cacheaside.Options{TTL: time.Hour, LeaseTTL: 10 * time.Second, MaxWait: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			load := func(ctx context.Context) ([]byte, error) {
				var name string
				err := f.db.QueryRow(ctx, `SELECT name FROM users WHERE id = 1`).Scan(&name)
				return []byte(name), err
			}
			if v, err := c.Get(ctx, "user:1", load); err != nil || string(v) != "old" {
				t.Fatalf("first read = %q, %v", v, err)
			}

			// Commits now wait for a standby that does not exist: in the WAL,
			// sent to the engine, not visible to other sessions.
			writer, err := f.db.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer writer.Release()
			f.exec(`ALTER SYSTEM SET synchronous_standby_names = 'ghost'`)
			f.exec(`SELECT pg_reload_conf()`)
			harness.WaitFor(t, 10*time.Second, "synchronous_standby_names in the writer's session", func() bool {
				var v string
				_ = writer.QueryRow(ctx, `SHOW synchronous_standby_names`).Scan(&v)
				return v == "ghost"
			})
			// Commits read whether synchronous standbys are defined from
			// shared memory, which the checkpointer sets when it handles the
			// reload: until then they do not wait. A CHECKPOINT returns only
			// after the checkpointer went through its loop, reload included
			// (the pause lets the postmaster's SIGHUP reach it first).
			f.exec(`SELECT pg_sleep(0.3)`)
			f.exec(`CHECKPOINT`)
			committed := make(chan error, 1)
			go func() {
				_, err := writer.Exec(ctx, `UPDATE users SET name = 'new' WHERE id = 1`)
				committed <- err
			}()
			harness.WaitFor(t, 20*time.Second, "the engine's invalidation of user:1", func() bool { return !f.exists("user:1") })
			var visible string
			if err := f.db.QueryRow(ctx, `SELECT name FROM users WHERE id = 1`).Scan(&visible); err != nil || visible != "old" {
				t.Fatalf("other sessions see %q (%v): the commit should not be visible yet", visible, err)
			}

			// A reader misses now.
			read := make(chan string, 1)
			go func() {
				v, err := c.Get(ctx, "user:1", load)
				if err != nil {
					t.Errorf("read during the window: %v", err)
				}
				read <- string(v)
			}()
			time.Sleep(300 * time.Millisecond)
			// The standby requirement goes away: the commit completes.
			f.exec(`ALTER SYSTEM RESET synchronous_standby_names`)
			f.exec(`SELECT pg_reload_conf()`)
			select {
			case err := <-committed:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the commit was not released")
			}
			<-read
			f.barrier()
			got, _ := f.rdb.Get(ctx, "user:1").Result()
			if got != tc.wantCached {
				t.Errorf("user:1 cached %q after quiescence, want %q (database: new)", got, tc.wantCached)
			}
			t.Logf("cached after quiescence: %q; pauses at the fence %d, fills %d, refused %d", got, c.Stats.Fenced.Load(), c.Stats.Fills.Load(), c.Stats.FillsRefused.Load())
		})
	}
}
