package cacheaside

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// These tests run against a real Redis (started by internal/harness) with
// the engine played by hand: deleting a key with its lease is exactly what
// the engine does with client.leases on.

func testRedis(t *testing.T) (*harness.Redis, *redis.Client) {
	t.Helper()
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return rd, rdb
}

func testClient(t *testing.T, rdb redis.UniversalClient, o Options) *Client {
	t.Helper()
	c, err := New(rdb, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func constLoader(v string, calls *atomic.Int32) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		if calls != nil {
			calls.Add(1)
		}
		return []byte(v), nil
	}
}

func exists(t *testing.T, rdb *redis.Client, key string) bool {
	t.Helper()
	n, err := rdb.Exists(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func TestScriptsTokenHandling(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{LeaseTTL: time.Minute})
	ctx := context.Background()
	key, lease := "k", LeaseKey("k")

	kind, _, err := c.getOrLease(ctx, key, lease, "tokA")
	if err != nil || kind != replyLeased {
		t.Fatalf("first reader: %d, %v", kind, err)
	}
	if pttl := rdb.PTTL(ctx, lease).Val(); pttl <= 0 || pttl > time.Minute {
		t.Errorf("lease PTTL = %s", pttl)
	}
	if kind, _, _ := c.getOrLease(ctx, key, lease, "tokA"); kind != replyLeased {
		t.Errorf("a retried call with the same token must find its own lease, got %d", kind)
	}
	if kind, _, _ := c.getOrLease(ctx, key, lease, "tokB"); kind != replyHeld {
		t.Errorf("second reader: %d, want held", kind)
	}
	// A wrong token neither fills nor releases.
	if n, _ := fillScript.Run(ctx, rdb, []string{key, lease}, "tokB", "v", 60000).Int(); n != 0 || exists(t, rdb, key) {
		t.Error("fill with another's token succeeded")
	}
	if n, _ := releaseScript.Run(ctx, rdb, []string{lease}, "tokB").Int(); n != 0 || rdb.Get(ctx, lease).Val() != "tokA" {
		t.Error("release with another's token removed the lease")
	}
	// The right token fills and frees the lease.
	if n, err := fillScript.Run(ctx, rdb, []string{key, lease}, "tokA", "v", 60000).Int(); n != 1 || err != nil {
		t.Fatalf("fill: %d, %v", n, err)
	}
	if exists(t, rdb, lease) || rdb.Get(ctx, key).Val() != "v" {
		t.Error("fill did not write the value and delete the lease")
	}
	kind, val, _ := c.getOrLease(ctx, key, lease, "tokC")
	if kind != replyHit || string(val) != "v" || exists(t, rdb, lease) {
		t.Errorf("hit: %d %q (a hit must not take a lease)", kind, val)
	}
	// An empty value is a hit too.
	rdb.Set(ctx, "empty", "", time.Minute)
	if kind, val, _ := c.getOrLease(ctx, "empty", LeaseKey("empty"), "t"); kind != replyHit || len(val) != 0 {
		t.Errorf("empty value: %d %q", kind, val)
	}
	// Fill after the lease is gone (the engine deleted it) is refused.
	c.getOrLease(ctx, "k2", LeaseKey("k2"), "tokD")
	rdb.Del(ctx, "k2", LeaseKey("k2"))
	if n, _ := fillScript.Run(ctx, rdb, []string{"k2", LeaseKey("k2")}, "tokD", "old", 60000).Int(); n != 0 || exists(t, rdb, "k2") {
		t.Error("fill without its lease succeeded")
	}
}

func TestNewTokenUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 10000 {
		tok := newToken()
		if len(tok) != 26 || strings.Trim(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") != "" {
			t.Fatalf("token %q is not 26 base32 characters", tok)
		}
		if seen[tok] {
			t.Fatalf("token %q repeated", tok)
		}
		seen[tok] = true
	}
}

