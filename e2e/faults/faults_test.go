package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// defaultLoad: three writers of random small transactions and three
// cacheaside readers.
var defaultLoad = loadOpts{writers: 3, readers: 3}

// cycle is one run: fill every plain key while nothing writes, start the
// load, inject faults (during), stop the load, recover (after), wait for
// the engine to apply everything (barrier) and compare every key.
func (f *fixture) cycle(sc *scenario, rng *rand.Rand, o loadOpts, label string, during func(l *load), after func()) checkResult {
	f.t.Helper()
	sc.run()
	f.fill()
	stats := &loadStats{}
	l := f.startLoad(rng, o, stats)
	during(l)
	l.stop()
	sc.addLoad(stats)
	if after != nil {
		after()
	}
	r := f.quiesce()
	sc.record(fmt.Sprintf("%s [%d commits, %d TRUNCATE]", label, stats.commits.Load(), stats.truncates.Load()), r)
	return r
}

// TestBaselineNoFaults runs the workload without faults, and checks that
// the checker sees a stale key when there is one (one plain and one
// library key overwritten with a wrong value after the check).
func TestBaselineNoFaults(t *testing.T) {
	sc := newScenario(t, "baseline, no faults", "checker and workload", false)
	f := newFixture(t, fixtureOpts{})
	rng := rngFor(t)
	f.startStreaming()
	for i := 1; i <= runs(1); i++ {
		f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d", i), func(l *load) {
			time.Sleep(1500 * time.Millisecond)
		}, nil)
	}
	// The checker's own negative control.
	ctx := context.Background()
	if err := f.rdb.Set(ctx, "user:1", "u|1|wrong|x|0", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.Set(ctx, "lib:order:1", "o|1|NULL|wrong", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r := f.check()
	if len(r.stalePlain) != 1 || len(r.staleLib) != 1 {
		t.Fatalf("checker self-test: 2 wrong values planted, checker found %s: %q", r, r.examples(5))
	}
	sc.note("checker self-test: 2 planted wrong values, 2 found")
	f.rdb.Del(ctx, "user:1", "lib:order:1")
}

// TestKill9AtRandomMoments kills the engine with SIGKILL at random moments
// while the workload runs (small transactions, and large ones that are
// streamed while in progress), twice per run, and restarts it.
func TestKill9AtRandomMoments(t *testing.T) {
	sc := newScenario(t, "kill -9 at random moments", "kill -9 at any point loses nothing", false)
	f := newFixture(t, fixtureOpts{bigRows: 10000})
	rng := rngFor(t)
	p := f.startStreaming()
	o := defaultLoad
	o.bulk, o.bulkRows, o.bulkHold = 1, [2]int{500, 3000}, 200*time.Millisecond
	for i := 1; i <= runs(3); i++ {
		f.cycle(sc, rng, o, fmt.Sprintf("run %d", i), func(l *load) {
			p = f.kill9Round(sc, rng, p, nil)
		}, nil)
	}
}

// kill9Round kills the engine p with SIGKILL twice while it streams, and
// restarts it; after the first kill it also starts one that it kills 0-500
// ms after its start (connecting, checking the slot and the watermark, or
// just streaming). It returns the engine streaming at the end. sample,
// when not nil, runs before each kill while streaming and after each
// restart.
func (f *fixture) kill9Round(sc *scenario, rng *rand.Rand, p *harness.Process, sample func()) *harness.Process {
	f.t.Helper()
	for k := 0; k < 2; k++ {
		sleepRand(rng, 200*time.Millisecond, 1200*time.Millisecond)
		if sample != nil {
			sample()
		}
		p.KillT(f.t)
		sc.fault("kill -9 while streaming")
		sleepRand(rng, 0, 300*time.Millisecond)
		if k == 0 {
			p = f.startEngine()
			sleepRand(rng, 0, 500*time.Millisecond)
			p.KillT(f.t)
			sc.fault("kill -9 0-500 ms after start")
		}
		p = f.startStreaming()
		if sample != nil {
			sample()
		}
	}
	sleepRand(rng, 200*time.Millisecond, 800*time.Millisecond)
	return p
}

// TestInterleavedTransactionsAcrossRestart keeps transactions open across
// a restart of the engine (kill -9 or SIGTERM): one small transaction with
// many changes to one row, one large one (streamed while open), both begun
// before other transactions that commit, are applied and confirmed, and
// committed only after the restart (Debezium's
// shouldNotLoseDataOnRestartWithInterleavedTransactions).
func TestInterleavedTransactionsAcrossRestart(t *testing.T) {
	sc := newScenario(t, "transactions open across an engine restart", "interleaved transactions, many changes to one row", false)
	f := newFixture(t, fixtureOpts{bigRows: 6000})
	rng := rngFor(t)
	p := f.startStreaming()
	for i := 1; i <= runs(2); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		small, err := f.db.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := manyChangesToOneRow(ctx, small, rng, 300); err != nil {
			t.Fatal(err)
		}
		large, err := f.db.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A new value every run; rows nothing else writes (small writers
		// keep to the upper tenth of big), so their keys stay stale if
		// this commit's invalidation is lost.
		if _, err := large.Exec(ctx, `UPDATE big SET payload = $1 || id WHERE id <= 4000`, fmt.Sprintf("open%d-", i)); err != nil {
			t.Fatal(err)
		}
		open := []pgx.Tx{small, large}
		kill := i%2 == 1
		f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d (%s)", i, map[bool]string{true: "kill -9", false: "SIGTERM"}[kill]), func(l *load) {
			// Commits of others, applied and confirmed past the open
			// transactions' first changes.
			sleepRand(rng, 400*time.Millisecond, 900*time.Millisecond)
			past := f.currentLSN()
			harness.WaitFor(t, 30*time.Second, "the slot to confirm past the open transactions' changes", func() bool { return f.confirmed() > past })
			if kill {
				p.KillT(t)
				sc.fault("kill -9 with 2 transactions open")
			} else {
				if code, _ := p.TermT(t, 30*time.Second); code != 0 {
					t.Fatalf("SIGTERM: exit code %d", code)
				}
				sc.fault("SIGTERM with 2 transactions open")
			}
			p = f.startStreaming()
			sleepRand(rng, 200*time.Millisecond, 600*time.Millisecond)
		}, func() {
			for _, tx := range open {
				if err := tx.Commit(ctx); err != nil {
					t.Fatalf("commit the open transaction: %v", err)
				}
			}
		})
		cancel()
	}
}

