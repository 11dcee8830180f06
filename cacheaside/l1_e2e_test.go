package cacheaside_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
)

// TestL1WithEngine: an update of a row drops its key from the L1 of every
// subscribed client (through the engine's publish channel), and a dropped
// subscription clears every L1 until it is back.
func TestL1WithEngine(t *testing.T) {
	e := sharedEnv(t)
	const id, procs = 200, 3
	e.insertItems(t, id)
	e.mustBarrier(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	load := func(ctx context.Context) ([]byte, error) {
		v, err := e.value(ctx, id)
		return []byte(strconv.FormatInt(v, 10)), err
	}
	current := func() string {
		v, err := load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return string(v)
	}
	clients := make([]*cacheaside.Client, procs)
	for i := range clients {
		rdb := redis.NewClient(&redis.Options{Addr: e.rd.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		c, err := cacheaside.New(rdb, cacheaside.Options{Prefix: "lib:",
			L1: cacheaside.L1Options{Size: 100, Channel: testChannel, TTL: time.Minute, HealthInterval: 500 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		clients[i] = c
	}
	waitAll := func(what string, cond func(c *cacheaside.Client) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for _, c := range clients {
			for !cond(c) {
				if time.Now().After(deadline) {
					t.Fatalf("timed out waiting for %s", what)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	// get reads through every client and checks the value and whether it
	// came from L1.
	get := func(want string, fromL1 bool) {
		t.Helper()
		for i, c := range clients {
			before := c.Stats.L1Hits.Load()
			v, err := c.Get(ctx, itemKey(id), load)
			if err != nil || string(v) != want {
				t.Fatalf("client %d: Get = %q, %v; want %s", i, v, err, want)
			}
			if hit := c.Stats.L1Hits.Load() > before; hit != fromL1 {
				t.Fatalf("client %d: L1 hit %v, want %v", i, hit, fromL1)
			}
		}
	}

	waitAll("L1 subscriptions", (*cacheaside.Client).L1Active)
	v1 := current()
	// Fill Redis (one client) and every L1. The row was just inserted, so
	// its lease may still hold the engine's fence, and the engine's message
	// for the insert may arrive during the read and keep that value out of
	// L1: read until every client holds it.
	for i, c := range clients {
		for attempt := 0; c.Stats.L1Hits.Load() == 0; attempt++ {
			if v, err := c.Get(ctx, itemKey(id), load); err != nil || string(v) != v1 {
				t.Fatalf("client %d: Get = %q, %v; want %s", i, v, err, v1)
			}
			if attempt == 100 {
				t.Fatalf("client %d: no L1 hit after 100 reads", i)
			}
		}
	}
	get(v1, true)

	e.exec(t, `UPDATE items SET v = v + 1 WHERE id = $1`, id)
	e.mustBarrier(t)
	waitAll("the engine's message in every L1", func(c *cacheaside.Client) bool { return c.Stats.L1Invalidated.Load() >= 1 })
	v2 := current()
	get(v2, false)
	get(v2, true)

	// Drop every subscription: every L1 is cleared.
	if err := e.rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	waitAll("L1 cleared after the drop", func(c *cacheaside.Client) bool { return c.Stats.L1Flushes.Load() >= 1 })
	get(v2, false)
	waitAll("L1 resubscribed", (*cacheaside.Client).L1Active)

	// The new subscriptions deliver invalidations again.
	for _, c := range clients { // refill L1 (unless the read above did, after the resubscription)
		if v, err := c.Get(ctx, itemKey(id), load); err != nil || string(v) != v2 {
			t.Fatalf("Get = %q, %v; want %s", v, err, v2)
		}
	}
	get(v2, true)
	e.exec(t, `UPDATE items SET v = v + 1 WHERE id = $1`, id)
	e.mustBarrier(t)
	waitAll("the engine's message after the resubscription", func(c *cacheaside.Client) bool { return c.Stats.L1Invalidated.Load() >= 2 })
	get(current(), false)
	for i, c := range clients {
		t.Logf("client %d: %+v", i, c.Stats.Snapshot())
	}
}
