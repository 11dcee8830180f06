package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// The version matrix: the cases whose server side differs between
// PostgreSQL versions (protocol version, in-progress streaming, logical
// messages, slot invalidation), run once per major version of
// CDC_COMPAT_VERSIONS, e.g.
//
//	scripts/fetch-postgres.sh 14 16 17 18
//	CDC_COMPAT_VERSIONS="14 15 16 17 18" go test ./e2e -run 'TestCompat' -count=1
//
// Without CDC_COMPAT_VERSIONS the matrix is skipped (the rest of the suite
// covers the default server). A version that is not installed is skipped,
// and fails the test in CI (CI=true).

// forVersions runs fn once per version of the matrix that is at least
// minMajor, as a parallel subtest named pg<major>.
func forVersions(t *testing.T, minMajor int, fn func(t *testing.T, major int)) {
	t.Helper()
	versions := harness.MatrixVersions(t)
	if versions == nil {
		t.Skipf("the version matrix runs with %s=\"14 15 16 17 18\" (after scripts/fetch-postgres.sh), as .ci/run does", harness.EnvMatrix)
	}
	ran := false
	for _, v := range versions {
		if v < minMajor {
			continue
		}
		ran = true
		t.Run(fmt.Sprintf("pg%d", v), func(t *testing.T) {
			t.Parallel() // each version has servers of its own
			harness.RequireVersion(t, v)
			fn(t, v)
		})
	}
	if !ran {
		t.Skipf("no version of %s=%q is %d or later", harness.EnvMatrix, strings.Join(strings.Fields(fmt.Sprint(versions)), " "), minMajor)
	}
}

// TestCompatCore runs the core cases on each version: row changes with old
// and new keys under REPLICA IDENTITY FULL, TRUNCATE, explicit
// invalidations, a transaction streamed while in progress (protocol 2 from
// 14 on), kill -9 of the engine mid-stream, and a slot invalidated for
// lack of WAL (fail closed).
func TestCompatCore(t *testing.T) {
	t.Parallel()
	forVersions(t, 14, func(t *testing.T, major int) {
		f := newFixture(t, fixtureOpts{pgVersion: major, pgSettings: map[string]string{"logical_decoding_work_mem": "64kB"}})
		if v := f.pg.ServerVersionNum() / 10000; v != major {
			t.Fatalf("server version %d, want %d", f.pg.ServerVersionNum(), major)
		}
		p := f.startBinaryStreaming(f.cfgPath)
		f.barrier()

		t.Run("row changes", func(t *testing.T) { f.rowChangeCases() })
		t.Run("truncate", func(t *testing.T) { f.compatTruncate() })
		t.Run("messages", func(t *testing.T) { f.compatMessages() })
		t.Run("streamed transaction", func(t *testing.T) { f.compatStreamed() })
		t.Run("kill -9 mid-stream", func(t *testing.T) { p = f.compatCrash(p) })
		if code, _ := p.TermT(t, 30*time.Second); code != 0 {
			t.Fatalf("SIGTERM: exit code %d; output:\n%s", code, p.Output())
		}
		t.Run("slot lost", func(t *testing.T) { f.compatSlotLost(f.loseSlotWAL, "max_slot_wal_keep_size") })
	})
}

// TestCompatIdleTimeoutSlot (PostgreSQL 18+): a slot left inactive for
// longer than idle_replication_slot_timeout is invalidated
// (invalidation_reason idle_timeout), which loses history like removed
// WAL: the engine refuses or flushes.
func TestCompatIdleTimeoutSlot(t *testing.T) {
	t.Parallel()
	forVersions(t, 18, func(t *testing.T, major int) {
		f := newFixture(t, fixtureOpts{pgVersion: major})
		p := f.startBinaryStreaming(f.cfgPath)
		f.barrier()
		if code, _ := p.TermT(t, 30*time.Second); code != 0 {
			t.Fatalf("SIGTERM: exit code %d", code)
		}
		f.compatSlotLost(f.idleOutSlot, "idle_replication_slot_timeout")
	})
}

// idleOutSlot makes PostgreSQL 18 invalidate the stopped engine's slot for
// idleness: a timeout of 1 s (the unit is seconds), then checkpoints.
func (f *fixture) idleOutSlot() {
	t := f.t
	reset := f.setSystem("idle_replication_slot_timeout", "1s")
	harness.WaitFor(t, 60*time.Second, "the slot to be invalidated for idleness", func() bool {
		time.Sleep(500 * time.Millisecond)
		f.exec(`CHECKPOINT`)
		var reason string
		err := f.db.QueryRow(context.Background(), `SELECT coalesce(invalidation_reason, '') FROM pg_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&reason)
		return err == nil && reason == "idle_timeout"
	})
	reset()
}

func (f *fixture) compatTruncate() {
	f.exec(`INSERT INTO orders VALUES (1, 1, ''), (2, 2, '')`)
	f.barrier()
	f.set("order:1", "order:2", "user:1:orders", "big:1", "user:2")
	f.exec(`TRUNCATE orders, big`)
	f.barrier()
	f.wantGone("order:1", "order:2", "user:1:orders", "big:1")
	f.wantKept("user:2")
}

func (f *fixture) compatMessages() {
	f.set("feed:1", "feed:2", "feed:3", "stats:a")
	f.exec(emit, `{"keys": ["feed:1"], "patterns": ["stats:*"]}`)
	f.exec(`BEGIN; SELECT pg_logical_emit_message(true, 'cdcinvalidate', 'feed:2'); ROLLBACK`)
	// A non-transactional message is applied at its WAL position.
	f.exec(`SELECT pg_logical_emit_message(false, 'cdcinvalidate', 'feed:3')`)
	f.barrier()
	f.wantGone("feed:1", "stats:a", "feed:3")
	f.wantKept("feed:2")
}

// compatStreamed: a transaction larger than logical_decoding_work_mem is
// streamed before its commit; nothing of it is applied until the commit.
func (f *fixture) compatStreamed() {
	t := f.t
	ctx := context.Background()
	const n = 3000
	keys := make([]string, 0, n+1)
	for i := 1; i <= n; i++ {
		keys = append(keys, fmt.Sprintf("big:%d", i))
	}
	keys = append(keys, "big:msg")
	f.set(keys...)
	streamedBefore := f.streamTxns()
	tx, err := f.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, $1) g`, n); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, emit, "big:msg"); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 60*time.Second, "the transaction to be streamed while in progress", func() bool { return f.streamTxns() > streamedBefore })
	f.barrier()
	f.wantKept(keys...)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	f.barrier()
	if left := f.present(keys...); len(left) > 0 {
		t.Fatalf("%d keys of the streamed transaction still cached after its commit: first %q", len(left), left[:min(5, len(left))])
	}
}