// burst lets the writers commit for d and then pauses them: a long fault
// must not let them rewrite every key, which would hide a lost
// invalidation behind a later one. The returned func resumes them.
func burst(l *load, d time.Duration) func() {
	time.Sleep(d)
	l.pause()
	return l.resume
}

// TestRedisStalledPastWalSenderTimeout stops Redis (SIGSTOP) for 6 s,
// longer than wal_sender_timeout (4 s, set by the engine), while the
// writers commit (for the first 1.5 s of the stall; then they pause until
// Redis is back): the replication connection must survive (status updates
// go on), and nothing may be lost. Every other run also kills the engine
// with SIGKILL during the stall.
func TestRedisStalledPastWalSenderTimeout(t *testing.T) {
	sc := newScenario(t, "Redis stopped (SIGSTOP) 6 s > wal_sender_timeout 4 s", "Redis down: retried, never skipped; replication connection kept", false)
	f := newFixture(t, fixtureOpts{walSenderTimeout: "4s"})
	rng := rngFor(t)
	p := f.startStreaming()
	for i := 1; i <= runs(2); i++ {
		kill := i%2 == 0
		f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d", i), func(l *load) {
			sleepRand(rng, 200*time.Millisecond, 600*time.Millisecond)
			pid := f.walsenderPID()
			stalled := time.Now()
			resumeRedis := f.rd.PauseT(t)
			sc.fault("SIGSTOP 6s")
			// Nothing committed from here on can be applied until Redis is
			// back, so the slot must not be confirmed past this position.
			stallLSN := f.currentLSN()
			resume := burst(l, 1500*time.Millisecond)
			if kill {
				sleepRand(rng, 500*time.Millisecond, 2500*time.Millisecond)
				if now := f.walsenderPID(); now != pid {
					t.Errorf("walsender replaced during the stall (pid %d -> %d)", pid, now)
				}
				p.KillT(t)
				sc.fault("kill -9 during the stall")
			}
			time.Sleep(time.Until(stalled.Add(6 * time.Second)))
			if !kill {
				if now := f.walsenderPID(); now != pid {
					t.Errorf("walsender replaced during a 6s Redis stall with wal_sender_timeout 4s (pid %d -> %d): status updates did not keep the connection", pid, now)
				} else {
					sc.note("run %d: same walsender before and after the stall", i)
				}
			}
			if c := f.confirmed(); c > stallLSN {
				t.Errorf("run %d: confirmed_flush_lsn %s passed %s (the WAL position when Redis stopped) while Redis was stopped", i, c, stallLSN)
			} else {
				sc.note("run %d: slot confirmed %s <= %s (WAL position at the stop) throughout the stall", i, c, stallLSN)
			}
			resumeRedis()
			resume()
			if kill {
				p = f.startStreaming()
			}
			sleepRand(rng, 300*time.Millisecond, 800*time.Millisecond)
		}, nil)
	}
}

