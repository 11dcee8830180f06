package cacheaside

import (
	"fmt"
	"testing"
	"time"
)

func newTestL1(size int, ttl time.Duration) (*l1, *Stats, *time.Time) {
	var st Stats
	c := newL1(size, ttl, &st)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	c.setUp(true)
	return c, &st, &now
}

func TestL1GetStoreEvictExpire(t *testing.T) {
	c, st, now := newTestL1(2, time.Second)
	for _, k := range []string{"a", "b"} {
		if !c.store(k, []byte(k), c.snapshot(k)) {
			t.Fatalf("store %s refused", k)
		}
	}
	v, ok := c.get("a") // a is now the most recently used
	if !ok || string(v) != "a" {
		t.Fatalf("get a = %q, %v", v, ok)
	}
	v[0] = 'X' // the caller's copy
	if v, _ := c.get("a"); string(v) != "a" {
		t.Fatalf("L1 value changed through a returned slice: %q", v)
	}
	c.store("c", []byte("c"), c.snapshot("c"))
	if _, ok := c.get("b"); ok {
		t.Error("b should have been evicted (least recently used)")
	}
	if st.L1Evictions.Load() != 1 {
		t.Errorf("evictions = %d", st.L1Evictions.Load())
	}
	*now = now.Add(time.Second)
	if _, ok := c.get("a"); ok {
		t.Error("a should have expired at its TTL")
	}
	if st.L1Expired.Load() != 1 || c.len() != 1 {
		t.Errorf("expired = %d, len = %d", st.L1Expired.Load(), c.len())
	}
}

// TestL1TwoConnectionRace: a value read from Redis must not be stored when
// the key's invalidation arrived (on the subscription's connection) while
// it was read, nor when the subscription dropped or came back meanwhile.
func TestL1TwoConnectionRace(t *testing.T) {
	c, st, _ := newTestL1(100, time.Minute)

	snap := c.snapshot("user:1")
	c.invalidate([]string{"user:1"}) // the message overtakes the GET reply
	if c.store("user:1", []byte("old"), snap) {
		t.Error("stored a value read across its key's invalidation")
	}

	snap = c.snapshot("user:1")
	c.invalidate([]string{"user:2"}) // another key: usually another stripe
	if c.stripe("user:1") != c.stripe("user:2") && !c.store("user:1", []byte("v"), snap) {
		t.Error("an invalidation of another key refused the store")
	}

	snap = c.snapshot("user:3")
	c.setUp(false)
	c.setUp(true)
	if c.store("user:3", []byte("old"), snap) {
		t.Error("stored a value read across a subscription drop")
	}
	if c.len() != 0 {
		t.Errorf("drop did not clear L1: %d entries", c.len())
	}

	c.setUp(false)
	if c.store("user:4", []byte("v"), c.snapshot("user:4")) {
		t.Error("stored while the subscription is down")
	}
	if st.L1StoresRefused.Load() != 3 {
		t.Errorf("stores refused = %d, want 3", st.L1StoresRefused.Load())
	}
}

func TestL1InvalidateAndFlush(t *testing.T) {
	c, st, _ := newTestL1(100, time.Minute)
	for i := range 10 {
		k := fmt.Sprint("k", i)
		c.store(k, []byte(k), c.snapshot(k))
	}
	c.invalidate([]string{"k1", "k2", "absent"})
	if _, ok := c.get("k1"); ok {
		t.Error("k1 still cached")
	}
	if st.L1Invalidated.Load() != 2 || c.len() != 8 {
		t.Errorf("invalidated = %d, len = %d", st.L1Invalidated.Load(), c.len())
	}
	c.flush()
	if c.len() != 0 || st.L1Flushes.Load() != 1 || !c.active() {
		t.Errorf("after flush: len %d, flushes %d, active %v", c.len(), st.L1Flushes.Load(), c.active())
	}
}
