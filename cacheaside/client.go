package cacheaside

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/internal/retry"
)

// Defaults of Options.
const (
	DefaultTTL            = 10 * time.Minute
	DefaultTTLJitter      = 0.1
	DefaultLeaseTTL       = 5 * time.Second
	DefaultWaitInterval   = 10 * time.Millisecond
	DefaultMaxWait        = time.Second
	DefaultMaxValueBytes  = 1 << 20
	DefaultL1TTL          = 10 * time.Second
	DefaultHealthInterval = 5 * time.Second
)

// maxWaitSteps caps the growth of the pause between reads of a held lease
// at WaitInterval << maxWaitSteps.
const maxWaitSteps = 3

// Options configures a Client. A zero field takes the default its comment
// states.
type Options struct {
	// Prefix is put before every key given to Get, GetJSON and Delete. The
	// result is the Redis key, which must be exactly what the engine's rule
	// templates produce: with Prefix "app:" and Get(ctx, "user:1", ...),
	// the rule must render "app:user:1". Leases, L1 entries and
	// invalidation messages all use that full name. Default "".
	Prefix string
	// TTL is the longest time an entry lives in Redis. It stays the safety
	// net for writes the engine cannot see (unlogged tables, rows a value
	// depends on that no rule maps to the key, a Redis that lost the
	// engine's deletes). Default 10m.
	TTL time.Duration
	// TTLJitter shortens each entry's life by a random fraction of TTL, so
	// that entries filled together do not expire together: an entry lives
	// for a time drawn uniformly from [TTL×(1−TTLJitter), TTL], so TTL stays
	// an upper bound. Default 0.1; negative means no jitter; at most 0.9.
	TTLJitter float64
	// LeaseTTL is how long a lease lives. It must outlast a normal load: a
	// load that takes longer has its fill refused (the value is still
	// returned). Default 5s.
	LeaseTTL time.Duration
	// WaitInterval is the first pause of a reader that found another
	// reader's lease; each further pause doubles, up to 8×WaitInterval,
	// with ±25% jitter. Default 10ms.
	WaitInterval time.Duration
	// MaxWait bounds the total time a reader waits for other readers'
	// leases. After it the reader loads the value itself and returns it
	// without caching it. Default 1s.
	MaxWait time.Duration
	// MaxValueBytes is the largest value that is cached; larger values are
	// returned but neither written to Redis nor to L1. Default 1 MiB.
	MaxValueBytes int
	// L1 configures the optional in-process cache in front of Redis.
	L1 L1Options
	// StampKey is the engine's applied watermark key
	// ("cdcinvalidate:<slot>:lsn"). When set, every fill carries the
	// watermark read after its lease was taken and before its load (see
	// AppendStamp), so the engine's consistency verifier (its verify:
	// section) can prove a cached value fresh or stale instead of counting
	// it unverifiable. It costs one GET per miss. Reads unwrap stamped
	// values either way. Default "": no stamp.
	StampKey string
	// Logger receives Redis errors (at most one line a second), refused
	// fills (debug) and subscription changes. Default: no logging.
	Logger *zap.Logger
}

// L1Options configures the in-process cache. It is off unless Size is set.
type L1Options struct {
	// Size is the number of entries; 0 disables the L1.
	Size int
	// Channel is the engine's client.publish_channel; required with Size.
	// Every message drops the keys it names from this process's L1.
	Channel string
	// TTL is the longest time an entry lives in L1, whatever messages say.
	// Default 10s.
	TTL time.Duration
	// HealthInterval is how long the subscription may stay silent before a
	// PING is sent on it; without an answer within another HealthInterval
	// the subscription counts as dropped: L1 is cleared and a new
	// subscription is made. Default 5s.
	HealthInterval time.Duration
}

// Client is a cache-aside reader with leases, single-flight and an
// optional L1. It is safe for concurrent use. Close stops its L1
// subscriber; the redis client stays the caller's.
type Client struct {
	rdb     redis.UniversalClient
	opt     Options
	log     *zap.Logger
	flights group
	l1      *l1         // nil without L1
	sub     *subscriber // nil without L1
	closed  sync.Once

	lastErrLog atomic.Int64 // unix nanos of the last logged Redis error
	quietErrs  atomic.Int64 // Redis errors not logged since

	// Stats are the client's running totals.
	Stats Stats
}

