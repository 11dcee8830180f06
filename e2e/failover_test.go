package e2e

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// A physical standby of the fixture's primary, for failover tests.
type standbyPair struct {
	f       *fixture
	standby *harness.Postgres
	dsn     string // both servers, target_session_attrs=read-write
}

// newStandbyPair makes a physical standby of f.pg, streaming through the
// physical slot standby1 with hot_standby_feedback, and syncing failover
// slots when syncSlots (PostgreSQL 17+: sync_replication_slots on the
// standby, synchronized_standby_slots on the primary). f.db is reconnected
// through the multi-host DSN, so it follows the primary across a failover.
func (f *fixture) newStandbyPair(syncSlots bool) *standbyPair {
	return f.newStandbyPairFeedback(syncSlots, true)
}

// newStandbyPairFeedback is newStandbyPair with hot_standby_feedback on or
// off.
func (f *fixture) newStandbyPairFeedback(syncSlots, feedback bool) *standbyPair {
	t := f.t
	ctx := f.ctx()
	f.exec(`SELECT pg_create_physical_replication_slot('standby1', true)`)
	settings := map[string]string{"primary_slot_name": "standby1", "hot_standby_feedback": map[bool]string{true: "on", false: "off"}[feedback]}
	if syncSlots {
		settings["sync_replication_slots"] = "on"
	}
	standby, err := f.pg.StartStandby(ctx, harness.StandbyOptions{Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := standby.Close(); err != nil {
			t.Errorf("close standby: %v", err)
		}
	})
	f.db.Reset() // its connections died with the primary's restart for the copy
	if syncSlots {
		// Logical walsenders send nothing the standby has not received, so
		// a failover slot is never ahead of the standby.
		f.exec(`ALTER SYSTEM SET synchronized_standby_slots = 'standby1'`)
		f.exec(`SELECT pg_reload_conf()`)
	}
	harness.WaitFor(t, 60*time.Second, "the standby to stream from the primary", func() bool {
		var active bool
		err := f.db.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = 'standby1'`).Scan(&active)
		return err == nil && active
	})
	pair := &standbyPair{f: f, standby: standby, dsn: (&url.URL{
		Scheme: "postgres", User: url.User("postgres"),
		Host:     fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", f.pg.Port(), standby.Port()),
		Path:     "/postgres",
		RawQuery: "sslmode=disable&target_session_attrs=read-write&connect_timeout=5",
	}).String()}
	db, err := pgxpool.New(ctx, pair.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	f.db = db
	return pair
}

// config is the engine configuration on the multi-host DSN.
func (sp *standbyPair) config(pgExtra, extra string) string {
	return sp.f.writeConfig(fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\n%sredis:\n  addr: %q\n%s%s", sp.dsn, pgExtra, sp.f.rd.Addr(), extra, rules))
}

// standbySlot reports the failover slot's copy on the standby.
func (sp *standbyPair) standbySlot() (exists, synced, temporary bool, confirmed string) {
	conn, err := pgxpool.New(context.Background(), sp.standby.DSN("postgres"))
	if err != nil {
		return false, false, false, ""
	}
	defer conn.Close()
	err = conn.QueryRow(context.Background(), `SELECT synced, temporary, coalesce(confirmed_flush_lsn::text, '') FROM pg_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&synced, &temporary, &confirmed)
	return err == nil, synced, temporary, confirmed
}

// failover stops the primary cleanly (its walsenders send everything
// committed to the standby first) and promotes the standby.
func (sp *standbyPair) failover() {
	t := sp.f.t
	if err := sp.f.pg.Stop("fast"); err != nil {
		t.Fatal(err)
	}
	if err := sp.standby.Promote(sp.f.ctx()); err != nil {
		t.Fatal(err)
	}
	sp.f.db.Reset()
}

// rowWriter updates users 1..n round and round, one row per transaction,
// through f.db (which follows the primary), retrying across a failover,
// until stopped.
type rowWriter struct {
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	ids     map[int]bool // ids with a committed update
	commits int
}

func (f *fixture) startRowWriter(n int) *rowWriter {
	ctx, cancel := context.WithCancel(context.Background())
	w := &rowWriter{cancel: cancel, done: make(chan struct{}), ids: map[int]bool{}}
	go func() {
		defer close(w.done)
		for i := 1; ctx.Err() == nil; i = i%n + 1 {
			if _, err := f.db.Exec(ctx, `UPDATE users SET name = 'w' || $1::text WHERE id = $1`, i); err != nil {
				// The primary is going away: unknown whether it committed.
				time.Sleep(50 * time.Millisecond)
				continue
			}
			w.mu.Lock()
			w.ids[i] = true
			w.commits++
			w.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return w
}

func (w *rowWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.commits
}

// waitMore waits until the writer committed k more updates.
func (w *rowWriter) waitMore(t *testing.T, k int, what string) {
	t.Helper()
	from := w.count()
	harness.WaitFor(t, 2*time.Minute, what, func() bool { return w.count() >= from+k })
}

// stop stops the writer and returns the keys of the rows it updated.
func (w *rowWriter) stop() []string {
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	keys := make([]string, 0, len(w.ids))
	for id := range w.ids {
		keys = append(keys, fmt.Sprintf("user:%d", id))
	}
	return keys
}

// promoteUnderWriter fails over from the primary to the standby while a
// writer updates users 1..n (their keys cached, and the managed key
// user:999999 that no change touches), running before first once the
// writer runs. Afterwards the key of every committed write must be gone
// and user:999999 kept: the engine resumed from a slot that kept its
// history, where a flush would have deleted it.
func (sp *standbyPair) promoteUnderWriter(p *harness.Process, n int, before func()) {
	f, t := sp.f, sp.f.t
	f.set("user:999999")
	f.set(userKeys(1, n)...)
	w := f.startRowWriter(n)
	defer w.stop()
	if before != nil {
		before()
	}
	w.waitMore(t, 50, "writes before the failover")
	sp.failover()
	w.waitMore(t, 100, "writes on the promoted standby")
	keys := w.stop()
	f.barrierTimeout(2 * time.Minute)
	if left := f.present(keys...); len(left) > 0 {
		t.Fatalf("%d of %d keys of committed writes still cached after the failover (lost invalidations): first %q", len(left), len(keys), left[:min(5, len(left))])
	}
	if out := p.Output(); !f.exists("user:999999") || strings.Contains(out, "cannot prove the cache saw every change") {
		t.Fatalf("the engine flushed at the failover although its slot kept its history; output:\n%s", out)
	}
}

// startWithStandby starts a primary of the given version with users 1..n,
// a physical standby of it (syncing failover slots when syncSlots), and
// the engine binary with pgExtra in its postgres section, streaming.
func startWithStandby(t *testing.T, major, n int, syncSlots bool, pgExtra string) (*fixture, *standbyPair, string, *harness.Process) {
	f := newFixture(t, fixtureOpts{pgVersion: major})
	f.seedUsers(n)
	sp := f.newStandbyPair(syncSlots)
	cfg := sp.config(pgExtra, "")
	p := f.startBinaryStreaming(cfg)
	f.barrier()
	return f, sp, cfg, p
}

// TestCompatFailoverSlots (PostgreSQL 17+): the engine's slot is a
// failover slot, synchronized to a physical standby; the standby is
// promoted while an application writes, and the engine, on a DSN naming
// both servers with target_session_attrs=read-write, resumes from the
// synchronized slot on the new primary: no flush, and the key of every
// committed write is deleted.
func TestCompatFailoverSlots(t *testing.T) {
	t.Parallel()
	forVersions(t, 17, func(t *testing.T, major int) {
		f, sp, _, p := startWithStandby(t, major, 400, true, "  failover_slot: true\n")
		started := time.Now()
		sp.promoteUnderWriter(p, 400, func() {
			harness.WaitFor(t, 2*time.Minute, "the failover slot to be synchronized to the standby (persistent, synced)", func() bool {
				exists, synced, temporary, _ := sp.standbySlot()
				return exists && synced && !temporary
			})
			_, _, _, syncedAt := sp.standbySlot()
			t.Logf("failover slot synchronized to the standby at %s after %s", syncedAt, time.Since(started).Round(time.Millisecond))
		})
		// It streams from the new primary, the same process all along.
		var active bool
		if err := f.db.QueryRow(context.Background(), `SELECT active FROM pg_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&active); err != nil || !active {
			t.Fatalf("slot on the new primary: active = %v, %v", active, err)
		}
		if code, _ := p.TermT(t, 30*time.Second); code != 0 {
			t.Fatalf("SIGTERM: exit code %d", code)
		}
	})
}

// TestCompatFailoverWithoutFailoverSlots is the negative control: the same
// failover with an ordinary slot. The promoted standby has no slot, so
// the changes since the engine's last confirmation are unknown: the
// engine stops with an error naming the lost slot, and its next start
// flushes every managed key (consistency.on_history_lost: flush) or
// refuses to start (stop).
func TestCompatFailoverWithoutFailoverSlots(t *testing.T) {
	t.Parallel()
	forVersions(t, 17, func(t *testing.T, major int) {
		const n = 200
		f, sp, cfg, p := startWithStandby(t, major, n, false, "")
		f.set("user:999999")
		f.set(userKeys(1, n)...)
		w := f.startRowWriter(n)
		defer w.stop()
		w.waitMore(t, 50, "writes before the failover")
		sp.failover()
		if code := p.ExitT(t, 2*time.Minute); code == 0 {
			t.Fatalf("the engine exited 0 after failing over to a server without its slot; output:\n%s", p.Output())
		}
		if out := p.Output(); !strings.Contains(out, "is gone") {
			t.Fatalf("the engine stopped without naming the lost slot; output:\n%s", out)
		}
		w.waitMore(t, 50, "writes on the promoted standby while no engine runs")
		keys := w.stop()
		f.startFails(strings.Replace(mustRead(t, cfg), "rules:", "consistency:\n  on_history_lost: stop\nrules:", 1), []string{"did not exist although Redis holds the watermark"})
		if !f.exists("user:999999") {
			t.Fatal("on_history_lost: stop deleted keys")
		}
		p = f.startBinaryStreaming(cfg)
		harness.WaitFor(t, 60*time.Second, "the managed keys to be flushed", func() bool { return !f.exists("user:999999") })
		f.barrier()
		if left := f.present(keys...); len(left) > 0 {
			t.Fatalf("%d keys of committed writes still cached after the flush: first %q", len(left), left[:min(5, len(left))])
		}
		if code, _ := p.TermT(t, 30*time.Second); code != 0 {
			t.Fatalf("SIGTERM: exit code %d", code)
		}
	})
}
