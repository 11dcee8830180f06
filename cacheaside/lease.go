package cacheaside

// LeaseKey returns the name of the lease key that guards the fill of key.
// The engine (cdcinvalidate with client.leases: true) deletes it together
// with key, so a fill that took its lease before the commit is refused.
//
// The whole key is the lease's hash tag, so in Redis Cluster the lease lives
// in the same slot as a key that has no hash tag of its own.
func LeaseKey(key string) string {
	return "lease:{" + key + "}"
}
