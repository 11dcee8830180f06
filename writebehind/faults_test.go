package writebehind_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/writebehind"
)

// The fault tests run the flusher as a process of its own
// (internal/wbflusher, built with -tags failpoints), kill it, restart
// PostgreSQL and Redis under it, and then check, for every counter, that
// the database holds exactly the sum of the increments acknowledged to the
// writers: nothing lost, nothing applied twice. Redis runs with
// appendonly yes and appendfsync always, which the guarantee needs.

const flusherPkg = "./writebehind/internal/wbflusher"

var aofArgs = []string{"--appendonly", "yes", "--appendfsync", "always"}

// workload increments counters from a few goroutines and records, per
// key, what was acknowledged and what is unknown (a call that failed on
// the connection may or may not have been executed).
type workload struct {
	t         *testing.T
	w         *writebehind.Writer
	keys      []string
	stop      chan struct{}
	wg        sync.WaitGroup
	mu        sync.Mutex
	acked     map[string]int64
	ambiguous map[string]int64
	calls     int64
}

func startWorkload(t *testing.T, w *writebehind.Writer, keys []string, writers int) *workload {
	l := &workload{t: t, w: w, keys: keys, stop: make(chan struct{}), acked: map[string]int64{}, ambiguous: map[string]int64{}}
	for g := range writers {
		l.wg.Add(1)
		go l.run(uint64(g))
	}
	return l
}

func (l *workload) run(seed uint64) {
	defer l.wg.Done()
	rng := rand.New(rand.NewPCG(seed, 42))
	acked, amb := map[string]int64{}, map[string]int64{}
	var calls int64
	defer func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for k, v := range acked {
			l.acked[k] += v
		}
		for k, v := range amb {
			l.ambiguous[k] += v
		}
		l.calls += calls
	}()
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		key := l.keys[rng.IntN(len(l.keys))]
		delta := int64(1 + rng.IntN(5))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := l.w.Incr(ctx, key, delta)
		cancel()
		calls++
		switch {
		case err == nil:
			acked[key] += delta
		case errors.Is(err, writebehind.ErrBacklogFull), errors.Is(err, writebehind.ErrRefused):
			time.Sleep(5 * time.Millisecond) // nothing written
		default:
			amb[key] += delta // Redis down or the reply lost: unknown
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// finish stops the writers; afterwards acked and ambiguous are final.
func (l *workload) finish() {
	close(l.stop)
	l.wg.Wait()
}

// check compares every key's database value with what its writers were
// told: it must be acked plus some part of ambiguous, and equal to the
// value in Redis (both come from the same script calls). It returns the
// mismatches.
func (e *env) check(l *workload) []string {
	e.t.Helper()
	var bad []string
	var total int64
	for _, key := range l.keys {
		id := key[len("counter:"):]
		db := e.dbInt(`SELECT n FROM counters WHERE id = $1`, id)
		rv, err := e.rdb.Get(context.Background(), key).Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			e.t.Fatalf("GET %s: %v", key, err)
		}
		acked, amb := l.acked[key], l.ambiguous[key]
		total += acked
		if db < acked || db > acked+amb {
			bad = append(bad, fmt.Sprintf("%s: database %d, acknowledged %d (+ up to %d unknown)", key, db, acked, amb))
		}
		if db != rv {
			bad = append(bad, fmt.Sprintf("%s: database %d, Redis %d", key, db, rv))
		}
	}
	e.t.Logf("checked %d counters: %d calls, acknowledged increments summing to %d", len(l.keys), l.calls, total)
	return bad
}

func counterKeys(from, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "counter:" + strconv.Itoa(from+i)
	}
	return keys
}

// startFlusherProc starts the helper binary with env added to this
// process's environment.
func (e *env) startFlusherProc(env []string, args ...string) *harness.Process {
	e.t.Helper()
	return harness.StartProcessT(e.t, harness.Command{
		Name: "wbflusher " + strings.Join(env, " "),
		Path: harness.BuildCommand(e.t, flusherPkg, "failpoints"),
		Args: append([]string{"-dsn", e.pg.DSN("postgres"), "-redis", e.rd.Addr()}, args...),
		Env:  append(os.Environ(), env...),
	})
}

// drainWithCleanFlusher runs a flusher without failpoints until the stream
// is applied, then stops it.
func (e *env) drainWithCleanFlusher(stream string) {
	e.t.Helper()
	p := e.startFlusherProc(nil, "-stream", stream)
	e.waitDrained(stream, writebehind.DefaultGroup, 60*time.Second)
	p.TermT(e.t, 20*time.Second)
}