func TestGetFillsUnderLeaseWithPrefix(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{Prefix: "app:", TTL: time.Hour, TTLJitter: 0.2, LeaseTTL: time.Minute})
	ctx := context.Background()
	var loads atomic.Int32
	v, err := c.Get(ctx, "user:1", func(ctx context.Context) ([]byte, error) {
		loads.Add(1)
		// The lease is taken on the full key, with the prefix.
		if tok := rdb.Get(ctx, "lease:{app:user:1}").Val(); len(tok) != 26 {
			t.Errorf("lease of the prefixed key holds %q during the load", tok)
		}
		return []byte("ann"), nil
	})
	if err != nil || string(v) != "ann" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if got := rdb.Get(ctx, "app:user:1").Val(); got != "ann" {
		t.Errorf("cached %q", got)
	}
	if pttl := rdb.PTTL(ctx, "app:user:1").Val(); pttl > time.Hour || pttl < 48*time.Minute-time.Second {
		t.Errorf("TTL %s outside [48m, 1h]", pttl)
	}
	if exists(t, rdb, "lease:{app:user:1}") {
		t.Error("lease left after the fill")
	}
	v, _ = c.Get(ctx, "user:1", constLoader("other", &loads))
	if string(v) != "ann" || loads.Load() != 1 {
		t.Errorf("second Get = %q after %d loads", v, loads.Load())
	}
	s := c.Stats.Snapshot()
	if s.Hits != 1 || s.Misses != 1 || s.Loads != 1 || s.Fills != 1 || s.FillsRefused != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestFillRefusedAfterInvalidation is the stale set, closed: the commit and
// the engine's invalidation happen while the value loads.
func TestFillRefusedAfterInvalidation(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{})
	ctx := context.Background()
	v, err := c.Get(ctx, "user:1", func(ctx context.Context) ([]byte, error) {
		// The old row has been read; now the writer commits and the engine
		// deletes the key with its lease.
		rdb.Del(ctx, "user:1", LeaseKey("user:1"))
		return []byte("old"), nil
	})
	if err != nil || string(v) != "old" {
		t.Fatalf("Get = %q, %v (a refused fill still returns the value)", v, err)
	}
	if exists(t, rdb, "user:1") {
		t.Error("stale value cached although the key was invalidated during the load")
	}
	// The same, but another reader took a fresh lease after the invalidation.
	_, _ = c.Get(ctx, "user:2", func(ctx context.Context) ([]byte, error) {
		rdb.Del(ctx, "user:2", LeaseKey("user:2"))
		rdb.Set(ctx, LeaseKey("user:2"), "newer-reader", time.Minute)
		return []byte("old"), nil
	})
	if exists(t, rdb, "user:2") || rdb.Get(ctx, LeaseKey("user:2")).Val() != "newer-reader" {
		t.Error("a fill overrode a newer reader's lease")
	}
	if n := c.Stats.FillsRefused.Load(); n != 2 {
		t.Errorf("fills refused = %d, want 2", n)
	}
}

func TestLoaderErrorReleasesLease(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{LeaseTTL: time.Minute})
	other := testClient(t, rdb, Options{LeaseTTL: time.Minute}) // another process
	ctx := context.Background()
	errDB := errors.New("database unavailable")
	_, err := c.Get(ctx, "k", func(context.Context) ([]byte, error) { return nil, errDB })
	if !errors.Is(err, errDB) || !strings.Contains(err.Error(), `load "k"`) {
		t.Fatalf("error = %v", err)
	}
	if exists(t, rdb, LeaseKey("k")) || exists(t, rdb, "k") {
		t.Fatal("lease kept (or error cached) after a failed load")
	}
	start := time.Now()
	v, err := other.Get(ctx, "k", constLoader("v", nil))
	if err != nil || string(v) != "v" || other.Stats.LeaseWaits.Load() != 0 || time.Since(start) > 3*time.Second {
		t.Errorf("next reader: %q, %v, waits %d, %s", v, err, other.Stats.LeaseWaits.Load(), time.Since(start))
	}
	if c.Stats.LoadErrors.Load() != 1 {
		t.Errorf("load errors = %d", c.Stats.LoadErrors.Load())
	}
}

func TestLeaseExpiresDuringSlowLoad(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{LeaseTTL: 50 * time.Millisecond})
	v, err := c.Get(context.Background(), "k", func(context.Context) ([]byte, error) {
		time.Sleep(150 * time.Millisecond)
		return []byte("slow"), nil
	})
	if err != nil || string(v) != "slow" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if exists(t, rdb, "k") || c.Stats.FillsRefused.Load() != 1 {
		t.Errorf("a load that outlived its lease was cached (refused %d)", c.Stats.FillsRefused.Load())
	}
}

