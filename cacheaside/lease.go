package cacheaside

import (
	"strings"

	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
)

// LeaseKey returns the name of the lease key that guards the fill of key,
// where key is the full Redis key name (with any Options.Prefix already in
// it). It is the one definition shared by the library and the engine: the
// engine (cdcinvalidate with client.leases: true) replaces LeaseKey(k) with
// LeaseFence for a moment (client.lease_fence) with every key k it
// invalidates, or deletes it (lease_fence: 0), so a fill that took its
// lease before the commit finds its token gone and is refused.
//
// The lease always lives in the key's Redis Cluster hash slot, which the
// library's scripts need (they touch both keys atomically):
//   - a key without '}' (no braces, or an unclosed '{'): "lease:{KEY}",
//     whose hash tag is the whole key ("user:42" -> "lease:{user:42}");
//   - any other key (its own hash tag "user:{42}:orders", an empty "{}",
//     a '}' before any '{', the empty key): "lease:{TAG}:KEY", where TAG is
//     the key's own hash tag, or a short [0-9a-z] string of the key's slot
//     ("user:{42}:orders" -> "lease:{42}:user:{42}:orders").
//
// The two forms never name the same lease for two keys: in the first the
// only '}' ends the name, in the second one follows it.
func LeaseKey(key string) string {
	if key != "" && !strings.Contains(key, "}") {
		return "lease:{" + key + "}"
	}
	return "lease:{" + keyslot.Tag(key) + "}:" + key
}

// LeasePatterns returns SCAN patterns that together match the leases of
// every key pattern matches (and possibly a few more leases, which is
// harmless: deleting a lease only refuses a fill).
func LeasePatterns(pattern string) []string {
	return []string{"lease:{" + pattern + "}", "lease:{*}:" + pattern}
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
