// Package bench is `cdcinvalidate bench`: it measures the engine against
// the ceiling of any logical replication consumer, the walsender, which
// decodes the WAL of one slot on one core. pg_recvlogical reading the same
// slot into /dev/null shows how fast that is; the engine should keep up
// with it while it also maps rows to keys and waits for Redis.
//
// The bench starts a throwaway PostgreSQL and Redis (internal/harness, as
// the tests do) or uses given ones; then everything it creates is named
// cdcbench_* (table cdcbench_items, publication cdcbench_pub, slots
// cdcbench_engine and cdcbench_recv) and dropped at the end, also after an
// error or an interrupt. The bench table has ten columns of usual types
// (bigint id and n, text, varchar, numeric(10,2), integer, boolean,
// timestamptz, jsonb NULL on every tenth row, uuid), so that a refreshed
// row is a realistic one; the workloads change n. The rule is
// cdcbench_items -> item:{id} unless a variant (below) says otherwise. The
// engine runs as a child process (this executable, or --engine, with
// run --config FILE; metrics off, log level warn), so what is measured is
// the real binary with its start-up and shutdown.
//
// # Catch-up throughput
//
// For each workload, --rows single-row UPDATEs of the bench table, either
// --batch rows per transaction or one row per transaction (written by a
// DO block that commits in a loop, with synchronous_commit off), two
// slots (plugin pgoutput) are created at the same point before the
// workload; the end is pg_current_wal_lsn() after it, once the WAL writer
// flushed it. Autovacuum is off for the bench table; it is vacuumed
// before each workload and phase instead, so that no vacuum competes with
// a measurement. Then, one after the other over the same WAL range:
//
//   - the engine, with Redis holding the keys item:1..item:ROWS (so the
//     deletes do real work), from its start until the slot's
//     confirmed_flush_lsn >= end (polled every 10 ms); then SIGTERM, and
//     the exit status must be 0. "Done" is also measured as Redis shows
//     it: every 10 ms, in its own goroutine, the bench reads the Redis
//     state that the workload's last changes alter (EXISTS of the last
//     row's last key for deletes, GET of its refreshed key and of its
//     version key, XLEN of the stream, GET of the generation key; for
//     publish, the subscriber's time of the last message), and "applied"
//     is from the engine's start until the last change of that state.
//     The trail of the confirmation is confirmed/applied - 1 (target
//     <= 20%). The probe's commands are subtracted from the Redis
//     commands of the run;
//   - pg_recvlogical -d DSN --slot S --start --endpos END -f /dev/null
//     --no-loop with the pgoutput options the engine uses
//     (replication/stream.go: proto_version 2, messages and streaming on
//     PostgreSQL 14+, else proto_version 1), from its start to its exit.
//
// Each measurement runs --repeat times with fresh slots and a fresh
// workload; the report quotes the medians of the times and the median of
// the runs' engine/pg_recvlogical ratios (each run's two consumers read
// the same WAL moments apart, so the ratio of a run is less disturbed by
// the machine's load than either time). Also per run: the time until the
// slot was active (start-up), the CPU time of the engine and of
// pg_recvlogical (user+system from their exit status), the engine's peak
// RSS, the Redis commands and Redis CPU during the engine's run, and, with
// throwaway servers, the CPU time of the walsender serving each consumer
// (/proc/PID/stat of the slot's active_pid). Per 100,000 changes these
// add up to the CPU cost of each path (walsender + engine + Redis against
// walsender + pg_recvlogical): when the machine's cores are all busy, the
// wall times follow those sums rather than the walsender alone.
// Target: the engine within 0.9x of pg_recvlogical for 1,000-row
// transactions and 0.6x for single-row ones (issue 15).
//
// # Variants: actions, fan-out, many rules, the verifier
//
// Each variant runs both workloads (batched and single-row) exactly as
// above, and is reported with its ratio to pg_recvlogical and its ratio
// to the reference, the delete rule of the same workload in the same run
// (ratio of the median engine times; the reference always runs first):
//
//   - --actions version,refresh,publish,stream,generation,all: one rule
//     on the bench table with that action (keys item:{id}; publish on
//     channel cdcbench:events, received during the run by a subscriber
//     in the bench process, stream to cdcbench:stream without a cap,
//     generation key cdcbench:gen with no key templates); all is a rule
//     item:{id} with delete, version, publish, stream and generation plus
//     a rule row:{id} with refresh (refresh and delete cannot share
//     keys). Target: each within 1.3x of the reference.
//   - --fanout 1,10: the delete rule with N templates item:{id},
//     item:{id}:1, ... item:{id}:(N-1), all prefilled. Target for 10:
//     within 3x of fan-out 1 (the reference).
//   - --tables N --rules M: N tables cdcbench_t1..tN (table t holds the
//     rows whose (id-1) mod N is t-1), M rules, rule j on table
//     (j mod N)+1, every rule item:{id} (so Redis does the same work as
//     the reference: what grows is the lookup and the rendering of M/N
//     rules per change, and the engine's start-up checks of N tables,
//     which the runs table shows apart); the workload updates row i in
//     its table by a dynamic UPDATE, committing every --batch rows.
//     Target: within 1.2x.
//   - --verify-rate N: every engine (all variants, latency and memory)
//     runs with verify.enabled and verify.sample_rate N (default
//     windows), and serves metrics on a free loopback port; 1.5 s after
//     the end is confirmed the bench sums cdcinvalidate_verify_checks_total
//     by result and the dropped samples, then stops it (the engine's CPU
//     time then includes those 1.5 s, with the last checks). A variant "verifier
//     off" of the reference is added; its ratio is the reference's time
//     over its own, the verifier's overhead (target <= 1.05x).
//
// Before each engine run the bench deletes the engine's record of the
// patterns it managed (config.ManagedKey), so that a variant with other
// rules does not flush the prefilled keys as newly managed. After each
// run it checks what the rules had to do, and a failed check is a problem
// (exit 1): deletes: no item key of any row left; version: every
// item:{id}:v holds an LSN in (start, end]; refresh: every refreshed key,
// read with MGET, equals its row read afterwards, column by column (JSON
// numbers and booleans against the column's text, json/jsonb compacted,
// everything else as text); publish: the messages received name ROWS keys
// in all; stream: its entries' events name ROWS keys; generation: the key
// is between 1 and ROWS (one increment per applied batch); the verifier:
// no stale check. item:0 is prefilled in every variant: gone afterwards
// means the engine flushed.
//
// # Commit-to-invalidation latency
//
// With the engine streaming, writers issue single-row UPDATEs in
// autocommit at each of --rates commits per second for --duration, paced
// evenly (a late write goes at once and the schedule is kept, so a stall
// does not lower the average rate); one connection per 1,000 commits/s,
// and --max-conns unpaced connections for "max". Before each write its
// key is SET in Redis. Redis reports deletions through keyspace
// notifications (notify-keyspace-events gets K and g, restored at the
// end; PSUBSCRIBE __keyspace@DB__:item:*); the latency of a write is from
// its Exec returning (the commit acknowledged) to its key's del event
// (UNLINK also sends del), 0 if the event came first. A write whose key
// is not seen deleted within 5 s is lost, and must not happen. Reported:
// achieved rate, p50, p99, p99.9 and max (nearest rank), and lost writes.
// Target: p99 <= 1 ms at 2,000 commits/s on loopback (issue 15).
//
// During the writes the bench also samples, every 10 ms, the engine's
// walsender: pg_current_wal_lsn() against pg_stat_replication.sent_lsn,
// reported as the age of the oldest WAL not yet sent (p50, p99, max; a
// lower bound at 10 ms resolution). That delay is the walsender's share of
// the latency, before the engine saw anything. With --latency-control
// (default on) the same writes then run again at each rate with
// pg_recvlogical as the only consumer of a fresh slot (each key is cached
// with a SET before its write, as in the engine's run, so the bench's own
// work is the same), and its walsender's delay is reported beside: on a machine whose cores are all busy (2 cores
// serve the writers, the walsender, the consumer and Redis) the walsender
// can fall behind at 2,000 commits/s, and the control shows whether it
// does for any consumer or for the engine's only.
//
// # Peak memory
//
// With the engine streaming on a fresh slot, one INSERT ... SELECT
// generate_series of --big-rows rows commits; the engine's VmHWM
// (/proc/PID/status) once it confirmed the transaction is its peak RSS.
// Target: 100 MB (10^6 bytes) through 2,000,000 rows. With --wide (memory
// phase only) the table has 100 columns, every 20th extra one a 3.2 KB
// text that PostgreSQL TOASTs, and the rule refreshes the rows (a SET of
// the whole row as JSON, about 14 KB) instead of deleting keys: the case
// where only byte bounds keep the engine's memory flat.
//
// # Redis topology and distance
//
// --redis-topology cluster starts a throwaway Redis Cluster of 3 masters
// and 3 replicas (harness.StartCluster) and gives the engine redis.addrs
// and redis.cluster: true; sentinel starts 1 master, 1 replica and 3
// sentinels (harness.StartSentinel) and gives it redis.addrs (the
// sentinels) and redis.master_name. The bench's own client is a cluster
// or failover client: keys are seeded on their slot's master, multi-key
// commands are sent one key each on a cluster, Redis counters are summed
// over the masters, and the latency phase turns keyspace notifications on
// and subscribes on every master (a node notifies only of its own keys).
// Each master's watermark (sink.ShardWatermarkKey) is set with the main
// one before the engine starts. --wait-replicas N gives the engine
// redis.wait_replicas: N (a throwaway standalone Redis then gets N
// replicas, and the bench waits until they are online).
//
// --redis-rtt D (standalone only) puts an in-process TCP proxy (rttproxy.go)
// between the engine and Redis: every chunk read from one side is written
// to the other D/2 after its arrival, in order, while reading goes on, so
// pipelines still cost one round trip. Only the engine goes through it;
// the bench's clients, the keyspace-notification subscriber among them,
// connect directly, so a latency contains the RTT once (the engine's
// delete) and the p99 target is raised by D. pg_recvlogical is unchanged.
// The proxy's own hand-overs and the machine's scheduling add to D (on
// the 2-core test machine 1 ms became 1.2 ms idle and 1.5 ms p50, 2.9 ms
// p99 during a latency run), so the latency phase also times a PING
// through the proxy every 10 ms and reports that round trip
// (redis_rtt_p50_ms, redis_rtt_p99_ms) and the target over its median
// (target_p99_measured_rtt_ms, target_met_measured_rtt).
//
// # Beyond one slot
//
// With --instances N >= 2 the catch-up phase also measures the pattern of
// docs/operations.md ("Several instances: beyond one slot"): N tables
// cdcbench_items_1..N holding the ids in N ranges, publications
// cdcbench_pub_1..N and cdcbench_pub_all (every one of them), and for each
// workload and run, over the same WAL range (all slots created at the same
// point, the workload's transactions going to the tables in turn): N
// engines, one per slot cdcbench_engine_K with its own configuration and
// so its own watermark and status keys, started together, from the first
// start until every one confirmed the end; one engine on cdcbench_pub_all
// (slot cdcbench_engine_all); and N pg_recvlogical (slots
// cdcbench_recv_K) started together until the last exited. Reported: the
// medians, the speedup (one engine / N engines) and the ratio to the N
// pg_recvlogical, with CPU summed over the processes and the walsenders.
//
// Targets are printed next to the figures and judged; a missed target is
// not an error (exit 0). Lost invalidations, keys the engine left behind
// and failed checks of a variant are problems (exit 1).
//
// # Profiles
//
// With --profile DIR the engine also serves metrics and pprof
// (metrics.listen on a free loopback port, metrics.pprof) and the bench
// saves, for go tool pprof: a CPU profile per catch-up workload, from one
// extra run after the measured ones (not counted in the figures); a CPU
// profile per latency rate, taken during its writes; and the heap
// profile (alloc_space shows where the memory came from) once the memory
// phase's transaction is confirmed.
package bench
