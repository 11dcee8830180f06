// Package faults is the fault-injection suite of cdcinvalidate: writers run
// random transactions, readers fill the cache from the database, faults hit
// the engine, Redis and PostgreSQL, and after each run a checker compares
// every managed key in Redis with a fresh read of the database.
//
// # What counts as correct
//
// After quiescence (the writers stopped and the engine applied everything
// committed before a barrier transaction), every key present in Redis holds
// exactly what a fresh read of the database produces; an absent key is
// always fine. A key that differs is stale: an invalidation was lost.
//
// The barrier (fixture.barrier) is one transaction that inserts a row of
// table barrier, whose key the engine deletes, and emits
// pg_logical_emit_message(true, 'cdcinvalidate-barrier', ...). It has
// passed when the key is gone (independent of anything the engine reports
// about itself, so it also holds for the negative controls), the watermark
// cdcinvalidate:<slot>:lsn has reached the message's LSN, and the slot's
// confirmed_flush_lsn has reached that watermark. The last wait is needed
// because the watermark alone can run ahead of a flush (see
// TestRedisBackInTime).
//
// # Workload
//
// Writers: random transactions of 1-5 changes, each in its own savepoint
// (updates of key and non-key columns, primary key changes, inserts,
// deletes, multi-row updates, savepoints rolled back), many changes to one
// row (up to 140 in one transaction, keys and primary keys included), a
// rare TRUNCATE with new rows, 5% ROLLBACK; and, in some scenarios,
// writers of large transactions (thousands of rows, open for a while,
// large savepoints rolled back) that PostgreSQL streams while in progress
// (logical_decoding_work_mem = 64kB). Several writers run at once, so their
// transactions interleave.
//
// Detection power: the key space (about 8,000 plain keys, plus table big)
// is large compared with what a run writes, TRUNCATE is rare, writers pause
// during long faults (burst) and the large-transaction writers stop after a
// failpoint crash, so that a lost invalidation is seldom hidden by a later
// change of the same key. The negative controls show that losses are seen.
//
// # Readers
//
// Two kinds of readers fill two key namespaces, so that neither can create
// a stale-set race of its own (that race is the client library's business,
// not the engine's):
//
//   - Plain keys (user:{id}, user:email:{email}, order:{id},
//     orders:user:{user_id}, big:{id}) are filled with a plain SET only while
//     the writers are paused (no transaction in flight, every COMMIT
//     returned), from one snapshot of the database. Such a value is current
//     when it is written, so it can only become stale if the engine loses
//     the invalidation of a later commit. These keys are what the fault
//     scenarios mostly measure: every key is cached before the faults hit.
//   - Library keys (the same templates prefixed with lib:) are filled
//     concurrently with the writers through cacheaside with leases, and the
//     engine runs with client.leases: true: the realistic set-up. The
//     library's guarantee (no stale entry after quiescence) holds as long as
//     the engine deletes every lease with its key, across crashes, restarts
//     and Redis failures, which is what this suite checks. The one window
//     leases cannot close (a commit the engine applies before other
//     sessions can see it, see cacheaside/README.md, "Commit visibility: the lease fence") would show
//     up as a stale library key; the checker counts library keys
//     separately from plain ones (a stale library key fails the test too).
//
// # Scenarios
//
// Without failpoints (faults_test.go, also run by go test ./...): baseline
// with a checker self-test; kill -9 at random moments (while streaming and
// during start-up); transactions open across an engine restart (kill -9,
// SIGTERM); Redis stopped (SIGSTOP) past wal_sender_timeout, with and
// without kill -9; Redis slow through a latency proxy; Redis killed and
// restarted empty; Redis connections reset; PostgreSQL stopped -m
// immediate; the walsender terminated; Redis restarted from an older AOF
// (back in time) and its negative control without the watermark; the same
// rewind while the leader is frozen, followed by a standby's takeover
// (takeover_test.go), and its negative control without the watermark.
//
// With -tags failpoints (failpoints_test.go): SIGKILL at sink-after-ack,
// sink-mid-txn (postgres.streaming: false, large transactions) and
// stream-after-stop (streamed transactions); the negative control
// CDC_UNSAFE=confirm-received with kill -9 while Redis is stopped (watermark
// off: the checker must find stale keys), and the same bug with the
// watermark on (the restarted engine must flush). On a Redis Cluster of 3
// masters and 3 replicas (cluster_test.go, tagged only to keep the CI from
// running them twice): a master killed (-9) after its cut-off replica
// missed a second of acknowledged deletes, the replica promoted (the
// engine must flush), and its negative control without the watermark;
// redis-cli --cluster reshard of 1200 slots under the workload, and its
// negative control CDC_UNSAFE=drop-redirects (cluster_failpoints_test.go).
//
// Rule actions (actions_test.go, actions_failpoints_test.go): the same
// tables also have rules with refresh, version and stream on key
// namespaces of their own, checked exactly against a second logical slot
// decoded by the test (refreshed values field by field against the
// database, version keys equal to the highest commit LSN of their rows and
// never lower in samples taken around each fault, stream parts as the
// reference lays them out, none twice, none missing): kill -9 at random
// moments, with a self-test of planted faults; and with -tags failpoints,
// streaming off, sink-mid-txn and sink-after-ack with the walsender
// terminated while a transaction's event is half written, and the
// confirm-received negative control; a zombie leader (frozen with SIGSTOP
// at sink-before-refresh, a standby takes over, then resumed after newer
// rows: zombie_failpoints_test.go) and its negative control with
// CDC_UNSAFE=unordered-refresh.
//
// # Running
//
//	go test ./e2e/faults/ -count=1 -v                   # scenarios that need no failpoints
//	go test -tags failpoints ./e2e/faults/ -count=1 -v  # everything, incl. failpoints and negative controls
//
// The engine binary is built once per test process, with -tags failpoints
// when the package is. CDC_FAULTS_RUNS=N sets the runs of every scenario
// (default: 1 to 3 each, 1 with -short); CDC_FAULTS_SEED=S repeats the
// random choices of a run, not its timing (the seed is logged). A soak:
//
//	CDC_FAULTS_RUNS=40 go test -tags failpoints ./e2e/faults/ -count=1 -v -timeout 3h
//
// CDC_FAULTS_LOGS=1 logs the engines' output also when a test passes.
// CDC_FAULTS_SUMMARY=FILE also writes the summary table (Markdown) to FILE;
// it is always printed at the end of the test output, and each test logs
// its own SUMMARY line.
//
// Every engine also runs the online verifier (verify_test.go: 1 in 10 keys
// sampled, windows 200 ms and 1 s): its figures, summed over the engine
// processes of a scenario, end each SUMMARY line and fill the Verifier
// columns of the table. A positive scenario fails if it counted a stale
// check; the zombie negative control fails unless it counted some.
//
// Every server is started by internal/harness on 127.0.0.1 (one PostgreSQL
// for the process, a database and slot per test, a Redis per test); the
// proxy listens on 127.0.0.1 only; only processes this package started are
// ever signalled.
package faults