func TestWaitBoundLoadsWithoutFilling(t *testing.T) {
	_, rdb := testRedis(t)
	ctx := context.Background()
	rdb.Set(ctx, LeaseKey("k"), "someone-else", time.Minute) // a holder that never fills
	c := testClient(t, rdb, Options{WaitInterval: 5 * time.Millisecond, MaxWait: 100 * time.Millisecond})
	start := time.Now()
	v, err := c.Get(ctx, "k", constLoader("v", nil))
	if err != nil || string(v) != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	// Timings on a shared machine are noisy: only a hang is an error here;
	// the stats below say that the wait bound, not a fill, ended the wait.
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("waited %s, want about MaxWait (100ms)", el)
	}
	s := c.Stats.Snapshot()
	if s.WaitsExhausted != 1 || s.LeaseWaits < 2 || s.Loads != 1 || s.Fills != 0 {
		t.Errorf("stats %+v", s)
	}
	if exists(t, rdb, "k") || rdb.Get(ctx, LeaseKey("k")).Val() != "someone-else" {
		t.Error("a reader without the lease filled the cache or touched the lease")
	}
}

func TestWaiterGetsHolderFill(t *testing.T) {
	_, rdb := testRedis(t)
	ctx := context.Background()
	rdb.Set(ctx, LeaseKey("k"), "holder", time.Minute)
	go func() {
		time.Sleep(50 * time.Millisecond)
		fillScript.Run(ctx, rdb, []string{"k", LeaseKey("k")}, "holder", "filled", 60000)
	}()
	c := testClient(t, rdb, Options{MaxWait: 2 * time.Second})
	var loads atomic.Int32
	v, err := c.Get(ctx, "k", constLoader("loaded", &loads))
	if err != nil || string(v) != "filled" || loads.Load() != 0 {
		t.Errorf("Get = %q, %v after %d loads; want the holder's fill", v, err, loads.Load())
	}
	if c.Stats.LeaseWaits.Load() == 0 || c.Stats.Hits.Load() != 1 {
		t.Errorf("stats %+v", c.Stats.Snapshot())
	}
}

func TestTooLargeNotCached(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{MaxValueBytes: 4})
	v, err := c.Get(context.Background(), "k", constLoader("12345", nil))
	if err != nil || string(v) != "12345" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if exists(t, rdb, "k") || exists(t, rdb, LeaseKey("k")) || c.Stats.FillsSkipped.Load() != 1 {
		t.Error("a value over MaxValueBytes was cached, or its lease kept")
	}
}

// TestLeaderCancelled: the reader whose loader runs gives up; the readers
// sharing its single-flight load themselves instead of failing.
func TestLeaderCancelled(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{})
	leaderCtx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	leaderErr := make(chan error)
	go func() {
		_, err := c.Get(leaderCtx, "k", func(ctx context.Context) ([]byte, error) {
			close(started)
			<-ctx.Done()
			return nil, ctx.Err()
		})
		leaderErr <- err
	}()
	<-started
	follower := make(chan string)
	go func() {
		v, err := c.Get(context.Background(), "k", constLoader("mine", nil))
		if err != nil {
			t.Errorf("follower: %v", err)
		}
		follower <- string(v)
	}()
	harness.WaitFor(t, time.Second, "follower joined", func() bool { return c.Stats.Coalesced.Load() == 0 && joined(c, "k") })
	cancel()
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Errorf("leader: %v", err)
	}
	if v := <-follower; v != "mine" {
		t.Errorf("follower got %q", v)
	}
	if got := rdb.Get(context.Background(), "k").Val(); got != "mine" {
		t.Errorf("cached %q", got)
	}
}

func joined(c *Client, key string) bool {
	c.flights.mu.Lock()
	defer c.flights.mu.Unlock()
	call := c.flights.calls[key]
	return call != nil && call.waiters > 0
}

func TestLoaderPanicReleasesLease(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{LeaseTTL: time.Minute})
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v", r)
			}
		}()
		c.Get(context.Background(), "k", func(context.Context) ([]byte, error) { panic("boom") })
	}()
	if exists(t, rdb, LeaseKey("k")) {
		t.Error("lease kept after the loader panicked")
	}
}

