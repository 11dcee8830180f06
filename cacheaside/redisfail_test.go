package cacheaside

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/redis/go-redis/v9"
)

// TestL1MessagesAndDrops plays the engine's publish by hand: a message
// drops the keys it names, an undecodable one clears L1, and a killed
// subscription clears L1 until it is back.
func TestL1MessagesAndDrops(t *testing.T) {
	_, rdb := testRedis(t)
	c := testClient(t, rdb, Options{L1: L1Options{Size: 100, Channel: "inv", HealthInterval: 200 * time.Millisecond}})
	ctx := context.Background()
	harness.WaitFor(t, 5*time.Second, "L1 subscription", c.L1Active)
	var loads atomic.Int32
	c.Get(ctx, "a", constLoader("a1", &loads))
	c.Get(ctx, "b", constLoader("b1", &loads))
	if v, _ := c.Get(ctx, "a", constLoader("x", &loads)); string(v) != "a1" || c.Stats.L1Hits.Load() != 1 {
		t.Fatalf("second Get = %q, L1 hits %d", v, c.Stats.L1Hits.Load())
	}

	rdb.Set(ctx, "a", "a2", time.Minute) // the new value, as a fill after the invalidation would
	rdb.Publish(ctx, "inv", `{"lsn":"0/16B3748","keys":["a","zzz"]}`)
	harness.WaitFor(t, 2*time.Second, "invalidation message", func() bool { return c.Stats.L1Invalidated.Load() == 1 })
	if v, _ := c.Get(ctx, "a", constLoader("x", &loads)); string(v) != "a2" {
		t.Errorf("after the message Get = %q, want a2 from Redis", v)
	}
	if v, _ := c.Get(ctx, "b", constLoader("x", &loads)); string(v) != "b1" || c.Stats.L1Hits.Load() != 2 {
		t.Errorf("b = %q (L1 hits %d): a message must drop only the keys it names", v, c.Stats.L1Hits.Load())
	}

	rdb.Publish(ctx, "inv", `{"lsn":`)
	harness.WaitFor(t, 2*time.Second, "flush after a bad message", func() bool { return c.Stats.L1Flushes.Load() == 1 })
	if c.l1.len() != 0 {
		t.Error("L1 not cleared by an undecodable message")
	}

	// A TRUNCATE's patterns clear everything too (matching Redis globs
	// against L1 keys is not worth it for a rare event).
	c.Get(ctx, "b", constLoader("x", &loads))
	rdb.Publish(ctx, "inv", `{"lsn":"0/16B3748","patterns":["zzz:*"]}`)
	harness.WaitFor(t, 2*time.Second, "flush after a TRUNCATE", func() bool { return c.Stats.L1Flushes.Load() == 2 })
	if c.l1.len() != 0 {
		t.Error("L1 not cleared by a TRUNCATE message")
	}

	c.Get(ctx, "b", constLoader("x", &loads))
	c.Get(ctx, "b", constLoader("x", &loads))
	hits := c.Stats.L1Hits.Load()
	if c.l1.len() != 1 {
		t.Fatalf("L1 holds %d entries", c.l1.len())
	}
	if err := rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 2*time.Second, "flush after the subscription was killed", func() bool { return c.Stats.L1Flushes.Load() == 3 })
	if c.Stats.SubscriptionDrops.Load() != 1 {
		t.Errorf("drops = %d", c.Stats.SubscriptionDrops.Load())
	}
	c.Get(ctx, "b", constLoader("x", &loads))
	if c.Stats.L1Hits.Load() != hits {
		t.Error("an L1 entry survived the subscription drop")
	}
	harness.WaitFor(t, 5*time.Second, "resubscribed", c.L1Active)
	c.Get(ctx, "b", constLoader("x", &loads))
	c.Get(ctx, "b", constLoader("x", &loads))
	if c.Stats.L1Hits.Load() != hits+1 {
		t.Error("L1 not in use again after the resubscription")
	}
	if loads.Load() != 2 {
		t.Errorf("loads = %d, want 2 (a1, b1)", loads.Load())
	}

	start := time.Now()
	c.Close()
	if time.Since(start) > 3*time.Second || c.L1Active() || c.l1.len() != 0 {
		t.Errorf("Close took %s, L1 active %v, %d entries", time.Since(start), c.L1Active(), c.l1.len())
	}
	if v, err := c.Get(ctx, "b", constLoader("x", &loads)); err != nil || string(v) != "b1" {
		t.Errorf("Get after Close = %q, %v", v, err)
	}
}