// slowLatencies are the proxy's added latencies, one per run in turn.
var slowLatencies = []time.Duration{2 * time.Second, 5 * time.Second, 12 * time.Second, 20 * time.Second}

// TestRedisSlow puts a proxy between the engine and Redis that delays what
// the engine sends by 2, 5, 12 or 20 s (one per run; redis.read_timeout is
// 3 s, so from 5 s on the engine's commands time out and are retried),
// while the writers commit (the first 1.5 s; then they pause until the
// latency ends). Even runs also kill the engine during the latency. The
// replication connection must survive (wal_sender_timeout 4 s).
func TestRedisSlow(t *testing.T) {
	sc := newScenario(t, "Redis slow (proxy latency 2-20 s, read_timeout 3 s)", "Redis slow: retried, never skipped; replication connection kept", false)
	f := newFixture(t, fixtureOpts{viaProxy: true, walSenderTimeout: "4s", redisReadTimeout: "3s"})
	rng := rngFor(t)
	p := f.startStreaming()
	for i := 1; i <= runs(2); i++ {
		lat := slowLatencies[(i-1)%len(slowLatencies)]
		kill := i%2 == 0
		f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d (latency %s)", i, lat), func(l *load) {
			sleepRand(rng, 200*time.Millisecond, 500*time.Millisecond)
			pid := f.walsenderPID()
			slow := time.Now()
			f.proxy.SetDelay(lat)
			sc.fault(fmt.Sprintf("latency %s", lat))
			resume := burst(l, 1500*time.Millisecond)
			if kill {
				time.Sleep(time.Until(slow.Add(lat / 2)))
				p.KillT(t)
				sc.fault("kill -9 during latency")
				f.proxy.SetDelay(0)
				resume()
				p = f.startStreaming()
			} else {
				time.Sleep(time.Until(slow.Add(lat + time.Second)))
				if now := f.walsenderPID(); now != pid {
					t.Errorf("walsender replaced during %s of Redis latency with wal_sender_timeout 4s (pid %d -> %d)", lat, pid, now)
				} else {
					sc.note("run %d: same walsender through %s of latency", i, lat)
				}
				f.proxy.SetDelay(0)
				resume()
			}
			sleepRand(rng, 300*time.Millisecond, 800*time.Millisecond)
		}, nil)
	}
}

// TestRedisRestartedEmpty kills Redis (no persistence) while the workload
// runs and starts it empty: the engine must notice that its watermark
// vanished and flush every managed key, and apply what it had not yet.
// The plain keys are filled again on the new Redis before the load goes on.
func TestRedisRestartedEmpty(t *testing.T) {
	sc := newScenario(t, "Redis killed and restarted empty", "Redis restart without persistence: detected (watermark), flushed", false)
	f := newFixture(t, fixtureOpts{})
	rng := rngFor(t)
	p := f.startStreaming()
	for i := 1; i <= runs(2); i++ {
		before := strings.Count(p.Output(), "flushing every managed key")
		f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d", i), func(l *load) {
			sleepRand(rng, 300*time.Millisecond, 900*time.Millisecond)
			if err := f.rd.Kill(); err != nil {
				t.Fatal(err)
			}
			sc.fault("Redis SIGKILL + empty restart")
			sleepRand(rng, 300*time.Millisecond, 1500*time.Millisecond)
			if err := f.rd.Start(); err != nil {
				t.Fatal(err)
			}
			sleepRand(rng, 100*time.Millisecond, 600*time.Millisecond)
			l.pauseFill()
			sleepRand(rng, 400*time.Millisecond, 900*time.Millisecond)
		}, nil)
		if after := strings.Count(p.Output(), "flushing every managed key"); after <= before {
			t.Errorf("run %d: the engine did not flush after Redis came back empty (its watermark vanished)", i)
		} else {
			sc.note("run %d: engine flushed after the empty restart", i)
		}
	}
}

