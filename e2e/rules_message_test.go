package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// emit is the one-line SQL of an explicit invalidation.
const emit = `SELECT pg_logical_emit_message(true, 'cdcinvalidate', $1)`

// TestRulesExplicitMessages checks invalidations that applications emit
// from SQL: applied with their transaction's commit (never on ROLLBACK),
// in every content format, and inside a large streamed transaction.
func TestRulesExplicitMessages(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{pgSettings: map[string]string{"logical_decoding_work_mem": "64kB"}})
	run := f.start()
	f.barrier()

	// Newline-separated keys, in a transaction of its own.
	f.set("feed:1", "feed:2", "feed:3")
	f.exec(emit, "feed:1\n  feed:2  \n")
	f.barrier()
	f.wantGone("feed:1", "feed:2")
	f.wantKept("feed:3")

	// JSON: an array of keys, and an object with keys and patterns.
	f.set("feed:1", "feed:2", "stats:a", "stats:b", "statsx", "other:1")
	f.exec(emit, `["feed:1", "feed:2"]`)
	f.exec(emit, `{"keys": ["other:1"], "patterns": ["stats:*"]}`)
	f.barrier()
	f.wantGone("feed:1", "feed:2", "other:1", "stats:a", "stats:b")
	f.wantKept("statsx")

	// Generation keys named in the message are incremented.
	f.exec(emit, `{"generations": ["gen:feed"]}`)
	f.exec(emit, `{"keys": ["feed:1"], "generations": ["gen:feed"]}`)
	f.barrier()
	if n, _ := f.rdb.Get(context.Background(), "gen:feed").Int(); n < 1 {
		t.Errorf("gen:feed = %d after two messages naming it", n)
	}

	// With row changes in one transaction: applied at its commit.
	f.set("user:1", "feed:9")
	f.exec(`BEGIN; INSERT INTO users VALUES (1, 'a@x', '', ''); SELECT pg_logical_emit_message(true, 'cdcinvalidate', 'feed:9'); COMMIT`)
	f.barrier()
	f.wantGone("user:1", "feed:9")

	// ROLLBACK: nothing. A rolled-back savepoint inside a committed
	// transaction: only the committed part.
	f.set("feed:1", "feed:2", "feed:3")
	f.exec(`BEGIN; SELECT pg_logical_emit_message(true, 'cdcinvalidate', 'feed:1'); ROLLBACK`)
	f.exec(`BEGIN; SELECT pg_logical_emit_message(true, 'cdcinvalidate', 'feed:2');
SAVEPOINT s; SELECT pg_logical_emit_message(true, 'cdcinvalidate', 'feed:3'); ROLLBACK TO s; COMMIT`)
	f.barrier()
	f.wantKept("feed:1", "feed:3")
	f.wantGone("feed:2")

	// Messages with other prefixes are other applications' (non-transactional
	// ones with the prefix: TestRulesNonTransactionalMessage).
	f.exec(`SELECT pg_logical_emit_message(true, 'someone-else', 'feed:1')`)
	f.exec(`SELECT pg_logical_emit_message(false, 'someone-else', 'feed:1')`)
	f.barrier()
	f.wantKept("feed:1")

	// A large transaction, streamed while in progress (64kB of decoding
	// memory): its message's keys wait for the commit.
	streamed := func(commit bool) {
		ctx := context.Background()
		tx, err := f.db.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, emit, `{"keys": ["big:msg"], "patterns": ["bigp:*"]}`); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO other (v) SELECT repeat('x', 100) FROM generate_series(1, 20000)`); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, emit, "big:msg2"); err != nil {
			t.Fatal(err)
		}
		// The server streams the transaction before its end; nothing of it
		// may be applied yet.
		harness.WaitFor(t, 30*time.Second, "the transaction to be streamed", func() bool {
			var n int64
			err := f.db.QueryRow(ctx, `SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&n)
			return err == nil && n > 0
		})
		time.Sleep(300 * time.Millisecond)
		f.wantKept("big:msg", "big:msg2", "bigp:1")
		if commit {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		} else if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		f.barrier()
	}
	f.set("big:msg", "big:msg2", "bigp:1", "bigp:2")
	streamed(false)
	f.wantKept("big:msg", "big:msg2", "bigp:1", "bigp:2")
	streamed(true)
	f.wantGone("big:msg", "big:msg2", "bigp:1", "bigp:2")

	// Malformed content stops the engine with an error naming the
	// message's LSN, instead of skipping it.
	var lsn string
	if err := f.db.QueryRow(context.Background(), `SELECT pg_logical_emit_message(true, 'cdcinvalidate', '["unterminated')::text`).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	err := run.wait(t, 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), "malformed") || !strings.Contains(err.Error(), "LSN "+lsn) {
		t.Fatalf("engine error = %v, want a malformed message at LSN %s", err, lsn)
	}
	t.Logf("engine stopped with: %v", err)
}

// TestRulesNonTransactionalMessage: pg_logical_emit_message(false,
// 'cdcinvalidate', ...) is applied at its place in the WAL, not at any
// commit: alone, or inside a transaction, whether that transaction commits
// or not. Its position is confirmed only after Redis applied it: while
// Redis is paused the slot stays below the message.
func TestRulesNonTransactionalMessage(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.start()
	f.barrier()
	ctx := context.Background()

	f.set("feed:1", "feed:2", "feed:3", "stats:a", "gen:other")
	f.exec(`SELECT pg_logical_emit_message(false, 'cdcinvalidate', 'feed:1')`)
	f.exec(`SELECT pg_logical_emit_message(false, 'cdcinvalidate', '{"patterns": ["stats:*"], "generations": ["gen:feed"]}')`)
	// Inside a transaction that rolls back: applied all the same, since it
	// is not part of the transaction.
	f.exec(`BEGIN; SELECT pg_logical_emit_message(false, 'cdcinvalidate', 'feed:2'); ROLLBACK`)
	f.barrier()
	f.wantGone("feed:1", "feed:2", "stats:a")
	f.wantKept("feed:3")
	if n, _ := f.rdb.Get(ctx, "gen:feed").Int(); n != 1 {
		t.Errorf("gen:feed = %d after one non-transactional message naming it, want 1", n)
	}

	// Not confirmed before Redis applied it.
	f.set("feed:3")
	resume := f.rd.PauseT(t)
	msg := f.lsn(`SELECT pg_logical_emit_message(false, 'cdcinvalidate', 'feed:3')::text`)
	f.exec(`SELECT pg_switch_wal()`) // WAL after the message, for keepalives to report
	time.Sleep(3 * time.Second)      // several status updates (status_interval 1s)
	if c := f.confirmed(); c > msg {
		t.Fatalf("slot confirmed %s, past the message at %s, while Redis was paused", c, msg)
	}
	resume()
	f.barrier()
	f.wantGone("feed:3")
	harness.WaitFor(t, 20*time.Second, "the slot to pass the applied message", func() bool { return f.confirmed() > msg })
}
