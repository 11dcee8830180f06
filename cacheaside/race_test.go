package cacheaside_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
)

// applied tells loaders when a write to a row has been committed and
// applied by the engine: next returns a channel that is closed by the first
// such write after the call.
type applied struct {
	mu sync.Mutex
	ch map[int]chan struct{}
}

func (a *applied) next(id int) <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ch == nil {
		a.ch = make(map[int]chan struct{})
	}
	if a.ch[id] == nil {
		a.ch[id] = make(chan struct{})
	}
	return a.ch[id]
}

func (a *applied) signal(id int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ch[id] != nil {
		close(a.ch[id])
		a.ch[id] = nil
	}
}

// TestStaleSetPlainVersusLeases runs one workload two ways at once:
// writers update rows while readers read them through plain cache-aside
// (GET; on a miss SELECT, then SET) and through the library. Every load
// pauses between reading the row and returning it until a write to that
// row has been committed and applied by the engine (or a timeout passed),
// so the stale-set window is opened on purpose, not by luck.
//
// Each round has a concurrent phase (random writes and reads) and a
// closing phase that makes the window certain for every row: one read of
// each row per way is held between its SELECT and its fill while a last
// write commits and the engine applies it, then each row is read once
// more. After each phase the writers have stopped and a barrier shows the
// engine applied the last commit; then every cached key is compared with
// the database.
func TestStaleSetPlainVersusLeases(t *testing.T) {
	e := sharedEnv(t)
	const (
		rows          = 8 // ids 1..8
		rounds        = 2
		writeFor      = 1500 * time.Millisecond
		writers       = 2
		naiveReaders  = 6
		libProcesses  = 2
		readersPerLib = 4
		randomPause   = 400 * time.Millisecond // longest pause of a load in the concurrent phase
		closingPause  = 20 * time.Second       // the closing phase's loads wait for their write
	)
	ids := make([]int, rows)
	for i := range ids {
		ids[i] = i + 1
	}
	e.insertItems(t, ids...)
	e.mustBarrier(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var (
		app                      applied
		selected                 atomic.Int64 // loads that have read their row
		naiveWindows, libWindows atomic.Int64 // loads that returned a value older than the row
		naiveFills               atomic.Int64
		failed                   atomic.Bool
		firstErr                 error
		errOnce                  sync.Once
	)
	fail := func(err error) {
		if err != nil && !errors.Is(err, context.Canceled) {
			errOnce.Do(func() { firstErr = err })
			failed.Store(true)
		}
	}
	// A loader returns the row's value and the WAL insert position read
	// after its snapshot (for the plain way's stamps).
	type loader func(ctx context.Context, id int) (int64, uint64, error)
	// racyLoad reads the row, then holds the value until a write to the
	// row has been committed and applied (the window), or pause passed.
	racyLoad := func(pause time.Duration, windows *atomic.Int64) loader {
		return func(ctx context.Context, id int) (int64, uint64, error) {
			changed := app.next(id)
			v, bound, err := e.valueAt(ctx, id)
			if err != nil {
				return 0, 0, err
			}
			selected.Add(1)
			select {
			case <-changed:
				// Count the window only if the value is now really older
				// than the row (the write may have committed before the SELECT).
				if cur, err := e.value(ctx, id); err == nil && cur != v {
					windows.Add(1)
				}
			case <-time.After(pause):
			case <-ctx.Done():
				return 0, 0, ctx.Err()
			}
			return v, bound, nil
		}
	}
	directLoad := loader(e.valueAt)

	// naiveGet is plain cache-aside that stamps its fills with the
	// watermark read before the load and the WAL insert position read
	// after its snapshot (it has no lease, so the watermark alone proves
	// nothing stale), so that the engine's verifier can judge them.
	naiveGet := func(id int, load loader) error {
		key := "naive:" + itemKey(id)
		err := e.rdb.Get(ctx, key).Err()
		if !errors.Is(err, redis.Nil) {
			return err
		}
		w, err := e.rdb.Get(ctx, testWatermark).Result()
		if err != nil {
			return err
		}
		stamp, err := pglogrepl.ParseLSN(w)
		if err != nil {
			return err
		}
		v, bound, err := load(ctx, id)
		if err != nil {
			return err
		}
		naiveFills.Add(1)
		return e.rdb.Set(ctx, key, cacheaside.AppendLoadStamp(nil, uint64(stamp), bound, []byte(strconv.FormatInt(v, 10))), 10*time.Minute).Err()
	}
	libs := make([]*cacheaside.Client, libProcesses)
	for i := range libs {
		rdb := redis.NewClient(&redis.Options{Addr: e.rd.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		c, err := cacheaside.New(rdb, cacheaside.Options{Prefix: "lib:", TTL: 10 * time.Minute, MaxWait: 300 * time.Millisecond, StampKey: testWatermark})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		libs[i] = c
	}
	libGet := func(c *cacheaside.Client, id int, load loader) error {
		_, err := c.Get(ctx, itemKey(id), func(ctx context.Context) ([]byte, error) {
			v, _, err := load(ctx, id)
			return []byte(strconv.FormatInt(v, 10)), err
		})
		return err
	}

	// compare counts the cached keys of both ways and the stale ones.
	var naiveStale, libStale, naivePresent, libPresent int
	compare := func(phase string) {
		t.Helper()
		e.mustBarrier(t) // the engine has applied the last commit
		var ns, ls, np, lp int
		for _, id := range ids {
			want, err := e.value(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range []struct {
				key            string
				stale, present *int
			}{{"naive:" + itemKey(id), &ns, &np}, {"lib:" + itemKey(id), &ls, &lp}} {
				got, err := e.rdb.Get(ctx, k.key).Result()
				if errors.Is(err, redis.Nil) {
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				*k.present++
				if _, v, _ := cacheaside.ParseStamp([]byte(got)); string(v) != strconv.FormatInt(want, 10) {
					*k.stale++
					if k.key[0] == 'l' {
						t.Errorf("%s: library entry %s = %s, database has %d", phase, k.key, got, want)
					}
				}
			}
		}
		t.Logf("%s: plain cache-aside %d of %d cached keys stale; library %d of %d stale", phase, ns, np, ls, lp)
		naiveStale, libStale, naivePresent, libPresent = naiveStale+ns, libStale+ls, naivePresent+np, libPresent+lp
	}
	bumpAll := func() {
		t.Helper()
		e.exec(t, `UPDATE items SET v = v + 1 WHERE id = ANY($1)`, ids)
		e.mustBarrier(t)
		for _, id := range ids {
			app.signal(id)
		}
	}

	for round := 1; round <= rounds; round++ {
		// Concurrent phase.
		var stopWriting, stopReading atomic.Bool
		var wWG, rWG sync.WaitGroup
		var commits atomic.Int64
		for range writers {
			wWG.Add(1)
			go func() {
				defer wWG.Done()
				for !stopWriting.Load() && !failed.Load() {
					id := ids[rand.IntN(rows)]
					if _, err := e.db.Exec(ctx, `UPDATE items SET v = v + 1 WHERE id = $1`, id); err != nil {
						fail(err)
						return
					}
					commits.Add(1)
					if err := e.barrier(ctx); err != nil { // the engine applied it
						fail(err)
						return
					}
					app.signal(id)
				}
			}()
		}
		for range naiveReaders {
			rWG.Add(1)
			go func() {
				defer rWG.Done()
				for !stopReading.Load() && !failed.Load() {
					fail(naiveGet(ids[rand.IntN(rows)], racyLoad(randomPause, &naiveWindows)))
					time.Sleep(time.Millisecond)
				}
			}()
		}
		for _, c := range libs {
			for range readersPerLib {
				rWG.Add(1)
				go func() {
					defer rWG.Done()
					for !stopReading.Load() && !failed.Load() {
						fail(libGet(c, ids[rand.IntN(rows)], racyLoad(randomPause, &libWindows)))
						time.Sleep(time.Millisecond)
					}
				}()
			}
		}
		time.Sleep(writeFor)
		stopWriting.Store(true)
		wWG.Wait()
		stopReading.Store(true)
		rWG.Wait()
		if failed.Load() {
			t.Fatalf("workload: %v", firstErr)
		}
		compare(fmt.Sprintf("round %d, after %d concurrent writes", round, commits.Load()))

		// Closing phase: every row is invalidated, read by each way, and
		// written again while the reads hold what they read.
		bumpAll()
		selected.Store(0)
		for _, id := range ids {
			rWG.Add(2)
			go func() { defer rWG.Done(); fail(naiveGet(id, racyLoad(closingPause, &naiveWindows))) }()
			go func() { defer rWG.Done(); fail(libGet(libs[id%libProcesses], id, racyLoad(closingPause, &libWindows))) }()
		}
		deadline := time.Now().Add(20 * time.Second)
		for selected.Load() < 2*rows && !failed.Load() {
			if time.Now().After(deadline) {
				t.Fatalf("closing reads: only %d of %d loads read their row", selected.Load(), 2*rows)
			}
			time.Sleep(time.Millisecond)
		}
		bumpAll() // the last write commits and is applied while they hold
		rWG.Wait()
		for _, id := range ids { // and everyone reads once more
			fail(naiveGet(id, directLoad))
			fail(libGet(libs[0], id, directLoad))
		}
		if failed.Load() {
			t.Fatalf("closing phase: %v", firstErr)
		}
		compare(fmt.Sprintf("round %d, after the closing writes", round))
	}

	var s cacheaside.StatsSnapshot
	for _, c := range libs {
		x := c.Stats.Snapshot()
		s.Loads += x.Loads
		s.Fills += x.Fills
		s.FillsRefused += x.FillsRefused
		s.WaitsExhausted += x.WaitsExhausted
		s.Hits += x.Hits
		s.Coalesced += x.Coalesced
	}
	t.Logf("stale entries after quiescence, summed over %d checks: plain cache-aside %d (of %d cached), library %d (of %d cached)",
		2*rounds, naiveStale, naivePresent, libStale, libPresent)
	t.Logf("plain cache-aside: %d fills, %d loads returned a value older than the row; library: %d loads, %d returned a value older than the row, %d fills, %d fills refused, %d loads without lease after MaxWait, %d hits, %d coalesced",
		naiveFills.Load(), naiveWindows.Load(), s.Loads, libWindows.Load(), s.Fills, s.FillsRefused, s.WaitsExhausted, s.Hits, s.Coalesced)
	if naiveStale == 0 {
		t.Error("plain cache-aside showed no stale entry: the workload did not open the stale-set window (negative control failed)")
	}
	if libStale != 0 {
		t.Errorf("the library left %d stale entries", libStale)
	}
	if s.FillsRefused == 0 {
		t.Error("no library fill was refused: the lease mechanism was not exercised")
	}
	if libPresent == 0 {
		t.Error("the library cached nothing")
	}

	// The engine's verifier (verify: in env_test.go) judged every
	// invalidation 300ms after it was applied, by the stamps: it must have
	// seen the plain way's stale sets, and none of the library's.
	time.Sleep(2 * time.Second) // the last checks, and their confirmations
	checks := verifierChecks(t, e)
	t.Logf("verifier after 300ms: plain cache-aside %v; library %v", checks["rules[0]"], checks["rules[1]"])
	if checks["rules[0]"]["stale"] == 0 {
		t.Error("the verifier found no stale plain cache-aside entry (negative control failed)")
	}
	if n := checks["rules[1]"]["stale"]; n != 0 {
		t.Errorf("the verifier counted %v stale library entries", n)
	}
	if checks["rules[1]"]["newer"] == 0 {
		t.Error("the verifier proved no library fill fresh: stamps not read")
	}
}

// verifierChecks reads cdcinvalidate_verify_checks_total by rule and result.
func verifierChecks(t *testing.T, e *env) map[string]map[string]float64 {
	t.Helper()
	fams, err := e.eng.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "cdcinvalidate_verify_checks_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if out[labels["rule"]] == nil {
				out[labels["rule"]] = map[string]float64{}
			}
			out[labels["rule"]][labels["result"]] += m.GetCounter().GetValue()
		}
	}
	return out
}
