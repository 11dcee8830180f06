package writebehind_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/engine"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/mapping"
	"github.com/cdcinvalidate/cdcinvalidate/writebehind"
)

// The rules of the loop test: the read model of a post_stats row is cached
// as post:{id}:row and invalidated by the engine like any cache key; the
// counters post:{id}:views are write-behind keys, which no rule may
// produce or match. The unsafe rules manage the counters too.
const (
	safeRules = `
rules:
  - table: post_stats
    keys: ["post:{id}:row"]
`
	unsafeRules = `
rules:
  - table: post_stats
    keys: ["post:{id}:row", "post:{id}:views"]
`
)

// startEngine runs the real engine (in this process) with rules and slot,
// and waits until it streams.
func (e *env) startEngine(rules, slot string) context.CancelFunc {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "config.yaml")
	text := fmt.Sprintf("postgres:\n  dsn: %q\n  slot: %s\n  publication: %s\n  status_interval: 1s\nredis:\n  addr: %q\n%s",
		e.pg.DSN("postgres"), slot, slot, e.rd.Addr(), rules)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		e.t.Fatal(err)
	}
	cfg, err := config.Load(path, func(string) (string, bool) { return "", false })
	if err != nil {
		e.t.Fatal(err)
	}
	eng, err := engine.New(cfg, path, zaptest.NewLogger(e.t, zaptest.Level(zap.WarnLevel)))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	stop := func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			e.t.Error("engine did not stop within 20s")
		}
	}
	e.t.Cleanup(stop)
	gone := func() error {
		select {
		case err := <-done:
			return fmt.Errorf("engine stopped before streaming: %v", err)
		default:
			return nil
		}
	}
	if err := harness.WaitStreaming(context.Background(), e.db, slot, 60*time.Second, gone); err != nil {
		e.t.Fatal(err)
	}
	return cancel
}

// engineBarrier commits a change to row id's title and waits until the
// engine deleted post:{id}:row: the engine applies in commit order, so
// every earlier commit (the flusher's included) has been applied.
func (e *env) engineBarrier(id int) {
	e.t.Helper()
	ctx := context.Background()
	key := fmt.Sprintf("post:%d:row", id)
	e.rdb.Set(ctx, key, "cached", 0)
	e.exec(`UPDATE post_stats SET title = 'barrier' || clock_timestamp() WHERE id = $1`, id)
	harness.WaitFor(e.t, 60*time.Second, "the engine to invalidate "+key, func() bool {
		n, err := e.rdb.Exists(ctx, key).Result()
		return err == nil && n == 0
	})
}

func engineGlobs(t *testing.T, rules []string) []string {
	t.Helper()
	var globs []string
	for _, k := range rules {
		tm, err := mapping.ParseTemplate(k)
		if err != nil {
			t.Fatal(err)
		}
		globs = append(globs, tm.Glob())
	}
	return globs
}