// TestRedisConnectionResets resets every connection between the engine
// and Redis (RST, through the proxy) several times while the workload runs.
func TestRedisConnectionResets(t *testing.T) {
	sc := newScenario(t, "Redis connections reset (proxy RST)", "transient Redis errors retried", false)
	f := newFixture(t, fixtureOpts{viaProxy: true})
	rng := rngFor(t)
	f.startStreaming()
	for i := 1; i <= runs(2); i++ {
		f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d", i), func(l *load) {
			for k := 0; k < 6; k++ {
				sleepRand(rng, 100*time.Millisecond, 600*time.Millisecond)
				if n := f.proxy.ResetAll(); n > 0 {
					sc.fault("connection reset")
				}
			}
			sleepRand(rng, 200*time.Millisecond, 500*time.Millisecond)
		}, nil)
	}
}

// TestPostgresImmediateRestart stops PostgreSQL with -m immediate (a
// crash: no shutdown checkpoint, the slot's saved position may go back)
// while the workload runs, and starts it again; every other run right
// after a CHECKPOINT.
func TestPostgresImmediateRestart(t *testing.T) {
	sc := newScenario(t, "PostgreSQL stopped -m immediate and restarted", "PostgreSQL crash: reconnect, resume from the slot", false)
	f := newFixture(t, fixtureOpts{})
	rng := rngFor(t)
	f.startStreaming()
	for i := 1; i <= runs(2); i++ {
		// PostgreSQL saves a slot's confirmed position only at checkpoints,
		// so after a crash the slot goes back and the engine replays
		// (harmless, but it re-invalidates much of the cache, which hides
		// losses). Every other run checkpoints first: a short replay.
		checkpoint := i%2 == 1
		f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d (checkpoint first: %v)", i, checkpoint), func(l *load) {
			sleepRand(rng, 300*time.Millisecond, 1200*time.Millisecond)
			if checkpoint {
				f.exec(`CHECKPOINT`)
			}
			if err := f.pg.Stop("immediate"); err != nil {
				t.Fatal(err)
			}
			sc.fault("pg_ctl stop -m immediate")
			sleepRand(rng, 200*time.Millisecond, 1000*time.Millisecond)
			if err := f.pg.Start(); err != nil {
				t.Fatal(err)
			}
			f.db.Reset()
			sleepRand(rng, 800*time.Millisecond, 1500*time.Millisecond)
		}, func() {
			f.db.Reset()
		})
	}
}

// TestWalsenderTerminated kills the engine's walsender with
// pg_terminate_backend three times per run while the workload runs.
func TestWalsenderTerminated(t *testing.T) {
	sc := newScenario(t, "walsender terminated (pg_terminate_backend)", "lost replication connection: reconnect from the slot", false)
	f := newFixture(t, fixtureOpts{})
	rng := rngFor(t)
	f.startStreaming()
	for i := 1; i <= runs(2); i++ {
		f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d", i), func(l *load) {
			for k := 0; k < 3; k++ {
				sleepRand(rng, 200*time.Millisecond, 800*time.Millisecond)
				if pid := f.walsenderPID(); pid != 0 {
					f.exec(`SELECT pg_terminate_backend($1)`, pid)
					sc.fault("walsender terminated")
				}
			}
			sleepRand(rng, 300*time.Millisecond, 800*time.Millisecond)
		}, nil)
	}
}

// redisBackInTime runs one "Redis goes back in time" run: with persistence
// (AOF, fsync always) it copies Redis's AOF while every plain key is
// cached, lets the workload change rows (the engine deletes their keys and
// raises its watermark), then restarts Redis from the old AOF: the old
// values and the old watermark are back. With the watermark the engine
// must notice (the watermark is below the one it set) and flush.
func redisBackInTime(t *testing.T, sc *scenario, f *fixture, rng *rand.Rand, i int) checkResult {
	aof := f.aofDir()
	saved := filepath.Join(t.TempDir(), "aof")
	return f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d", i), func(l *load) {
		f.saveAOF(aof, saved)
		sleepRand(rng, 800*time.Millisecond, 1500*time.Millisecond)
	}, func() {
		f.barrier(60 * time.Second) // everything applied in the Redis that is about to be lost
		f.restartFromAOF(aof, saved)
		sc.fault("Redis restarted from an older AOF")
		if f.o.noWatermark {
			return
		}
		// The watermark alone is not a barrier here: the batch that finds
		// it too low raises it before flushing. Measure what a reader that
		// trusts the watermark (read-your-writes) sees at that moment.
		f.barrierMark(60 * time.Second)
		if r := f.check(); r.stale() > 0 {
			sc.note("run %d: the watermark passed a new commit while %d restored stale keys were still cached (its flush not finished)", i, r.stale())
		}
	})
}

