package writebehind_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/writebehind"
)

// TestWriteAndFlush checks the whole path on one PostgreSQL and Redis:
// counters, last-write-wins fields, batches with repeated keys, composite
// keys, rows that do not exist yet, and that Redis and the database agree
// once the stream is drained.
func TestWriteAndFlush(t *testing.T) {
	t.Parallel() // its own servers; overlaps the fault test's waits
	e := newEnv(t, envOpts{})
	t.Run("flush", func(t *testing.T) { testWriteAndFlush(e.sub(t)) })
	t.Run("backlog-cap", func(t *testing.T) { testBacklogCap(e.sub(t)) })
	t.Run("redis-behind", func(t *testing.T) { testRedisBehind(e.sub(t)) })
	t.Run("window-bounds", func(t *testing.T) { testWindowBounds(e.sub(t)) })
}

// testWindowBounds: a backlog of 40 entries of 5 distinct counters each
// is applied in windows of at most MaxRows rows, or of at most MaxBytes of
// keys and values, however long the window's time bound; nothing is lost.
func testWindowBounds(e *env) {
	t := e.t
	ctx := context.Background()
	for _, c := range []struct {
		stream           string
		opt              writebehind.FlusherOptions
		maxRows, maxOps  int
		firstID, entries int
	}{
		{stream: "wb-rows", opt: writebehind.FlusherOptions{MaxRows: 20}, maxRows: 20, maxOps: 20, firstID: 1000},
		// an op is "counter:NNNN" and "1", 13 bytes: 2 entries of 5 per window
		{stream: "wb-bytes", opt: writebehind.FlusherOptions{MaxBytes: 150}, maxRows: 10, maxOps: 10, firstID: 2000},
	} {
		w := e.writer(writebehind.WriterOptions{Stream: c.stream})
		for i := range 40 {
			ops := make([]writebehind.Op, 5)
			for j := range ops {
				ops[j] = writebehind.IncrOp("counter:"+strconv.Itoa(c.firstID+i*5+j), 1)
			}
			if _, err := w.Apply(ctx, ops...); err != nil {
				t.Fatal(err)
			}
		}
		var mu sync.Mutex
		var windows []writebehind.WindowStats
		opt := c.opt
		opt.Stream, opt.Window = c.stream, 300*time.Millisecond // one read takes the whole backlog: only the bounds split it
		opt.OnWindow = func(ws writebehind.WindowStats) { mu.Lock(); windows = append(windows, ws); mu.Unlock() }
		r := e.startFlusher(opt)
		e.waitDrained(c.stream, writebehind.DefaultGroup, 30*time.Second)
		_ = r.stop(t)
		mu.Lock()
		for _, ws := range windows {
			if ws.Rows > c.maxRows || ws.Ops > c.maxOps {
				t.Errorf("%s: a window of %d rows and %d ops; want at most %d and %d", c.stream, ws.Rows, ws.Ops, c.maxRows, c.maxOps)
			}
		}
		mu.Unlock()
		if got := e.dbInt(`SELECT sum(n) FROM counters WHERE id >= $1 AND id < $2`, c.firstID, c.firstID+200); got != 200 {
			t.Errorf("%s: counters sum to %d, want 200", c.stream, got)
		}
	}
}

// testRedisBehind: the database has applied entries Redis no longer has
// (Redis restored from an old state). New writes would get IDs at or below
// the applied one and be skipped as applied; the flusher must move the
// stream's ID up first, and report it.
func testRedisBehind(e *env) {
	t := e.t
	ctx := context.Background()
	const stream = "wb-behind"
	ahead := fmt.Sprintf("%d-0", time.Now().Add(time.Hour).UnixMilli())
	e.exec(`INSERT INTO writebehind_offsets (stream, grp, last_id) VALUES ($1, $2, $3)`, stream, writebehind.DefaultGroup, ahead)
	fl := e.startFlusher(writebehind.FlusherOptions{Stream: stream, Window: 20 * time.Millisecond})
	deadline := time.Now().Add(30 * time.Second)
	for fl.f.Stats.RedisBehind.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the flusher did not notice that Redis is behind the database")
		}
		time.Sleep(20 * time.Millisecond)
	}
	w := e.writer(writebehind.WriterOptions{Stream: stream})
	if _, err := w.Incr(ctx, "counter:600", 5); err != nil {
		t.Fatal(err)
	}
	e.waitDrained(stream, writebehind.DefaultGroup, 30*time.Second)
	if got := e.dbInt(`SELECT n FROM counters WHERE id = 600`); got != 5 {
		t.Errorf("counters.n = %d after Redis went back in time, want 5: the new write was skipped as applied", got)
	}
}