// TestEngineLoop runs the invalidation engine, the flusher and writers
// together. The flusher's commits flow through the WAL like any writer's:
// the engine invalidates the read model (post:{id}:row) after them, and
// leaves the counters alone, so that after quiescence every counter in
// Redis and in the database equals the acknowledged increments. With the
// counters under an engine rule (the unsafe rules), the same run loses
// increments in Redis, and CheckGlobs refuses such rules up front.
func TestEngineLoop(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	const posts = 5
	for id := 1; id <= posts+3; id++ {
		e.exec(`INSERT INTO post_stats (id, views) VALUES ($1, 0)`, id)
	}
	if err := writebehind.CheckGlobs(engineGlobs(t, []string{"post:{id}:row"}), testMappings); err != nil {
		t.Fatalf("CheckGlobs refused the safe rules: %v", err)
	}
	if err := writebehind.CheckGlobs(engineGlobs(t, []string{"post:{id}"}), testMappings); err == nil {
		t.Fatal("CheckGlobs accepted a rule whose flush pattern post:* matches the counters")
	}

	// run increments post:{ids}:views for a while with a flusher and a
	// cache-aside reader of the read model running, and returns the
	// acknowledged sums and how often the reader found its entry deleted.
	run := func(t *testing.T, ids []int, d time.Duration) (map[int]int64, int64) {
		e := e.sub(t)
		w := e.writer(writebehind.WriterOptions{})
		fl := e.startFlusher(writebehind.FlusherOptions{Window: 20 * time.Millisecond})
		var keys []string
		for _, id := range ids {
			keys = append(keys, "post:"+strconv.Itoa(id)+":views")
		}
		// The reader refills the read model whenever it finds it missing.
		var invalidated atomic.Int64
		stopReader := make(chan struct{})
		readerDone := make(chan struct{})
		go func() {
			defer close(readerDone)
			for {
				select {
				case <-stopReader:
					return
				case <-time.After(2 * time.Millisecond):
				}
				for _, id := range ids {
					if ok, err := e.rdb.SetNX(ctx, fmt.Sprintf("post:%d:row", id), "cached", 0).Result(); err == nil && ok {
						invalidated.Add(1)
					}
				}
			}
		}()
		acked := map[int]int64{}
		deadline := time.Now().Add(d)
		for i := 0; time.Now().Before(deadline); i++ {
			id := ids[i%len(ids)]
			if _, err := w.Incr(ctx, "post:"+strconv.Itoa(id)+":views", 1); err != nil {
				t.Fatalf("Incr: %v", err)
			}
			acked[id]++
		}
		e.waitDrained(writebehind.DefaultStream, writebehind.DefaultGroup, 60*time.Second)
		close(stopReader) // before the barrier, which waits for a deletion
		<-readerDone
		e.engineBarrier(ids[0])
		if err := fl.stop(t); err != nil {
			t.Fatal(err)
		}
		if fl.f.Stats.Windows.Load() < 3 {
			t.Errorf("only %d windows committed: the loop was not exercised", fl.f.Stats.Windows.Load())
		}
		return acked, invalidated.Load() - int64(len(ids)) // minus the first fills
	}

	t.Run("counters-unmanaged", func(t *testing.T) {
		e := e.sub(t)
		cancel := e.startEngine(safeRules, "wb_safe")
		ids := []int{1, 2, 3, 4, 5}
		acked, invalidations := run(t, ids, 1500*time.Millisecond)
		cancel()
		if invalidations < 3 {
			t.Errorf("the read model was invalidated %d times: the flusher's commits did not reach the engine", invalidations)
		}
		for _, id := range ids {
			db := e.dbInt(`SELECT views FROM post_stats WHERE id = $1`, id)
			rv, _ := e.rdb.Get(ctx, fmt.Sprintf("post:%d:views", id)).Int64()
			if db != acked[id] || rv != acked[id] {
				t.Errorf("post %d: database %d, Redis %d, acknowledged %d", id, db, rv, acked[id])
			}
		}
		t.Logf("read model invalidated %d times by the flusher's commits; counters intact", invalidations)
	})

	t.Run("negative-control-counters-managed", func(t *testing.T) {
		e := e.sub(t)
		e.startEngine(unsafeRules, "wb_unsafe")
		ids := []int{6, 7, 8}
		acked, _ := run(t, ids, 1500*time.Millisecond)
		lost := 0
		for _, id := range ids {
			db := e.dbInt(`SELECT views FROM post_stats WHERE id = $1`, id)
			rv, _ := e.rdb.Get(ctx, fmt.Sprintf("post:%d:views", id)).Int64()
			if db != acked[id] {
				t.Errorf("post %d: database %d, acknowledged %d (the database path must not depend on the rules)", id, db, acked[id])
			}
			if rv != acked[id] {
				lost++
			}
		}
		if lost == 0 {
			t.Error("with the counters under an engine rule no counter in Redis lost increments: the control shows nothing")
		}
	})
}
