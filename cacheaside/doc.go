// Package cacheaside is the optional client library of cdcinvalidate: the
// read side of cache-aside for applications whose cache the engine
// invalidates, closing the two failures that deleting after commit cannot
// close by itself.
//
//   - Stale set. A reader misses, reads the old row, the writer commits, the
//     engine deletes the key, and then the reader writes the old row into
//     the cache, where it stays until its TTL.
//   - Stampede. A hot key is deleted and every reader goes to the database
//     at once.
//
// Both are closed with leases, as "Scaling Memcache at Facebook" (NSDI 2013,
// section 3.2.1) describes, plus single-flight inside each process:
//
//	c, err := cacheaside.New(rdb, cacheaside.Options{TTL: 10 * time.Minute})
//	v, err := c.Get(ctx, "user:42", func(ctx context.Context) ([]byte, error) {
//		return loadUserJSON(ctx, db, 42) // reads the primary
//	})
//
// # How a read goes
//
//  1. L1 (if configured): a hit is returned at once.
//  2. Single-flight: concurrent Gets of one key in one process share one
//     read; each waits with its own context.
//  3. One script in Redis reads the key; on a miss it takes the key's lease
//     (SET LeaseKey(key) token NX PX LeaseTTL, the token 128 random bits).
//  4. The lease holder calls the loader and fills with one script that
//     writes the value (SET PX TTL, minus jitter) and deletes the lease only
//     while the lease still holds its token.
//  5. A reader that finds the lease held pauses (WaitInterval, doubling,
//     jittered) and reads again, until MaxWait has passed.
//
// The engine, with client.leases: true, deletes LeaseKey(k) together with
// every key k it invalidates. A fill whose load began before a commit thus
// finds its lease gone (or another reader's) and is refused.
//
// # Semantics
//
// The loader fails: its error is returned (wrapped; errors.Is works) to
// the reader and to the readers sharing its single-flight, nothing is
// cached, and the lease is released at once (only if it still holds our
// token), so that readers in other processes take it and try without
// waiting for it to expire. Errors are never cached.
//
// The load outlasts the lease (LeaseTTL): the lease expired, or another
// reader took it after it expired, so the fill is refused (Stats.FillsRefused)
// and the value is returned uncached. A lease cannot be extended: a slow
// load must not keep out the fills that follow a commit.
//
// The wait bound is exhausted (another reader held the lease for MaxWait):
// the reader loads without a lease and returns the value without caching
// it. Filling without a lease could write a value read before a commit
// whose invalidation already happened; the next reader that finds no lease
// fills under a fresh one. So a database slower than MaxWait costs one load
// per waiting process, never a stale entry.
//
// A fill is refused: the value is still returned. It was current when read;
// the commit that invalidated the key came after.
//
// Redis fails (down, timeout, an error reply, CROSSSLOT): the read is
// served by the loader without caching, counted in Stats.RedisErrors and
// logged (at most once a second). A Redis error never fails a Get; only the
// loader's error or the context's does. A failed fill or release is
// counted the same way (a lease that could not be released expires).
//
// A context ends: Get returns ctx.Err(). If it was the reader running the
// single-flight, the readers that shared it run the read themselves rather
// than report someone else's cancellation. The release of a lease after a
// failed load is bounded by LeaseTTL, not by the context, so that other
// readers need not wait for the lease to expire.
//
// Values larger than MaxValueBytes are returned and not cached. A loader
// that panics releases its lease; the panic goes on in its reader, and the
// readers sharing its single-flight get an error.
//
// Not found: the library caches what the loader returns and never caches
// errors. To cache absence, have the loader return a value that says so
// (GetJSON caches a nil *T as null); the engine deletes the key when the
// row appears, as it does when the row changes.
//
// Key prefix: Options.Prefix + key is the Redis key, the L1 key, the name
// in invalidation messages, and the argument of LeaseKey. It must be
// exactly what the engine's rule templates produce.
//
// # The guarantee
//
// With the engine's client.leases on, once the writers stop and the engine
// has applied the last commit, no cache entry filled through this library
// holds a value older than the database. This holds provided that:
//
//   - every fill of those keys goes through this library (another writer of
//     the key, such as hand-written cache-aside, bypasses the lease);
//   - the loader reads the primary, after Get calls it (a lagging replica
//     can return a row older than a commit the engine already applied);
//   - the engine's rules map every row the value is made from to the key;
//   - the engine deletes a key's lease no later than the key itself (in the
//     same command, or before it): a fill that lands between the deletion of
//     the key and that of its lease would be accepted.
//
// The same holds for L1 entries once the engine's message for the last
// commit has reached the subscribed process, or its subscription dropped:
// a dropped subscription (or a health check without an answer) clears the
// L1 and keeps it off until a new subscription is confirmed, because
// messages may have been missed; a TRUNCATE's message (patterns, not keys)
// clears it as well; a value read from Redis is not put into L1
// if an invalidation of its key, or a drop, arrived while it was read (the
// two-connection race). No L1 entry outlives L1Options.TTL.
//
// The TTL stays the safety net for what the engine cannot see: writes to
// unlogged tables, tables or columns no rule maps to the key, DDL, keys
// filled by other code, and a Redis that lost the engine's deletes (a
// failover to a replica that had not received them).
//
// # Redis Cluster
//
// The scripts touch a key and its lease together, so both must live in one
// slot. LeaseKey names the lease with the key's hash tag (or, for keys
// whose tag cannot be copied, such as "{}x", a tag of the same slot), so
// that holds for every key; see LeaseKey. The engine's invalidation
// messages use PUBLISH, which a cluster delivers to subscribers on every
// node.
package cacheaside
