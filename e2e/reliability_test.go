package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// userKeys returns user:{id} for ids in [from, to].
func userKeys(from, to int) []string {
	keys := make([]string, 0, to-from+1)
	for i := from; i <= to; i++ {
		keys = append(keys, fmt.Sprintf("user:%d", i))
	}
	return keys
}

func (f *fixture) seedUsers(n int) {
	f.t.Helper()
	f.exec(`INSERT INTO users SELECT g, 'u' || g || '@x', 'n', '' FROM generate_series(1, $1) g`, n)
}

// updater updates users 1..n, one row per transaction, from a goroutine.
func (f *fixture) updater(ctx context.Context, n int) <-chan error {
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		for i := 1; i <= n; i++ {
			if _, err := f.db.Exec(ctx, `UPDATE users SET name = $2 WHERE id = $1`, i, fmt.Sprintf("n%d", i)); err != nil {
				if ctx.Err() == nil {
					errc <- fmt.Errorf("update %d: %w", i, err)
				}
				return
			}
		}
	}()
	return errc
}

// TestKill9AtRandomMomentsLosesNothing kills the engine binary with SIGKILL
// several times while single-row transactions stream, restarts it, and
// checks that every changed row's key was deleted in the end. A build that
// confirmed positions before Redis acknowledged them would leave keys here.
func TestKill9AtRandomMomentsLosesNothing(t *testing.T) {
	// Not parallel: the SIGTERM contract (exit within 10 s) is timed.
	f := newFixture(t, fixtureOpts{})
	const n = 3000
	f.seedUsers(n)
	p := f.startBinaryStreaming(f.cfgPath)
	f.set(userKeys(1, n)...)
	errc := f.updater(context.Background(), n)

	kills := 0
	for kills < 3 {
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
		p.KillT(t)
		kills++
		time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
		p = f.startBinaryStreaming(f.cfgPath)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	f.barrier()
	if left := f.present(userKeys(1, n)...); len(left) > 0 {
		t.Fatalf("%d of %d changed rows still cached after %d kill -9 restarts (lost changes): first %q", len(left), n, kills, left[:min(5, len(left))])
	}
	// The slot's position follows: a graceful stop confirms everything applied.
	barrierLSN := f.currentLSN()
	if code, took := p.TermT(t, 30*time.Second); code != 0 || took > 10*time.Second {
		t.Fatalf("SIGTERM: exit code %d after %s, want 0 within 10s", code, took)
	}
	if c := f.confirmed(); c < barrierLSN {
		t.Fatalf("after a clean stop confirmed_flush_lsn = %s, want >= %s", c, barrierLSN)
	}
}

// TestGracefulShutdownConfirmsApplied checks the contract of SIGTERM: exit
// status 0 within 10 s, what was applied confirmed to Postgres.
func TestGracefulShutdownConfirmsApplied(t *testing.T) {
	// Not parallel: the SIGTERM contract (exit within 10 s) is timed.
	f := newFixture(t, fixtureOpts{})
	p := f.startBinaryStreaming(f.cfgPath)
	f.set("user:1")
	f.exec(`INSERT INTO users VALUES (1, 'a@x', '', '')`)
	f.barrier()
	applied := f.currentLSN()
	code, took := p.TermT(t, 30*time.Second)
	if code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0; output:\n%s", code, p.Output())
	}
	if took > 10*time.Second {
		t.Fatalf("exit took %s, want < 10s", took)
	}
	if c := f.confirmed(); c < applied {
		t.Fatalf("confirmed_flush_lsn = %s after a clean stop, want >= %s (applied)", c, applied)
	}
	if strings.Contains(p.Output(), "panic") {
		t.Fatalf("output mentions a panic:\n%s", p.Output())
	}
	t.Logf("stopped in %s", took)
}

// commitLSNs returns the commit LSNs of the transactions a probe slot
// (test_decoding) decodes, without consuming them.
func (f *fixture) commitLSNs(slot string) []pglogrepl.LSN {
	f.t.Helper()
	rows, err := f.db.Query(context.Background(), `SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, NULL)`, slot)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	var out []pglogrepl.LSN
	for rows.Next() {
		var l, data string
		if err := rows.Scan(&l, &data); err != nil {
			f.t.Fatal(err)
		}
		if strings.HasPrefix(data, "COMMIT") {
			lsn, _ := pglogrepl.ParseLSN(l)
			out = append(out, lsn)
		}
	}
	return out
}

