package cacheaside

// LeaseKey returns the name of the lease key that guards the fill of key,
// where key is the full Redis key name (with any Options.Prefix already in
// it). It is the one definition shared by the library and the engine: the
// engine (cdcinvalidate with client.leases: true) replaces LeaseKey(k) with
// LeaseFence for a moment (client.lease_fence) with every key k it
// invalidates, or deletes it (lease_fence: 0), so a fill that took its
// lease before the commit finds its token gone and is refused.
//
// The whole key is the lease's hash tag, so in Redis Cluster the lease lives
// in the same slot as a key that has no braces of its own ("user:42",
// "user:42:orders"), which the library's scripts need (they touch both keys
// atomically). A key with a hash tag of its own ("user:{42}:orders") hashes
// differently from its lease; under Cluster the scripts then fail with
// CROSSSLOT, the library counts a Redis error and serves such keys from the
// loader without caching them. Outside Cluster, any key works.
func LeaseKey(key string) string {
	return "lease:{" + key + "}"
}

// LeaseFence is the value the engine writes into a key's lease, for
// client.lease_fence (50 ms by default), when it invalidates the key. While
// it is there no reader takes the lease: readers that miss wait as for a
// held lease, and when it lapses one of them loads and fills. PostgreSQL
// writes a commit to the WAL (where the engine sees it) a moment before
// other sessions see it, so a reader that took the lease right after the
// invalidation could still load the old row. A fill under an earlier lease
// finds its token gone and is refused.
const LeaseFence = "cdcinvalidate:fence"
