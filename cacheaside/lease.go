package cacheaside

// LeaseKey returns the name of the lease key that guards the fill of key,
// where key is the full Redis key name (with any Options.Prefix already in
// it). It is the one definition shared by the library and the engine: the
// engine (cdcinvalidate with client.leases: true) deletes LeaseKey(k) with
// every key k it invalidates, so a fill that took its lease before the
// commit finds the lease gone and is refused.
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