// TestFaultsExactlyOnce is the proof: kill -9 of the flusher at random
// moments and at failpoints, a PostgreSQL crash and a Redis crash (AOF,
// appendfsync always) under load; afterwards every counter's database
// value is exactly the sum its writers were acknowledged. A negative
// control (acknowledging before committing) must lose increments.
func TestFaultsExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{redisArgs: aofArgs})
	rdb := e.rdb
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))

	t.Run("kill9", func(t *testing.T) {
		e := e.sub(t)
		w := e.writer(writebehind.WriterOptions{MaxLen: 100_000})
		l := startWorkload(t, w, counterKeys(0, 20), 4)
		for round := range 4 {
			p := e.startFlusherProc(nil)
			time.Sleep(time.Duration(100+rng.IntN(500)) * time.Millisecond)
			p.KillT(t)
			t.Logf("round %d: killed at a random moment", round)
		}
		for _, fp := range []string{"wb-before-commit", "wb-after-commit", "wb-after-ack", "wb-after-commit"} {
			n := 1 + rng.IntN(3)
			p := e.startFlusherProc([]string{fmt.Sprintf("CDC_FAILPOINT=%s:%d", fp, n)})
			p.ExitT(t, 30*time.Second) // at its failpoint
			if fp == "wb-after-commit" {
				// The case exactly-once hinges on: entries committed but
				// still pending, to be redelivered and skipped.
				last := e.lastApplied(writebehind.DefaultStream)
				pend, err := rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{
					Stream: writebehind.DefaultStream, Group: writebehind.DefaultGroup, Start: "-", End: last, Count: 1,
				}).Result()
				if err != nil || len(pend) == 0 {
					t.Errorf("after a kill at %s: no pending entry at or below the committed last id %s (%v)", fp, last, err)
				}
			}
			t.Logf("killed at failpoint %s:%d", fp, n)
		}
		l.finish()
		e.drainWithCleanFlusher(writebehind.DefaultStream)
		for _, m := range e.check(l) {
			t.Error(m)
		}
	})

	t.Run("postgres-restart", func(t *testing.T) {
		e := e.sub(t)
		// A small cap, so that the outage fills the stream: writers then
		// get ErrBacklogFull, and Redis holds no more than the cap.
		const maxLen = 300
		w := e.writer(writebehind.WriterOptions{MaxLen: maxLen})
		l := startWorkload(t, w, counterKeys(100, 20), 4)
		p := e.startFlusherProc(nil)
		time.Sleep(500 * time.Millisecond)
		if err := e.pg.Stop("immediate"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond) // writes go on into the stream, up to the cap
		if n, err := e.rdb.XLen(context.Background(), writebehind.DefaultStream).Result(); err != nil || n > maxLen {
			t.Errorf("stream length %d (%v) during the outage, cap %d", n, err, maxLen)
		}
		if w.Stats.Full.Load() == 0 {
			t.Error("no write found the stream full during the outage: the cap was not exercised")
		}
		if err := e.pg.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		l.finish()
		e.waitDrained(writebehind.DefaultStream, writebehind.DefaultGroup, 60*time.Second)
		p.TermT(t, 20*time.Second)
		if !strings.Contains(p.Output(), `"cause": "postgres"`) {
			t.Error("the flusher never retried after a postgres failure: the crash did not reach it")
		}
		for _, m := range e.check(l) {
			t.Error(m)
		}
	})

	t.Run("redis-restart-aof", func(t *testing.T) {
		e := e.sub(t)
		w := e.writer(writebehind.WriterOptions{MaxLen: 100_000})
		l := startWorkload(t, w, counterKeys(200, 20), 4)
		p := e.startFlusherProc(nil)
		time.Sleep(500 * time.Millisecond)
		if err := e.rd.Kill(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		if err := e.rd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(700 * time.Millisecond)
		l.finish()
		e.waitDrained(writebehind.DefaultStream, writebehind.DefaultGroup, 60*time.Second)
		p.TermT(t, 20*time.Second)
		if len(l.ambiguous) == 0 {
			t.Error("no write failed while Redis was down: the crash did not reach the writers")
		}
		for _, m := range e.check(l) {
			t.Error(m)
		}
	})

	t.Run("lost-read-reply", func(t *testing.T) {
		e := e.sub(t)
		// The flusher drops the entries of one XREADGROUP reply, as if the
		// reply had been lost and the client had read again: they are
		// pending for it, below the entries it goes on to read.
		const stream = "wb-lost-read"
		w := e.writer(writebehind.WriterOptions{Stream: stream})
		l := startWorkload(t, w, counterKeys(300, 5), 2)
		p := e.startFlusherProc([]string{"CDC_UNSAFE=wb-drop-read"}, "-stream", stream)
		time.Sleep(time.Second)
		l.finish()
		e.waitDrained(stream, writebehind.DefaultGroup, 60*time.Second)
		p.TermT(t, 20*time.Second)
		if !strings.Contains(p.Output(), "a read's reply was lost") {
			t.Error("the flusher did not notice the lost read")
		}
		for _, m := range e.check(l) {
			t.Error(m)
		}
	})

	t.Run("negative-control-ack-before-commit", func(t *testing.T) {
		e := e.sub(t)
		const stream = "wb-negative"
		w := e.writer(writebehind.WriterOptions{Stream: stream})
		l := startWorkload(t, w, counterKeys(1000, 5), 2)
		p := e.startFlusherProc([]string{"CDC_UNSAFE=wb-ack-before-commit", "CDC_FAILPOINT=wb-after-early-ack:2"}, "-stream", stream)
		p.ExitT(t, 30*time.Second) // at its failpoint
		l.finish()
		e.drainWithCleanFlusher(stream)
		if bad := e.check(l); len(bad) == 0 {
			t.Error("acknowledging before the commit lost nothing: the check cannot see a loss")
		} else {
			t.Logf("negative control lost increments as expected: %v", bad)
		}
	})
}

// lastApplied reads the committed last ID of stream.
func (e *env) lastApplied(stream string) string {
	e.t.Helper()
	var s string
	if err := e.db.QueryRow(context.Background(), `SELECT last_id FROM writebehind_offsets WHERE stream = $1 AND grp = $2`, stream, writebehind.DefaultGroup).Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	return s
}
