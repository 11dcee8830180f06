package cacheaside

import "sync/atomic"

// Stats are running totals of a Client, safe to read at any time. A Get
// that returns a value is normally counted once in L1Hits, Hits, Misses (it
// took the lease and loaded), WaitsExhausted (it waited MaxWait and loaded
// without caching), Coalesced (it shared another Get's read in this
// process), or RedisErrors (Redis failed and it loaded without caching);
// the other counters say more about those paths.
type Stats struct {
	// Hits are reads served by Redis.
	Hits atomic.Uint64
	// Misses are reads that found no entry and took the lease.
	Misses atomic.Uint64
	// Loads are calls of a loader (including failed ones).
	Loads atomic.Uint64
	// LoadErrors are loader calls that returned an error.
	LoadErrors atomic.Uint64
	// Coalesced are reads that shared the result of a concurrent read of
	// the same key in this process (single-flight) instead of their own.
	Coalesced atomic.Uint64
	// LeaseWaits are pauses of a reader that found the lease held.
	LeaseWaits atomic.Uint64
	// WaitsExhausted are reads that waited MaxWait for a held lease and
	// then loaded without caching the value.
	WaitsExhausted atomic.Uint64
	// Fenced are pauses of readers that missed while the engine's fence
	// was on the lease (just after an invalidation); each also counts in
	// LeaseWaits.
	Fenced atomic.Uint64
	// Fills are values written to Redis under their lease.
	Fills atomic.Uint64
	// FillsRefused are fills whose lease was gone: the key was invalidated
	// while the value loaded, or the lease expired or was taken over.
	FillsRefused atomic.Uint64
	// FillsSkipped are loaded values not cached because they exceeded
	// MaxValueBytes.
	FillsSkipped atomic.Uint64
	// RedisErrors are failed Redis commands (the read then fell back to
	// the loader, or a fill or release was lost; nothing failed the read).
	RedisErrors atomic.Uint64
	// DecodeErrors are cached entries GetJSON could not decode; they were
	// deleted and the value loaded instead.
	DecodeErrors atomic.Uint64

	// L1Hits are reads served by the in-process cache.
	L1Hits atomic.Uint64
	// L1Evictions are L1 entries dropped to make room (least recently used).
	L1Evictions atomic.Uint64
	// L1Expired are L1 entries dropped because they reached L1Options.TTL.
	L1Expired atomic.Uint64
	// L1Invalidated are L1 entries dropped by an invalidation message (or
	// by Delete).
	L1Invalidated atomic.Uint64
	// L1StoresRefused are values not put into L1 because an invalidation of
	// the key (or a subscription drop) happened while they were read.
	L1StoresRefused atomic.Uint64
	// L1Flushes are clears of the whole L1: the subscription dropped (or
	// could not be established), or a message could not be decoded.
	L1Flushes atomic.Uint64
	// SubscriptionDrops are ends of the invalidation subscription other
	// than Close (connection errors, missed health checks).
	SubscriptionDrops atomic.Uint64
}

// StatsSnapshot is a plain copy of Stats, for logging and comparison.
type StatsSnapshot struct {
	Hits, Misses, Loads, LoadErrors, Coalesced, LeaseWaits, WaitsExhausted    uint64
	Fenced                                                                    uint64
	Fills, FillsRefused, FillsSkipped, RedisErrors, DecodeErrors              uint64
	L1Hits, L1Evictions, L1Expired, L1Invalidated, L1StoresRefused, L1Flushes uint64
	SubscriptionDrops                                                         uint64
}

// Snapshot returns the current totals. Counters are read one by one, so a
// snapshot taken during reads is not one instant.
func (s *Stats) Snapshot() StatsSnapshot {
	return StatsSnapshot{
		Hits: s.Hits.Load(), Misses: s.Misses.Load(), Loads: s.Loads.Load(), LoadErrors: s.LoadErrors.Load(),
		Coalesced: s.Coalesced.Load(), LeaseWaits: s.LeaseWaits.Load(), WaitsExhausted: s.WaitsExhausted.Load(), Fenced: s.Fenced.Load(),
		Fills: s.Fills.Load(), FillsRefused: s.FillsRefused.Load(), FillsSkipped: s.FillsSkipped.Load(),
		RedisErrors: s.RedisErrors.Load(), DecodeErrors: s.DecodeErrors.Load(),
		L1Hits: s.L1Hits.Load(), L1Evictions: s.L1Evictions.Load(), L1Expired: s.L1Expired.Load(),
		L1Invalidated: s.L1Invalidated.Load(), L1StoresRefused: s.L1StoresRefused.Load(), L1Flushes: s.L1Flushes.Load(),
		SubscriptionDrops: s.SubscriptionDrops.Load(),
	}
}