// streamTxns is how many transactions the slot has streamed in progress.
func (f *fixture) streamTxns() int64 {
	f.t.Helper()
	var n int64
	if err := f.db.QueryRow(context.Background(), `SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n
}

// compatCrash kills the engine twice while single-row transactions stream;
// after restarts every changed row's key is gone. It returns the engine
// running at the end.
func (f *fixture) compatCrash(p *harness.Process) *harness.Process {
	t := f.t
	const n = 600
	f.exec(`INSERT INTO users SELECT g, 'c' || g || '@x', 'n', '' FROM generate_series(1000, 999 + $1) g`, n)
	f.barrier()
	keys := make([]string, 0, n)
	for i := 1000; i < 1000+n; i++ {
		keys = append(keys, fmt.Sprintf("user:%d", i))
	}
	f.set(keys...)
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		for i := 1000; i < 1000+n; i++ {
			if _, err := f.db.Exec(context.Background(), `UPDATE users SET name = 'crash' WHERE id = $1`, i); err != nil {
				errc <- fmt.Errorf("update %d: %w", i, err)
				return
			}
		}
	}()
	for kill := 0; kill < 2; kill++ {
		time.Sleep(300 * time.Millisecond)
		p.KillT(t)
		p = f.startBinaryStreaming(f.cfgPath)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	f.barrier()
	if left := f.present(keys...); len(left) > 0 {
		t.Fatalf("%d of %d changed rows still cached after kill -9 restarts: first %q", len(left), n, left[:min(5, len(left))])
	}
	return p
}

// compatSlotLost: with the engine stopped, lose invalidates the slot (it
// falls behind by more than max_slot_wal_keep_size, say). A start with
// on_history_lost: stop refuses, naming cause, and deletes nothing; the
// default start drops and recreates the slot and flushes the managed keys.
func (f *fixture) compatSlotLost(lose func(), cause string) {
	t := f.t
	lose()
	f.set("user:2", "unmanaged:1")
	f.exec(`INSERT INTO users VALUES (2, 'b@x', 'n', '') ON CONFLICT (id) DO UPDATE SET name = 'while the slot was lost'`)
	out := f.startFails(mustRead(t, f.cfgPath)+"consistency:\n  on_history_lost: stop\n", []string{"was invalidated by PostgreSQL", cause, "on_history_lost: flush"})
	t.Logf("refusal: %s", harness.LastLines(out, 1))
	if !f.exists("user:2") {
		t.Fatal("on_history_lost: stop deleted keys")
	}
	p := f.startBinaryStreaming(f.cfgPath)
	harness.WaitFor(t, 60*time.Second, "the stale key to be flushed", func() bool { return !f.exists("user:2") })
	f.wantKept("unmanaged:1")
	f.barrier()
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d", code)
	}
}

// loseSlotWAL makes PostgreSQL invalidate the stopped engine's slot:
// max_slot_wal_keep_size of 1MB, a few WAL segments, a checkpoint.
func (f *fixture) loseSlotWAL() {
	t := f.t
	reset := f.setSystem("max_slot_wal_keep_size", "1MB")
	harness.WaitFor(t, 60*time.Second, "the slot to be invalidated (wal_status lost)", func() bool {
		for i := 0; i < 3; i++ {
			f.exec(`INSERT INTO other (v) VALUES ('wal')`)
			f.exec(`SELECT pg_switch_wal()`)
		}
		f.exec(`CHECKPOINT`)
		var status string
		err := f.db.QueryRow(context.Background(), `SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&status)
		return err == nil && status == "lost"
	})
	reset()
}

// setSystem sets a reloadable server setting with ALTER SYSTEM and
// reloads; the returned reset (also run at cleanup) undoes it.
func (f *fixture) setSystem(name, value string) (reset func()) {
	f.t.Helper()
	f.exec(fmt.Sprintf(`ALTER SYSTEM SET %s = '%s'`, name, value))
	f.exec(`SELECT pg_reload_conf()`)
	reset = func() {
		_, _ = f.db.Exec(context.Background(), `ALTER SYSTEM RESET `+name)
		_, _ = f.db.Exec(context.Background(), `SELECT pg_reload_conf()`)
	}
	f.t.Cleanup(reset)
	return reset
}
