// Package writebehind absorbs hot writes (counters, last-write-wins
// fields) in Redis and carries them to PostgreSQL exactly once: write-behind
// without its usual costs, lost writes and hand-written recovery.
//
//	ms := []writebehind.Mapping{
//		{Key: "views:post:{id}", Table: "post_stats", Column: "views", Mode: writebehind.Add},
//	}
//	w, _ := writebehind.NewWriter(rdb, ms, writebehind.WriterOptions{})
//	n, err := w.Incr(ctx, "views:post:42", 1) // returns once Redis has it
//
//	f, _ := writebehind.NewFlusher(rdb, ms, writebehind.FlusherOptions{DSN: dsn})
//	go f.Run(ctx) // applies the writes to post_stats.views
//
// # How a write goes
//
// Incr, Set and Apply run one Lua script that changes the keys and appends
// one entry (the keys and their deltas or values, in order) to a Redis
// stream, all or nothing. At the stream's length cap (MaxLen) the script
// changes nothing and the call returns ErrBacklogFull, or waits for room
// (FullBlock, bounded by BlockMax). With WaitReplicas the call also waits
// for Redis WAIT.
//
// Concurrent Incr and Set calls are combined: they queue, and up to
// MaxInFlight of the callers themselves (no background goroutine) send
// what is queued as one script call of up to MaxBatch operations. Each
// call returns once Redis executed its own operation, with its own result
// or error; a call whose context ends while it is still queued is
// withdrawn and writes nothing. NoCombine turns this off.
//
// Every script call carries a token; the script records it (a key next to
// the stream, for TokenTTL) with the entry it appended, and a call with a
// known token changes nothing. So a call that go-redis retries after its
// reply was lost (MaxRetries) is executed once, and ApplyOnce lets the
// caller retry with its own id.
//
// # How a flush goes
//
// The flusher reads the stream in a consumer group and gathers entries into
// a window, closed by time (Window) or size (MaxEntries entries, MaxRows
// distinct keys, MaxBytes of keys and values). It folds the window into one upsert per
// row (the sum of the deltas, the last value of a field) and commits them
// in one transaction with the offsets row (table writebehind_offsets: the
// last applied entry ID of the stream and group). Only after the commit
// does it acknowledge (XACK) the entries and trim them from the stream.
// Entries at or below the committed ID are acknowledged, never applied
// again. After a crash anywhere in between, the entries are still pending
// in the group; the next session claims them (XAUTOCLAIM) and applies
// exactly what the offsets row does not cover.
//
// This needs entries to be applied in ID order without gaps. Before each
// commit the flusher checks that the group's pending list holds exactly the
// entries it read (a lost XREADGROUP reply would leave some delivered but
// unseen) and starts over from the pending entries if not. And one flusher
// applies a stream at a time: each session takes a session-level
// advisory lock of PostgreSQL on the connection that runs the windows. A
// flusher whose connection is lost loses the lock and its transaction
// together; others stand by and take over (StandbyPoll).
//
// # Where it runs: in the application, not in the engine
//
// The flusher is a library (Run) rather than a mode of the cdcinvalidate
// binary, because:
//
//   - it writes the application's tables: it needs INSERT and UPDATE on
//     them, which the engine's role (LOGIN REPLICATION, read-only) must
//     not have;
//   - the mappings are Go values the writers and the flusher must share;
//     in the application they are one variable, not two files to keep in
//     step;
//   - it scales and fails with the application: every instance may run
//     Run, the advisory lock makes one apply and the others stand by.
//
// # The guarantee
//
// Once a write has returned nil, and provided Redis does not lose it, its
// delta (or value) is applied to its row exactly once: never lost, never
// twice, through kill -9 of the flusher at any point, PostgreSQL restarts
// and outages (entries wait in the stream, bounded by MaxLen), and Redis
// restarts. "Redis does not lose it" depends on Redis persistence:
// appendonly yes with appendfsync always (or WaitReplicas with replicas
// that can take over) keeps every acknowledged write; appendfsync everysec
// can lose about the last second of acknowledged writes on a crash of the
// Redis host, and no persistence loses everything not yet flushed. If
// Redis comes back behind the database (its stream's last ID below the
// last applied), the flusher says so and moves the stream's ID up, so new
// writes are not mistaken for applied ones.
//
// A window PostgreSQL refuses for its data (a value the column cannot
// take, a constraint) stops Run with the error: nothing is skipped, the
// window stays pending, and the writers eventually get ErrBacklogFull.
//
// A write whose reply was lost and that go-redis (MaxRetries) or the
// caller (ApplyOnce, same id) retries within TokenTTL is applied once.
//
// # The value in Redis
//
// The key in Redis is the live value, ahead of the database by what is
// not yet flushed; read it there. It starts where Redis has it: Incr on an
// absent key starts from 0 while the flusher adds to the row's value, so
// seed keys of existing rows (SET key value NX, from the row) before their
// first write. The database value is right either way; only reads from
// Redis depend on the seed. The keys must not expire nor be evicted
// (maxmemory-policy noeviction, or volatile-* with no TTL on them).
//
// # With the invalidation engine
//
// The flusher's commits reach the engine through the WAL like any
// writer's, so the read-model keys of the same rows (say "post:{id}:row",
// the row as JSON) are invalidated as usual. The write-behind keys must not
// be managed by any rule: deleting one would drop its unflushed increments
// from what readers see. That includes patterns: a rule key "post:{id}"
// has the flush pattern "post:*", which matches "post:42:views".
// CheckGlobs refuses mappings that any rule's pattern can match.
//
// # Redis Cluster
//
// Not supported yet. One script touches the stream and the written keys,
// so all of them would have to hash to one slot through one {hash tag},
// and key templates cannot hold a literal brace; Redis would refuse the
// script with CROSSSLOT. Use a standalone Redis (with replicas and
// Sentinel for failover, and WaitReplicas).
package writebehind