// TestRedisStalledHoldsPositionAndKeepsConnection pauses Redis (SIGSTOP)
// longer than wal_sender_timeout while transactions queue up: the engine
// must not confirm past the first unapplied commit, must keep its
// replication connection alive with status updates, and must apply
// everything once Redis answers again.
func TestRedisStalledHoldsPositionAndKeepsConnection(t *testing.T) {
	// Not parallel: status updates must beat a 4 s wal_sender_timeout.
	f := newFixture(t, fixtureOpts{
		pgSettings: map[string]string{"wal_sender_timeout": "4s"},
		extra:      "sink:\n  max_batch_keys: 50\n",
	})
	const n = 400
	f.seedUsers(n)
	f.start()
	f.barrier()
	pid := f.walsenderPID()
	f.exec(`SELECT pg_create_logical_replication_slot('probe', 'test_decoding')`)

	f.set(userKeys(1, n)...)
	resumeRedis := f.rd.PauseT(t)
	if err := <-f.updater(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	time.Sleep(7 * time.Second) // well past wal_sender_timeout
	commits := f.commitLSNs("probe")
	if len(commits) < n {
		t.Fatalf("probe slot saw %d commits, want >= %d", len(commits), n)
	}
	if c := f.confirmed(); c >= commits[0] {
		t.Fatalf("confirmed_flush_lsn %s passed the first unapplied commit %s while Redis was stalled", c, commits[0])
	}
	if now := f.walsenderPID(); now != pid {
		t.Fatalf("replication connection was replaced while Redis stalled (walsender pid %d -> %d): status updates did not keep it alive", pid, now)
	}
	resumeRedis()
	f.barrier()
	f.wantGone(userKeys(1, n)...)
	last := commits[len(commits)-1]
	harness.WaitFor(t, 20*time.Second, "confirmed position to pass the last update", func() bool { return f.confirmed() > last })
	f.exec(`SELECT pg_drop_replication_slot('probe')`)
}

func (f *fixture) walsenderPID() int {
	f.t.Helper()
	var pid int
	err := f.db.QueryRow(context.Background(), `SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&pid)
	if err != nil {
		f.t.Fatal(err)
	}
	return pid
}

// TestRedisKilledMidStream kills Redis (its data survives in an AOF, as with
// a persistent Redis) while changes stream, starts it again, and checks the
// engine retried until every change was applied.
func TestRedisKilledMidStream(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{redisArgs: []string{"--appendonly", "yes", "--appendfsync", "always"}})
	const n = 1000
	f.seedUsers(n)
	f.start()
	f.barrier()
	f.set(userKeys(1, n)...)
	errc := f.updater(context.Background(), n)
	time.Sleep(200 * time.Millisecond)
	if err := f.rd.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := f.rd.Start(); err != nil {
		t.Fatal(err)
	}
	f.barrier()
	if left := f.present(userKeys(1, n)...); len(left) > 0 {
		t.Fatalf("%d keys still cached after Redis came back: first %q", len(left), left[:min(5, len(left))])
	}
}

// TestPostgresRestartMidStream stops Postgres with -m immediate while
// changes stream; the engine reconnects and resumes from the confirmed
// position, losing nothing committed before or after.
func TestPostgresRestartMidStream(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	const n = 1000
	f.seedUsers(n)
	f.start()
	f.barrier()
	f.set(userKeys(1, n)...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := f.updater(ctx, n/2)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := f.pg.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := f.pg.Start(); err != nil {
		t.Fatal(err)
	}
	f.db.Reset()
	for i := n/2 + 1; i <= n; i++ {
		f.exec(`UPDATE users SET name = 'after' WHERE id = $1`, i)
	}
	f.barrier()
	if left := f.present(userKeys(1, n)...); len(left) > 0 {
		t.Fatalf("%d keys still cached after a Postgres restart: first %q", len(left), left[:min(5, len(left))])
	}
}

// TestIdlePublicationStillAdvancesSlot writes only to a table outside the
// publication: the slot's confirmed position must still follow, so the slot
// does not hold WAL for nothing.
func TestIdlePublicationStillAdvancesSlot(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.start()
	f.barrier()
	for i := 0; i < 20; i++ {
		f.exec(`INSERT INTO other (v) SELECT repeat('x', 100) FROM generate_series(1, 500)`)
	}
	target := f.currentLSN()
	harness.WaitFor(t, 30*time.Second, "confirmed_flush_lsn to follow writes to other tables", func() bool { return f.confirmed() >= target })
	var retained int64
	if err := f.db.QueryRow(context.Background(), `SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&retained); err != nil {
		t.Fatal(err)
	}
	t.Logf("confirmed %s >= %s; WAL retained by the slot: %d bytes", f.confirmed(), target, retained)
}

// TestLargeTransactionBoundedMemory commits one transaction of 500,000 rows
// (streamed in progress: logical_decoding_work_mem is 64kB) with a 1 MB key
// buffer, so keys spill to disk; every key must be deleted. The engine's
// peak RSS is reported.
func TestLargeTransactionBoundedMemory(t *testing.T) {
	// Not parallel: CPU-bound (500,000 rows); measures the engine's RSS.
	if testing.Short() {
		t.Skip("500,000-row transaction: skipped with -short")
	}
	f := newFixture(t, fixtureOpts{
		pgSettings: map[string]string{"logical_decoding_work_mem": "64kB"},
		pgExtra:    "  txn_buffer_mb: 1\n",
	})
	const n = 500000
	p := f.startBinaryStreaming(f.cfgPath)
	keys := make([]string, 0, n)
	for i := 1; i <= n; i++ {
		keys = append(keys, fmt.Sprintf("big:%d", i))
	}
	f.set(keys...)
	f.set("keep:me")
	start := time.Now()
	f.exec(`INSERT INTO big SELECT g, 'payload ' || g FROM generate_series(1, $1) g`, n)
	committed := time.Since(start)
	f.barrierTimeout(5 * time.Minute)
	applied := time.Since(start)
	if left := f.count("big:*"); left != 0 || !f.exists("keep:me") {
		t.Fatalf("after the 500,000-row transaction %d big:* keys are left (want 0), keep:me kept: %v", left, f.exists("keep:me"))
	}
	rss, _, _ := harness.ProcMem(p.Pid())
	t.Logf("500,000-row transaction: commit took %s, all keys deleted %s after the statement started; engine peak RSS %.1f MiB", committed, applied, float64(rss)/(1<<20))
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestLargeTransactionNotStreamed does the same without in-progress
// streaming: keys are applied in chunks while the committed transaction
// arrives, and the position moves only at its commit.
func TestLargeTransactionNotStreamed(t *testing.T) {
	// Not parallel: CPU-bound (a large transaction).
	f := newFixture(t, fixtureOpts{pgExtra: "  streaming: false\n"})
	const n = 100000
	f.start()
	f.barrier()
	keys := make([]string, 0, n)
	for i := 1; i <= n; i++ {
		keys = append(keys, fmt.Sprintf("big:%d", i))
	}
	f.set(keys...)
	f.exec(`INSERT INTO big SELECT g, 'p' FROM generate_series(1, $1) g`, n)
	f.barrierTimeout(3 * time.Minute)
	if left := f.count("big:*"); left != 0 {
		t.Fatalf("%d keys left after a %d-row transaction", left, n)
	}
}

// TestStreamedTransactionRollbacks: with in-progress streaming, a large
// transaction rolled back invalidates nothing, and a large savepoint rolled
// back inside a committed transaction invalidates only the committed part.
func TestStreamedTransactionRollbacks(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{pgSettings: map[string]string{"logical_decoding_work_mem": "64kB"}})
	f.start()
	f.barrier()
	const n = 20000
	var keys []string
	for i := 1; i <= 2*n; i++ {
		keys = append(keys, fmt.Sprintf("big:%d", i))
	}
	f.set(keys...)
	f.exec(fmt.Sprintf(`BEGIN; INSERT INTO big SELECT g, 'p' FROM generate_series(1, %d) g; ROLLBACK;`, n))
	f.barrier()
	if gone := n*2 - len(f.present(keys...)); gone != 0 {
		t.Fatalf("a rolled-back streamed transaction deleted %d keys", gone)
	}
	f.exec(fmt.Sprintf(`BEGIN;
INSERT INTO big SELECT g, 'p' FROM generate_series(1, %d) g;
SAVEPOINT s;
INSERT INTO big SELECT g, 'p' FROM generate_series(%d, %d) g;
ROLLBACK TO s;
COMMIT;`, n, n+1, 2*n))
	f.barrier()
	f.wantGone(keys[:n]...)
	if left := len(f.present(keys[n:]...)); left != n {
		t.Fatalf("the rolled-back savepoint's keys: %d of %d kept, want all kept", left, n)
	}
}