// New returns a Client that caches through rdb. With L1 it starts one
// goroutine that holds the invalidation subscription until Close.
func New(rdb redis.UniversalClient, opt Options) (*Client, error) {
	if err := opt.fill(); err != nil {
		return nil, err
	}
	if rdb == nil {
		return nil, errors.New("cacheaside: no redis client")
	}
	c := &Client{rdb: rdb, opt: opt, log: opt.Logger}
	if opt.L1.Size > 0 {
		c.l1 = newL1(opt.L1.Size, opt.L1.TTL, &c.Stats)
		c.sub = startSubscriber(rdb, opt.L1.Channel, opt.L1.HealthInterval, c.l1, &c.Stats, c.log)
	}
	return c, nil
}

// fill validates the options and fills in the defaults.
func (o *Options) fill() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	positive := func(name string, d *time.Duration, def time.Duration) {
		switch {
		case *d < 0:
			bad("%s must not be negative (got %s)", name, *d)
		case *d == 0:
			*d = def
		}
	}
	positive("TTL", &o.TTL, DefaultTTL)
	positive("LeaseTTL", &o.LeaseTTL, DefaultLeaseTTL)
	positive("WaitInterval", &o.WaitInterval, DefaultWaitInterval)
	positive("MaxWait", &o.MaxWait, DefaultMaxWait)
	switch {
	case o.TTLJitter == 0:
		o.TTLJitter = DefaultTTLJitter
	case o.TTLJitter < 0:
		o.TTLJitter = 0
	case o.TTLJitter > 0.9:
		bad("TTLJitter must be at most 0.9 (got %g)", o.TTLJitter)
	}
	if o.TTL > 0 && o.TTL < time.Millisecond {
		bad("TTL must be at least 1ms (got %s)", o.TTL)
	}
	if o.LeaseTTL > 0 && o.LeaseTTL < time.Millisecond {
		bad("LeaseTTL must be at least 1ms (got %s)", o.LeaseTTL)
	}
	switch {
	case o.MaxValueBytes < 0:
		bad("MaxValueBytes must not be negative (got %d)", o.MaxValueBytes)
	case o.MaxValueBytes == 0:
		o.MaxValueBytes = DefaultMaxValueBytes
	}
	if o.L1.Size < 0 {
		bad("L1.Size must not be negative (got %d)", o.L1.Size)
	}
	if o.L1.Size > 0 {
		if o.L1.Channel == "" {
			bad("L1.Channel is required with L1.Size: without the engine's invalidation messages (client.publish_channel) an in-process cache would serve stale values until its TTL")
		}
		positive("L1.TTL", &o.L1.TTL, DefaultL1TTL)
		positive("L1.HealthInterval", &o.L1.HealthInterval, DefaultHealthInterval)
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cacheaside: invalid options: %w", err)
	}
	return nil
}

// Get returns the value of key: from L1, from Redis, or from load, which
// must read the primary database (not a lagging replica) and return the
// value to cache. See the package documentation for what happens when.
//
// Errors are the loader's (wrapped, errors.Is works) or ctx's; a Redis
// failure never fails a Get, whose value then comes from load. The returned
// slice is the caller's own.
func (c *Client) Get(ctx context.Context, key string, load func(ctx context.Context) ([]byte, error)) ([]byte, error) {
	if load == nil {
		return nil, errors.New("cacheaside: Get needs a loader")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	full := c.opt.Prefix + key
	if c.l1 != nil {
		if v, ok := c.l1.get(full); ok {
			c.Stats.L1Hits.Add(1)
			return v, nil
		}
	}
	counted := false
	for {
		r := c.flights.do(ctx, full, func() ([]byte, error) { return c.fetch(ctx, full, load) })
		if r.shared && !counted {
			c.Stats.Coalesced.Add(1)
			counted = true
		}
		if r.retry {
			continue // the reader we waited for gave up; try ourselves
		}
		return r.val, r.err
	}
}

// fetch reads full from Redis, taking the lease on a miss, waiting (within
// MaxWait) while another reader holds it, and loading and filling under the
// lease. It runs once per key at a time in this process.
func (c *Client) fetch(ctx context.Context, full string, load func(context.Context) ([]byte, error)) ([]byte, error) {
	lease := LeaseKey(full)
	var snap l1Snap
	if c.l1 != nil {
		snap = c.l1.snapshot(full)
	}
	start := time.Now()
	pause := c.opt.WaitInterval
	for step := 0; ; step++ {
		token := newToken()
		kind, val, err := c.getOrLease(ctx, full, lease, token)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, ctxErr
			}
			c.redisError("read", full, err)
			return c.loadOnly(ctx, full, load)
		}
		switch kind {
		case replyHit:
			c.Stats.Hits.Add(1)
			_, val, _ = ParseStamp(val)
			c.storeL1(full, val, snap)
			return val, nil
		case replyLeased:
			c.Stats.Misses.Add(1)
			return c.loadAndFill(ctx, full, lease, token, load, snap)
		case replyFenced:
			// Just invalidated: the commit may not be visible to this
			// reader's snapshot yet. Wait as for a held lease: when the
			// fence lapses, one reader takes the lease and loads.
			c.Stats.Fenced.Add(1)
		}
		// replyHeld: another reader is loading. Wait for its fill rather
		// than going to the database too.
		d := jitterPause(pause)
		if time.Since(start)+d > c.opt.MaxWait {
			c.Stats.WaitsExhausted.Add(1)
			return c.loadOnly(ctx, full, load)
		}
		c.Stats.LeaseWaits.Add(1)
		if err := retry.Sleep(ctx, d); err != nil {
			return nil, err
		}
		if step < maxWaitSteps {
			pause *= 2
		}
	}
}