// TestRedisDown: with Redis paused or killed, Get serves the loader's value,
// counts the errors, and the L1 is cleared; all recovers with Redis.
func TestRedisDown(t *testing.T) {
	rd, _ := testRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr(), DialTimeout: 200 * time.Millisecond,
		ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	c := testClient(t, rdb, Options{L1: L1Options{Size: 100, Channel: "inv", HealthInterval: 200 * time.Millisecond}})
	ctx := context.Background()
	harness.WaitFor(t, 5*time.Second, "L1 subscription", c.L1Active)
	if v, err := c.Get(ctx, "k", constLoader("v1", nil)); err != nil || string(v) != "v1" {
		t.Fatalf("Get = %q, %v", v, err)
	}

	// Paused: commands time out.
	if err := rd.Pause(); err != nil {
		t.Fatal(err)
	}
	paused := true
	defer func() {
		if paused {
			_ = rd.Resume()
		}
	}()
	start := time.Now()
	v, err := c.Get(ctx, "other", constLoader("db", nil))
	if err != nil || string(v) != "db" {
		t.Fatalf("Get with Redis paused = %q, %v", v, err)
	}
	t.Logf("Get with Redis paused took %s (ReadTimeout 200ms)", time.Since(start).Round(time.Millisecond))
	if c.Stats.RedisErrors.Load() == 0 {
		t.Error("the Redis error was not counted")
	}
	harness.WaitFor(t, 3*time.Second, "L1 off while Redis is paused", func() bool { return !c.L1Active() })
	if c.l1.len() != 0 {
		t.Error("L1 kept its entries although the subscription is dead")
	}
	if err := rd.Resume(); err != nil {
		t.Fatal(err)
	}
	paused = false
	harness.WaitFor(t, 10*time.Second, "L1 back after Resume", c.L1Active)
	if v, err := c.Get(ctx, "k", constLoader("x", nil)); err != nil || string(v) != "v1" {
		t.Errorf("after Resume Get = %q, %v", v, err)
	}

	// Killed: connections are refused.
	if err := rd.Kill(); err != nil {
		t.Fatal(err)
	}
	errs := c.Stats.RedisErrors.Load()
	start = time.Now()
	v, err = c.Get(ctx, "k2", constLoader("db2", nil))
	if err != nil || string(v) != "db2" || c.Stats.RedisErrors.Load() == errs {
		t.Fatalf("Get with Redis killed = %q, %v (errors %d)", v, err, c.Stats.RedisErrors.Load())
	}
	t.Logf("Get with Redis killed took %s", time.Since(start).Round(time.Millisecond))
	harness.WaitFor(t, 3*time.Second, "L1 off while Redis is down", func() bool { return !c.L1Active() })
	if err := rd.Start(); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 10*time.Second, "L1 back after restart", c.L1Active)
	// The restarted Redis has forgotten the scripts: EVALSHA falls back to EVAL.
	if v, err := c.Get(ctx, "k2", constLoader("db3", nil)); err != nil || string(v) != "db3" {
		t.Errorf("after restart Get = %q, %v", v, err)
	}
	if v, _ := c.Get(ctx, "k2", constLoader("x", nil)); string(v) != "db3" {
		t.Errorf("not cached after restart: %q", v)
	}
	t.Logf("stats: %+v", c.Stats.Snapshot())
}
