package cacheaside

import (
	"bytes"
	"hash/maphash"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// l1Stripes is the number of invalidation generations: a key's stripe is
// bumped whenever an invalidation names any key hashing to it.
const l1Stripes = 4096

// l1 is the optional in-process cache: golang-lru's LRU (the single-goroutine
// core, under this type's mutex) with a maximum age per entry, usable only
// while the invalidation subscription is up. It starts no goroutines
// (expired entries are dropped when met or pushed out; the package's
// expirable LRU would start one that cannot be stopped), so it needs no
// stopping.
//
// The two-connection race: a value read from Redis on one connection may
// arrive after the invalidation of that key arrived on the subscription's
// connection; stored then, it would stay stale until its age runs out. So a
// reader takes a snapshot (the cache epoch and the key's stripe generation)
// before it asks Redis, and store refuses the value if an invalidation of
// the key's stripe, or a drop of the subscription, happened since.
type l1 struct {
	ttl   time.Duration
	stats *Stats
	now   func() time.Time
	seed  maphash.Seed

	mu    sync.Mutex
	lru   *simplelru.LRU[string, *l1Entry]
	up    bool   // the subscription is confirmed: entries may be stored
	epoch uint64 // bumped by every flush and every change of up
	gens  [l1Stripes]uint64
}

type l1Entry struct {
	val     []byte
	expires time.Time
}

// l1Snap is what a reader remembers before it reads Redis.
type l1Snap struct {
	epoch uint64
	gen   uint64
}

func newL1(size int, ttl time.Duration, stats *Stats) *l1 {
	// NewLRU fails only for a size below 1, which Options validation rules out.
	lru, _ := simplelru.NewLRU[string, *l1Entry](max(size, 1), nil)
	return &l1{ttl: ttl, stats: stats, now: time.Now, seed: maphash.MakeSeed(), lru: lru}
}

func (c *l1) stripe(key string) int {
	return int(maphash.String(c.seed, key) % l1Stripes)
}

// get returns a copy of key's value if it is cached and young enough.
func (c *l1) get(key string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Get(key)
	if !ok {
		return nil, false
	}
	if !c.now().Before(e.expires) {
		c.lru.Remove(key)
		c.stats.L1Expired.Add(1)
		return nil, false
	}
	return bytes.Clone(e.val), true
}

// snapshot is taken before key is read from Redis.
func (c *l1) snapshot(key string) l1Snap {
	c.mu.Lock()
	defer c.mu.Unlock()
	return l1Snap{epoch: c.epoch, gen: c.gens[c.stripe(key)]}
}

// store caches a copy of val unless the subscription is down or key may
// have been invalidated since snap was taken. It reports whether it stored.
func (c *l1) store(key string, val []byte, snap l1Snap) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.up || c.epoch != snap.epoch || c.gens[c.stripe(key)] != snap.gen {
		c.stats.L1StoresRefused.Add(1)
		return false
	}
	if c.lru.Add(key, &l1Entry{val: bytes.Clone(val), expires: c.now().Add(c.ttl)}) {
		c.stats.L1Evictions.Add(1)
	}
	return true
}

// invalidate drops keys and bumps their stripes, so reads of them that are
// under way do not store what they read.
func (c *l1) invalidate(keys []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		c.gens[c.stripe(k)]++
		if c.lru.Remove(k) {
			c.stats.L1Invalidated.Add(1)
		}
	}
}

// setUp records that the subscription is confirmed (up) or lost (down).
// Either way everything cached so far is dropped and reads under way do not
// store: while down, messages may be missed; after a reconnect, messages
// sent before it were.
func (c *l1) setUp(up bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if up {
		c.up = true
		c.epoch++ // reads that began while down must not store
		c.lru.Purge()
		return
	}
	if !c.up {
		return // already down, and empty since it went down
	}
	c.up = false
	c.flushLocked()
}

// flush drops everything (an undecodable message may have named any key).
func (c *l1) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flushLocked()
}

func (c *l1) flushLocked() {
	c.epoch++
	c.lru.Purge()
	c.stats.L1Flushes.Add(1)
}

func (c *l1) active() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up
}

func (c *l1) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