func testWriteAndFlush(e *env) {
	t := e.t
	ctx := context.Background()
	e.exec(`INSERT INTO post_stats (id, views, title) VALUES (1, 100, 'old')`)
	e.rdb.Set(ctx, "post:1:views", 100, 0) // seeded from the row
	w := e.writer(writebehind.WriterOptions{})
	r := e.startFlusher(writebehind.FlusherOptions{Window: 50 * time.Millisecond})

	if v, err := w.Incr(ctx, "post:1:views", 5); err != nil || v != 105 {
		t.Fatalf("Incr = %d, %v; want 105", v, err)
	}
	if err := w.Set(ctx, "post:1:title", "first"); err != nil {
		t.Fatal(err)
	}
	res, err := w.Apply(ctx,
		writebehind.IncrOp("post:1:views", 1), writebehind.IncrOp("post:1:views", 1), // one key twice in one entry
		writebehind.SetOp("post:1:title", "second"), writebehind.SetOp("post:1:title", "third"),
		writebehind.IncrOp("post:2:likes", 7), // a row that does not exist
		writebehind.IncrOp("score:daily:ann", 3), writebehind.IncrOp("score:daily:bob", -2),
	)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{106, 107, 0, 0, 7, 3, -2}; !equal(res, want) {
		t.Fatalf("Apply = %v, want %v", res, want)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 250 {
				if _, err := w.Incr(ctx, "counter:"+strconv.Itoa(i%10), 1); err != nil {
					t.Errorf("writer %d: %v", g, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	e.waitDrained(writebehind.DefaultStream, writebehind.DefaultGroup, 30*time.Second)

	if got := e.dbInt(`SELECT views FROM post_stats WHERE id = 1`); got != 107 {
		t.Errorf("views = %d, want 107", got)
	}
	var title string
	if err := e.db.QueryRow(ctx, `SELECT title FROM post_stats WHERE id = 1`).Scan(&title); err != nil || title != "third" {
		t.Errorf("title = %q, %v; want the last write, third", title, err)
	}
	if got := e.dbInt(`SELECT likes FROM post_stats WHERE id = 2`); got != 7 {
		t.Errorf("likes of a new row = %d, want 7", got)
	}
	if got := e.dbInt(`SELECT score FROM scores WHERE board = 'daily' AND player = 'bob'`); got != -2 {
		t.Errorf("score = %d, want -2", got)
	}
	for i := range 10 {
		if got := e.dbInt(`SELECT n FROM counters WHERE id = $1`, i); got != 100 {
			t.Errorf("counter %d = %d, want 100", i, got)
		}
		if got, _ := e.rdb.Get(ctx, "counter:"+strconv.Itoa(i)).Int64(); got != 100 {
			t.Errorf("counter:%d in Redis = %d, want 100", i, got)
		}
	}
	st := &r.f.Stats
	// 1,003 calls, of which 1,000 concurrent Incr calls may be combined
	if st.OpsApplied.Load() != 1009 || st.EntriesApplied.Load() > 1003 || st.EntriesSkipped.Load() != 0 {
		t.Errorf("stats: ops %d entries %d skipped %d; want 1009, at most 1003, 0", st.OpsApplied.Load(), st.EntriesApplied.Load(), st.EntriesSkipped.Load())
	}
	if st.RowsWritten.Load() >= st.OpsApplied.Load() {
		t.Errorf("no aggregation: %d rows written for %d ops", st.RowsWritten.Load(), st.OpsApplied.Load())
	}
	// Applied entries are trimmed: at most the last applied one stays.
	if n, _ := e.rdb.XLen(ctx, writebehind.DefaultStream).Result(); n > 1 {
		t.Errorf("stream holds %d entries after draining, want at most 1", n)
	}
	var last string
	if err := e.db.QueryRow(ctx, `SELECT last_id FROM writebehind_offsets WHERE stream = $1 AND grp = $2`, writebehind.DefaultStream, writebehind.DefaultGroup).Scan(&last); err != nil || last == "0-0" {
		t.Errorf("offsets row: %q, %v", last, err)
	}
}

// TestWriteRefusedChangesNothing checks that a batch Redis refuses half
// way is undone: no key changed, no entry appended.
func TestWriteRefusedChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{noPG: true})
	ctx := context.Background()
	w := e.writer(writebehind.WriterOptions{})
	e.rdb.Set(ctx, "counter:2", "not a number", 0)
	e.rdb.Set(ctx, "post:1:title", "kept", 0)
	_, err := w.Apply(ctx, writebehind.IncrOp("counter:1", 5), writebehind.SetOp("post:1:title", "x"),
		writebehind.SetOp("post:9:title", "new"), writebehind.IncrOp("counter:2", 1))
	if !errors.Is(err, writebehind.ErrRefused) {
		t.Fatalf("err = %v, want ErrRefused", err)
	}
	if v, err := e.rdb.Get(ctx, "counter:1").Int64(); err != nil || v != 0 {
		t.Errorf("counter:1 = %d, %v after a refused batch; want 0", v, err)
	}
	if v, _ := e.rdb.Get(ctx, "post:1:title").Result(); v != "kept" {
		t.Errorf("post:1:title = %q after a refused batch; want kept", v)
	}
	if n, _ := e.rdb.Exists(ctx, "post:9:title").Result(); n != 0 {
		t.Error("post:9:title exists after a refused batch")
	}
	if n, _ := e.rdb.XLen(ctx, writebehind.DefaultStream).Result(); n != 0 {
		t.Errorf("stream has %d entries after a refused batch", n)
	}
	for _, c := range []struct {
		op   writebehind.Op
		want error
	}{
		{writebehind.IncrOp("nope:1", 1), writebehind.ErrUnmapped},
		{writebehind.SetOp("counter:1", "1"), writebehind.ErrWrongMode},
		{writebehind.IncrOp("post:1:title", 1), writebehind.ErrWrongMode},
	} {
		if _, err := w.Apply(ctx, c.op); !errors.Is(err, c.want) {
			t.Errorf("Apply(%v) err = %v, want %v", c.op, err, c.want)
		}
	}
}

// testBacklogCap checks both policies at the stream's length cap, and
// that the writes blocked by a full stream go through once the flusher
// drains it. It uses its own stream and counter.
func testBacklogCap(e *env) {
	t := e.t
	ctx := context.Background()
	const stream = "wb-cap"
	w := e.writer(writebehind.WriterOptions{Stream: stream, MaxLen: 10})
	for i := range 10 {
		if _, err := w.Incr(ctx, "counter:500", 1); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if _, err := w.Incr(ctx, "counter:500", 1); !errors.Is(err, writebehind.ErrBacklogFull) {
		t.Fatalf("write 11 err = %v, want ErrBacklogFull", err)
	}
	if v, _ := e.rdb.Get(ctx, "counter:500").Int64(); v != 10 {
		t.Fatalf("counter:500 = %d after a refused write, want 10", v)
	}
	blocking := e.writer(writebehind.WriterOptions{Stream: stream, MaxLen: 10, OnFull: writebehind.FullBlock, BlockMax: 300 * time.Millisecond})
	start := time.Now()
	if _, err := blocking.Incr(ctx, "counter:500", 1); !errors.Is(err, writebehind.ErrBacklogFull) {
		t.Fatalf("blocking write err = %v, want ErrBacklogFull after BlockMax", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("blocking write gave up after %s, before BlockMax", d)
	}
	// A flusher drains the stream: a write blocked now goes through.
	blocking = e.writer(writebehind.WriterOptions{Stream: stream, MaxLen: 10, OnFull: writebehind.FullBlock, BlockMax: time.Minute})
	done := make(chan error, 1)
	go func() { _, err := blocking.Incr(ctx, "counter:500", 1); done <- err }()
	e.startFlusher(writebehind.FlusherOptions{Stream: stream, Window: 20 * time.Millisecond})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("blocked write still blocked 30s after the flusher started")
	}
	e.waitDrained(stream, writebehind.DefaultGroup, 30*time.Second)
	if got := e.dbInt(`SELECT n FROM counters WHERE id = 500`); got != 11 {
		t.Errorf("counters.n = %d, want the 11 acknowledged increments", got)
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestWaitReplicas checks WaitReplicas against a real replica: a write
// confirmed by it returns nil; asking for more replicas than exist gives
// ErrNotReplicated, with the write done (in Redis and in the stream).
func TestWaitReplicas(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{noPG: true})
	ctx := context.Background()
	replica := harness.RedisT(t, harness.RedisOptions{Args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(e.rd.Port())}})
	rc := redis.NewClient(&redis.Options{Addr: replica.Addr()})
	defer rc.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, _ := rc.Info(ctx, "replication").Result()
		if strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica not in sync after 30s:\n%s", info)
		}
		time.Sleep(50 * time.Millisecond)
	}
	w := e.writer(writebehind.WriterOptions{WaitReplicas: 1, WaitTimeout: 5 * time.Second})
	if v, err := w.Incr(ctx, "counter:1", 3); err != nil || v != 3 {
		t.Fatalf("Incr with one replica = %d, %v", v, err)
	}
	if v, err := rc.Get(ctx, "counter:1").Int64(); err != nil || v != 3 {
		t.Errorf("replica has counter:1 = %d, %v right after a confirmed write; want 3", v, err)
	}
	w2 := e.writer(writebehind.WriterOptions{WaitReplicas: 2, WaitTimeout: 200 * time.Millisecond})
	v, err := w2.Incr(ctx, "counter:1", 4)
	if !errors.Is(err, writebehind.ErrNotReplicated) || v != 7 {
		t.Fatalf("Incr waiting for 2 of 1 replicas = %d, %v; want 7, ErrNotReplicated", v, err)
	}
	if n, _ := e.rdb.XLen(ctx, writebehind.DefaultStream).Result(); n != 2 {
		t.Errorf("stream has %d entries, want 2: a write that was not replicated in time is still done", n)
	}
	// After a NOSCRIPT (a restarted or flushed script cache), the pipeline
	// loads the script and the write goes through once.
	if err := e.rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if v, err := w.Incr(ctx, "counter:1", 1); err != nil || v != 8 {
		t.Fatalf("Incr after SCRIPT FLUSH = %d, %v; want 8", v, err)
	}
}