// getOrLease runs getOrLeaseScript: a hit with its value, our lease, or
// another's lease.
func (c *Client) getOrLease(ctx context.Context, full, lease, token string) (int64, []byte, error) {
	res, err := getOrLeaseScript.Run(ctx, c.rdb, []string{full, lease}, token, c.opt.LeaseTTL.Milliseconds(), LeaseFence).Slice()
	if err != nil {
		return 0, nil, err
	}
	if len(res) == 0 {
		return 0, nil, fmt.Errorf("unexpected reply %v", res)
	}
	kind, _ := res[0].(int64)
	switch kind {
	case replyHit:
		if len(res) != 2 {
			return 0, nil, fmt.Errorf("unexpected reply %v", res)
		}
		s, ok := res[1].(string)
		if !ok {
			return 0, nil, fmt.Errorf("unexpected reply %v", res)
		}
		return replyHit, []byte(s), nil
	case replyLeased, replyHeld, replyFenced:
		return kind, nil, nil
	}
	return 0, nil, fmt.Errorf("unexpected reply %v", res)
}

// loadAndFill loads under our lease and fills Redis only if the lease is
// still ours. A failed load releases the lease, so that waiting readers can
// try at once instead of waiting for it to expire.
func (c *Client) loadAndFill(ctx context.Context, full, lease, token string, load func(context.Context) ([]byte, error), snap l1Snap) ([]byte, error) {
	returned := false
	defer func() {
		if !returned { // the loader panicked: free the lease; the panic goes on
			c.release(ctx, full, lease, token)
		}
	}()
	stamp, stamped := c.readStamp(ctx)
	val, err := c.callLoad(ctx, full, load)
	if err != nil {
		c.release(ctx, full, lease, token)
		returned = true
		return nil, err
	}
	if len(val) > c.opt.MaxValueBytes {
		c.Stats.FillsSkipped.Add(1)
		c.release(ctx, full, lease, token)
		returned = true
		return val, nil
	}
	returned = true
	stored := val
	if stamped {
		// Under our lease, taken before the watermark was read.
		stored = AppendLeaseStamp(make([]byte, 0, stampLen+len(val)), stamp, val)
	}
	ok, err := fillScript.Run(ctx, c.rdb, []string{full, lease}, token, stored, c.ttl().Milliseconds()).Int()
	switch {
	case err != nil:
		if ctx.Err() != nil { // cancelled, not a Redis failure: free the lease for others
			c.release(ctx, full, lease, token)
		} else {
			c.redisError("fill", full, err)
		}
	case ok == 1:
		c.Stats.Fills.Add(1)
		c.storeL1(full, val, snap)
	default:
		c.Stats.FillsRefused.Add(1)
		c.log.Debug("fill refused: the key was invalidated, or its lease expired, while its value loaded", zap.String("key", full))
	}
	return val, nil
}

// readStamp reads the engine's watermark for a fill's stamp. Without
// StampKey, or when Redis fails, the fill goes unstamped (the verifier then
// counts it unverifiable, never consistent); no watermark yet stamps 0.
func (c *Client) readStamp(ctx context.Context) (uint64, bool) {
	if c.opt.StampKey == "" {
		return 0, false
	}
	v, err := c.rdb.Get(ctx, c.opt.StampKey).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return 0, true
	case err != nil:
		c.redisError("read the watermark for a stamp", c.opt.StampKey, err)
		return 0, false
	}
	lsn, ok := parseLSN(v)
	if !ok {
		c.redisError("read the watermark for a stamp", c.opt.StampKey, fmt.Errorf("not an LSN: %q", v))
		return 0, false
	}
	return lsn, true
}

// parseLSN reads an LSN written as "X/Y" (hexadecimal halves).
func parseLSN(s string) (uint64, bool) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, false
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return h<<32 | l, true
}

// loadOnly loads without a lease and does not cache the value: it may have
// been read before a commit whose invalidation this reader cannot see.
func (c *Client) loadOnly(ctx context.Context, full string, load func(context.Context) ([]byte, error)) ([]byte, error) {
	return c.callLoad(ctx, full, load)
}