// aofDir returns the directory of Redis's append-only file (Redis 7+).
func (f *fixture) aofDir() string {
	f.t.Helper()
	ctx := context.Background()
	dir, err := f.rdb.ConfigGet(ctx, "dir").Result()
	if err != nil {
		f.t.Fatal(err)
	}
	sub, err := f.rdb.ConfigGet(ctx, "appenddirname").Result()
	if err != nil || sub["appenddirname"] == "" {
		f.t.Fatalf("CONFIG GET appenddirname: %v %v (Redis 7 or later needed)", sub, err)
	}
	return filepath.Join(dir["dir"], sub["appenddirname"])
}

// saveAOF copies the AOF directory aof to saved with Redis stopped
// (SIGSTOP), so the copy is consistent.
func (f *fixture) saveAOF(aof, saved string) {
	f.t.Helper()
	if err := f.rd.Pause(); err != nil {
		f.t.Fatal(err)
	}
	err := copyDir(aof, saved)
	if rerr := f.rd.Resume(); rerr != nil {
		f.t.Fatal(rerr)
	}
	if err != nil {
		f.t.Fatal(err)
	}
}

// restartFromAOF kills Redis and starts it again from the AOF saved by
// saveAOF: Redis goes back to that moment.
func (f *fixture) restartFromAOF(aof, saved string) {
	f.t.Helper()
	if err := f.rd.Kill(); err != nil {
		f.t.Fatal(err)
	}
	if err := os.RemoveAll(aof); err != nil {
		f.t.Fatal(err)
	}
	if err := copyDir(saved, aof); err != nil {
		f.t.Fatal(err)
	}
	if err := f.rd.Start(); err != nil {
		f.t.Fatal(err)
	}
}

func copyDir(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

var aofArgs = []string{"--appendonly", "yes", "--appendfsync", "always"}

// TestRedisBackInTime: Redis restarts from an older AOF (as after a
// restore or a failover to a lagging replica): stale values are back. The
// engine sees its watermark lower than the one it set and flushes.
func TestRedisBackInTime(t *testing.T) {
	sc := newScenario(t, "Redis restarted from an older AOF (back in time)", "fail closed on lost history (watermark)", false)
	f := newFixture(t, fixtureOpts{redisArgs: aofArgs})
	rng := rngFor(t)
	p := f.startStreaming()
	for i := 1; i <= runs(1); i++ {
		before := strings.Count(p.Output(), "flushing every managed key")
		redisBackInTime(t, sc, f, rng, i)
		if after := strings.Count(p.Output(), "flushing every managed key"); after <= before {
			t.Errorf("run %d: the engine did not flush after Redis went back in time", i)
		} else {
			sc.note("run %d: engine flushed (watermark below the one it set)", i)
		}
	}
}

// TestNegativeRedisBackInTimeWithoutWatermark is the negative control of
// TestRedisBackInTime: with sink.watermark: false nothing can detect the
// loss, and the checker must find the stale values that came back.
func TestNegativeRedisBackInTimeWithoutWatermark(t *testing.T) {
	sc := newScenario(t, "NEGATIVE: Redis back in time, sink.watermark: false", "the checker sees values Redis brought back", true)
	f := newFixture(t, fixtureOpts{redisArgs: aofArgs, noWatermark: true})
	rng := rngFor(t)
	f.startStreaming()
	for i := 1; i <= runs(1); i++ {
		r := redisBackInTime(t, sc, f, rng, i)
		if r.stale() == 0 {
			t.Fatalf("negative control run %d: Redis went back in time without a watermark, but the checker found no stale key (%s): the suite cannot see this loss", i, r)
		}
		sc.note("run %d: checker found %d stale keys, e.g. %s", i, r.stale(), r.examples(1)[0])
	}
}
