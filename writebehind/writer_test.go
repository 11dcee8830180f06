package writebehind_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/writebehind"
)

// TestCombinedCalls checks that concurrent Incr calls combined into shared
// script calls each get their own result: for every key, the values
// returned to the callers are exactly 1..n (each increment seen once, in
// some order), Redis and the stream hold every increment once, and calls
// were indeed combined (fewer stream entries than calls). A call Redis
// refuses fails alone; a cancelled call returns its context's error.
func TestCombinedCalls(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{noPG: true})
	ctx := context.Background()
	const stream = "wb-combined"
	w := e.writer(writebehind.WriterOptions{Stream: stream, MaxInFlight: 2})
	e.rdb.Set(ctx, "counter:99", "not a number", 0)

	const goroutines, perG, keys = 64, 40, 4
	var mu sync.Mutex
	got := map[int][]int64{}
	var refused atomic.Int64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perG {
				if g%16 == 0 && i%10 == 0 { // a faulty call now and then, among the others
					if _, err := w.Incr(ctx, "counter:99", 1); !errors.Is(err, writebehind.ErrRefused) {
						t.Errorf("Incr on a non-integer = %v, want ErrRefused", err)
					}
					refused.Add(1)
				}
				k := (g + i) % keys
				v, err := w.Incr(ctx, "counter:"+strconv.Itoa(k), 1)
				if err != nil {
					t.Errorf("Incr: %v", err)
					return
				}
				mu.Lock()
				got[k] = append(got[k], v)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if refused.Load() == 0 {
		t.Fatal("no faulty call was made")
	}
	total := 0
	for k := range keys {
		vs := got[k]
		slices.Sort(vs)
		for i, v := range vs {
			if v != int64(i+1) {
				t.Fatalf("counter:%d: callers got %v..., want each of 1..%d once", k, vs[:min(len(vs), i+3)], len(vs))
			}
		}
		if r, _ := e.rdb.Get(ctx, "counter:"+strconv.Itoa(k)).Int64(); r != int64(len(vs)) {
			t.Errorf("counter:%d in Redis = %d, want %d", k, r, len(vs))
		}
		total += len(vs)
	}
	if total != goroutines*perG {
		t.Fatalf("%d increments returned, want %d", total, goroutines*perG)
	}
	entries, err := e.rdb.XRange(ctx, stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	ops := 0 // XRange's map would merge an entry's repeated keys: count fields
	raw, err := e.rdb.Do(ctx, "XRANGE", stream, "-", "+").Slice()
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range raw {
		ops += len(it.([]any)[1].([]any)) / 2
	}
	if ops != total {
		t.Errorf("the stream holds %d increments, want %d", ops, total)
	}
	if len(entries) >= total {
		t.Errorf("%d stream entries for %d calls: nothing was combined", len(entries), total)
	}
	if s := w.Stats.Ops.Load(); s != uint64(total) {
		t.Errorf("Stats.Ops = %d, want %d", s, total)
	}
	if v, _ := e.rdb.Get(ctx, "counter:99").Result(); v != "not a number" {
		t.Errorf("counter:99 = %q, want it unchanged", v)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := w.Incr(cctx, "counter:0", 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Incr with a cancelled context = %v, want context.Canceled", err)
	}
	t.Logf("%d calls in %d script calls", total+int(refused.Load()), len(entries))

	// Deadlines that end while calls queue or are in flight: a call that
	// returned its context's bare error was withdrawn and never written;
	// one that returned another error may or may not have been.
	var acked, unknown, withdrawn atomic.Int64
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perG {
				cctx, cancel := context.WithTimeout(ctx, time.Duration(50+(g*perG+i)%400)*time.Microsecond)
				_, err := w.Incr(cctx, "counter:50", 1)
				switch {
				case err == nil:
					acked.Add(1)
				case err == cctx.Err():
					withdrawn.Add(1)
				default:
					unknown.Add(1)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	v, _ := e.rdb.Get(ctx, "counter:50").Int64()
	if v < acked.Load() || v > acked.Load()+unknown.Load() {
		t.Errorf("counter:50 = %d after %d acknowledged, %d unknown and %d withdrawn calls", v, acked.Load(), unknown.Load(), withdrawn.Load())
	}
	t.Logf("deadlines: %d acknowledged, %d unknown, %d withdrawn; counter %d", acked.Load(), unknown.Load(), withdrawn.Load(), v)
}

// TestClientRetryAppliesOnce: go-redis retries a command whose connection
// broke (MaxRetries, 3 by default). A proxy between the client and Redis
// forwards the write script and drops its reply by closing the
// connection: Redis executed it, the client retries it on a new
// connection. With the call's token, Redis executes it once (the counter
// is 1, one stream entry); the negative control without the token shows
// the hazard (the counter is 2, two entries).
func TestClientRetryAppliesOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{noPG: true})
	ctx := context.Background()
	px := startDropProxy(t, e.rd.Addr())
	rdb := redis.NewClient(&redis.Options{Addr: px.addr(), ReadTimeout: 5 * time.Second}) // MaxRetries: the default, 3
	t.Cleanup(func() { _ = rdb.Close() })

	incrOnce := func(t *testing.T, stream, key string, opt ...writebehind.WriterOptions) (*writebehind.Writer, int64) {
		o := writebehind.WriterOptions{}
		if len(opt) > 0 {
			o = opt[0]
		}
		o.Stream = stream
		w, err := writebehind.NewWriter(rdb, testMappings, o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Incr(ctx, "counter:1", 1); err != nil && !errors.Is(err, writebehind.ErrNotReplicated) { // loads the script
			t.Fatal(err)
		}
		px.dropReplyTo(key)
		v, err := w.Incr(ctx, key, 1)
		if err != nil && !(o.WaitReplicas > 0 && errors.Is(err, writebehind.ErrNotReplicated)) {
			t.Fatalf("Incr through the proxy: %v", err)
		}
		if px.dropped.Load() != 1 {
			t.Fatalf("the proxy dropped %d replies, want 1", px.dropped.Load())
		}
		px.dropped.Store(0)
		return w, v
	}
	check := func(t *testing.T, stream, key string, want int64) {
		if v, _ := e.rdb.Get(ctx, key).Int64(); v != want {
			t.Errorf("%s = %d after one Incr whose reply was lost, want %d", key, v, want)
		}
		if n, _ := e.rdb.XLen(ctx, stream).Result(); n != 1+want {
			t.Errorf("stream %s has %d entries, want %d", stream, n, 1+want)
		}
	}

	t.Run("token", func(t *testing.T) {
		w, v := incrOnce(t, "wb-retry", "counter:777")
		check(t, "wb-retry", "counter:777", 1)
		if v != 1 || w.Stats.Replayed.Load() != 1 {
			t.Errorf("Incr returned %d with %d replays, want 1 and 1 (the retry answered from the token)", v, w.Stats.Replayed.Load())
		}
	})
	t.Run("token-with-wait", func(t *testing.T) { // the script and WAIT in one pipeline, retried together
		w, v := incrOnce(t, "wb-retry-wait", "counter:780", writebehind.WriterOptions{WaitReplicas: 1, WaitTimeout: 10 * time.Millisecond})
		check(t, "wb-retry-wait", "counter:780", 1)
		if v != 1 || w.Stats.Replayed.Load() != 1 {
			t.Errorf("Incr returned %d with %d replays, want 1 and 1", v, w.Stats.Replayed.Load())
		}
	})
	t.Run("no-token-applies-twice", func(t *testing.T) {
		defer writebehind.SetUnsafeNoToken()()
		incrOnce(t, "wb-retry-unsafe", "counter:778")
		check(t, "wb-retry-unsafe", "counter:778", 2)
	})
	t.Run("apply-once", func(t *testing.T) {
		w := e.writer(writebehind.WriterOptions{Stream: "wb-once"})
		for range 3 {
			res, err := w.ApplyOnce(ctx, "req-1", writebehind.IncrOp("counter:779", 5))
			if err != nil || len(res) != 1 || res[0] != 5 {
				t.Fatalf("ApplyOnce = %v, %v; want [5]", res, err)
			}
		}
		if _, err := w.ApplyOnce(ctx, "req-2", writebehind.IncrOp("counter:779", 5)); err != nil {
			t.Fatal(err)
		}
		if v, _ := e.rdb.Get(ctx, "counter:779").Int64(); v != 10 || w.Stats.Replayed.Load() != 2 {
			t.Errorf("counter:779 = %d with %d replays after ids req-1 x3, req-2; want 10 and 2", v, w.Stats.Replayed.Load())
		}
	})
}

// dropProxy forwards TCP to Redis; armed with a marker, it forwards the
// next request that contains it and then closes that connection instead
// of forwarding the reply.
type dropProxy struct {
	ln      net.Listener
	target  string
	marker  atomic.Pointer[[]byte]
	dropped atomic.Int32
}

func startDropProxy(t *testing.T, target string) *dropProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, target: target}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); p.serve(c) }()
		}
	}()
	return p
}

func (p *dropProxy) addr() string { return p.ln.Addr().String() }

func (p *dropProxy) dropReplyTo(marker string) {
	m := []byte(marker)
	p.marker.Store(&m)
}

func (p *dropProxy) serve(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	var drop atomic.Bool
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if m := p.marker.Load(); m != nil && bytes.Contains(buf[:n], *m) && p.marker.CompareAndSwap(m, nil) {
					drop.Store(true)
				}
				if _, werr := up.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				_ = up.Close()
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 && drop.Load() {
			p.dropped.Add(1)
			return // Redis executed it; the client never hears
		}
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