import (
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...interface{}) {}

func TestMain(m *testing.M) {
	// Readers see Redis die and come back on purpose; go-redis would log
	// every failed dial.
	redis.SetLogger(quietLogger{})
	code := m.Run()
	if text := summaryText(); text != "" {
		fmt.Print("\n" + text)
		if path := os.Getenv("CDC_FAULTS_SUMMARY"); path != "" {
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				fmt.Fprintf(os.Stderr, "write summary: %v\n", err)
			}
		}
	}
	if sharedPG.pg != nil {
		if err := sharedPG.pg.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	os.Exit(code)
}

// sharedPG is one PostgreSQL for the whole test process; each test gets
// its own database (and slot) in it, and its own Redis. Tests run one
// after the other, so a test that restarts the server disturbs no other.
var sharedPG struct {
	once sync.Once
	pg   *harness.Postgres
	err  error
}

// pgSettings: logical_decoding_work_mem=64kB makes every transaction above
// 64 kB of changes a streamed one (with postgres.streaming on) or a
// spilled one (off); a short deadlock_timeout keeps random writers moving.
var pgSettings = map[string]string{
	"logical_decoding_work_mem": "64kB",
	"deadlock_timeout":          "100ms",
	"max_connections":           "200",
}

func postgresT(t *testing.T) *harness.Postgres {
	t.Helper()
	sharedPG.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		sharedPG.pg, sharedPG.err = harness.StartPostgres(ctx, harness.PostgresOptions{Settings: pgSettings})
	})
	if sharedPG.err != nil {
		t.Fatalf("harness: %v", sharedPG.err)
	}
	return sharedPG.pg
}

// buildEngine returns the engine binary, built once per test process: with
// -tags failpoints when this package is (so CDC_FAILPOINT and CDC_UNSAFE
// work), else the release build.
func buildEngine(t *testing.T) string {
	t.Helper()
	if !failpointsBuild {
		return harness.BuildEngine(t)
	}
	return harness.BuildEngineTags(t, "failpoints")
}

// runs is how many runs a scenario makes: CDC_FAULTS_RUNS, else def (1 with -short).
func runs(def int) int {
	if v := os.Getenv("CDC_FAULTS_RUNS"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return n
		}
	}
	if testing.Short() {
		return 1
	}
	return def
}

var seedOnce sync.Once
var baseSeed uint64

// rngFor returns the random source of a test, derived from CDC_FAULTS_SEED
// (or the clock, logged) and the test's name.
func rngFor(t *testing.T) *rand.Rand {
	seedOnce.Do(func() {
		baseSeed = uint64(time.Now().UnixNano())
		if v := os.Getenv("CDC_FAULTS_SEED"); v != "" {
			if s, err := strconv.ParseUint(v, 10, 64); err == nil {
				baseSeed = s
			}
		}
	})
	h := fnv.New64a()
	h.Write([]byte(t.Name()))
	t.Logf("seed: CDC_FAULTS_SEED=%d", baseSeed)
	return rand.New(rand.NewPCG(baseSeed, h.Sum64()))
}