func TestGetJSON(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{Prefix: "p:"})
	ctx := context.Background()
	type user struct {
		ID   int    `json:"id"`
		Name string `json:"name"`
	}
	load := func(context.Context) (*user, error) { return &user{1, "Ann"}, nil }
	u, err := GetJSON(ctx, c, "user:1", load)
	if err != nil || u.Name != "Ann" {
		t.Fatalf("GetJSON = %+v, %v", u, err)
	}
	if got := rdb.Get(ctx, "p:user:1").Val(); got != `{"id":1,"name":"Ann"}` {
		t.Errorf("cached %q", got)
	}
	u, err = GetJSON(ctx, c, "user:1", func(context.Context) (*user, error) { return nil, errors.New("not called") })
	if err != nil || u.Name != "Ann" {
		t.Fatalf("cached GetJSON = %+v, %v", u, err)
	}
	// Absence cached as null.
	u, err = GetJSON(ctx, c, "user:2", func(context.Context) (*user, error) { return nil, nil })
	if err != nil || u != nil || rdb.Get(ctx, "p:user:2").Val() != "null" {
		t.Errorf("absent: %+v, %v, cached %q", u, err, rdb.Get(ctx, "p:user:2").Val())
	}
	// An entry that does not decode is deleted and the value loaded.
	rdb.Set(ctx, "p:user:3", "not json", time.Minute)
	u, err = GetJSON(ctx, c, "user:3", func(context.Context) (*user, error) { return &user{3, "Cy"}, nil })
	if err != nil || u.Name != "Cy" || exists(t, rdb, "p:user:3") || c.Stats.DecodeErrors.Load() != 1 {
		t.Errorf("undecodable entry: %+v, %v, decode errors %d", u, err, c.Stats.DecodeErrors.Load())
	}
}

func TestDelete(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{Prefix: "p:"})
	ctx := context.Background()
	c.Get(ctx, "a", constLoader("v", nil))
	rdb.Set(ctx, LeaseKey("p:b"), "someone", time.Minute)
	if err := c.Delete(ctx, "a", "b"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"p:a", LeaseKey("p:a"), LeaseKey("p:b")} {
		if exists(t, rdb, k) {
			t.Errorf("%s not deleted", k)
		}
	}
}

// TestConcurrentGetsOneLoad: many readers of one key in one process make
// one load; everyone gets the value.
func TestConcurrentGetsOneLoad(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{})
	var loads atomic.Int32
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			v, err := c.Get(context.Background(), "hot", func(context.Context) ([]byte, error) {
				loads.Add(1)
				time.Sleep(50 * time.Millisecond)
				return []byte("v"), nil
			})
			if err != nil || string(v) != "v" {
				t.Errorf("Get = %q, %v", v, err)
			}
		}()
	}
	close(gate)
	wg.Wait()
	s := c.Stats.Snapshot()
	if loads.Load() != 1 || s.Coalesced+s.Hits != 199 {
		t.Errorf("loads %d, stats %+v", loads.Load(), s)
	}
}

// The engine's fence: right after an invalidation the lease holds
// LeaseFence for a moment. A fill under an earlier lease is refused; a
// reader that misses meanwhile takes no lease and waits, and once the fence
// lapses it loads and fills. (The fence covers the moment in which a commit
// is in the WAL, and invalidated, but not yet visible to other sessions.)
func TestFenceHoldsFillsBack(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{WaitInterval: 5 * time.Millisecond})
	ctx := context.Background()
	const fence = 300 * time.Millisecond
	invalidate := func(key string) {
		rdb.Set(ctx, LeaseKey(key), LeaseFence, fence)
		rdb.Unlink(ctx, key)
	}
	v, err := c.Get(ctx, "user:1", func(ctx context.Context) ([]byte, error) {
		invalidate("user:1") // the engine, while the old row loads
		return []byte("old"), nil
	})
	if err != nil || string(v) != "old" || exists(t, rdb, "user:1") {
		t.Fatalf("Get = %q, %v; cached %v: a fill under a fenced lease must be refused", v, err, exists(t, rdb, "user:1"))
	}
	// A reader that misses during the fence waits for it to lapse.
	invalidate("user:2")
	start := time.Now()
	var loads atomic.Int32
	v, err = c.Get(ctx, "user:2", constLoader("new", &loads))
	waited := time.Since(start)
	if err != nil || string(v) != "new" || loads.Load() != 1 {
		t.Fatalf("Get = %q, %v, %d loads", v, err, loads.Load())
	}
	if waited < fence-50*time.Millisecond {
		t.Errorf("read returned after %v, before the %v fence lapsed", waited, fence)
	}
	if got := rdb.Get(ctx, "user:2").Val(); got != "new" {
		t.Errorf("after the fence the value was not filled: %q", got)
	}
	if c.Stats.Fenced.Load() == 0 || c.Stats.FillsRefused.Load() != 1 {
		t.Errorf("stats: fenced %d, fills refused %d", c.Stats.Fenced.Load(), c.Stats.FillsRefused.Load())
	}
}