func (c *Client) callLoad(ctx context.Context, full string, load func(context.Context) ([]byte, error)) ([]byte, error) {
	c.Stats.Loads.Add(1)
	val, err := load(ctx)
	if err != nil {
		c.Stats.LoadErrors.Add(1)
		return nil, fmt.Errorf("cacheaside: load %q: %w", full, err)
	}
	return val, nil
}

// release deletes our lease. It runs even when ctx has ended (the load
// failed because of it, most likely), bounded by LeaseTTL, after which the
// lease would be gone anyway.
func (c *Client) release(ctx context.Context, full, lease, token string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opt.LeaseTTL)
	defer cancel()
	if err := releaseScript.Run(rctx, c.rdb, []string{lease}, token).Err(); err != nil {
		c.redisError("release lease", full, err)
	}
}

func (c *Client) storeL1(full string, val []byte, snap l1Snap) {
	if c.l1 != nil && len(val) <= c.opt.MaxValueBytes {
		c.l1.store(full, val, snap)
	}
}

// Delete removes keys from Redis with their leases (so fills under way are
// refused, as after the engine's invalidation) and from this process's L1.
// Other processes' L1 entries go only with the engine's messages or their
// L1 TTL. Applications rarely need it: the engine deletes after every
// commit; Delete is for read-your-writes in the writing process.
func (c *Client) Delete(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = c.opt.Prefix + k
	}
	if c.l1 != nil {
		c.l1.invalidate(full)
	}
	// Per key, the lease goes before the key, each with its own command so
	// that Cluster never sees two slots in one command: a fill between the
	// two is refused, a fill before both is deleted with the key.
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range full {
			p.Del(ctx, LeaseKey(k))
			p.Del(ctx, k)
		}
		return nil
	})
	if err != nil {
		c.Stats.RedisErrors.Add(1)
		return fmt.Errorf("cacheaside: delete %d keys: %w", len(full), err)
	}
	if c.l1 != nil {
		c.l1.invalidate(full) // and reads that stored between the two
	}
	return nil
}

// L1Active reports whether the in-process cache is in use: L1 is
// configured and its invalidation subscription is confirmed. While it is
// not, reads go to Redis.
func (c *Client) L1Active() bool {
	return c.l1 != nil && c.l1.active()
}

// Close stops the L1 subscriber and waits for it, and clears the L1; Get
// keeps working without it. It does not close the redis client. Close is
// idempotent and returns nil.
func (c *Client) Close() error {
	c.closed.Do(func() {
		if c.sub != nil {
			c.sub.stop()
		}
	})
	return nil
}

// newToken returns a lease token: 128 random bits from crypto/rand, as 26
// base32 characters. Tokens only need to differ between readers; being
// unguessable also keeps other code from filling under a lease by accident.
func newToken() string { return rand.Text() }

// ttl returns TTL shortened by a random part of TTL×TTLJitter, at least 1ms.
func (c *Client) ttl() time.Duration {
	return jitterTTL(c.opt.TTL, c.opt.TTLJitter)
}

func jitterTTL(ttl time.Duration, jitter float64) time.Duration {
	span := time.Duration(float64(ttl) * jitter)
	if span > 0 {
		ttl -= time.Duration(mrand.Int64N(int64(span) + 1))
	}
	return max(ttl, time.Millisecond)
}

// jitterPause returns d ±25%.
func jitterPause(d time.Duration) time.Duration {
	q := int64(d / 4)
	if q <= 0 {
		return d
	}
	return d - time.Duration(q) + time.Duration(mrand.Int64N(2*q+1))
}

// redisError counts err and logs it, at most once a second.
func (c *Client) redisError(op, full string, err error) {
	c.Stats.RedisErrors.Add(1)
	reloadSlots(c.rdb)
	now := time.Now().UnixNano()
	last := c.lastErrLog.Load()
	if now-last < int64(time.Second) || !c.lastErrLog.CompareAndSwap(last, now) {
		c.quietErrs.Add(1)
		return
	}
	c.log.Warn("redis failed; the value comes from the loader and is not cached",
		zap.String("op", op), zap.String("key", full), zap.Error(err),
		zap.Int64("errors_not_logged_since_last", c.quietErrs.Swap(0)))
}

// reloadSlots makes a cluster client read the slot map again (at most
// every 200 ms, in the background): go-redis does so by itself on MOVED,
// but after a master died only once a minute, so reads and the
// subscription would keep going to the dead node.
func reloadSlots(rdb redis.UniversalClient) {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		cc.ReloadState(context.Background())
	}
}
