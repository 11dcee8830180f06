package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
	"github.com/cdcinvalidate/cdcinvalidate/sink"
)

// TestClusterEndToEnd runs the engine against a real Redis Cluster (3
// masters, 3 replicas): the first-start flush reaches keys on every
// master; inserts, updates and deletes of rows whose keys fall in many
// slots invalidate them, with leases fenced in the keys' slots; version,
// publish, stream, refresh and generation actions land; TRUNCATE removes a
// pattern's keys and leases on every master; the watermark follows.
func TestClusterEndToEnd(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{cluster: true, extra: "client:\n  leases: true\n"})
	ctx := f.ctx()
	const n = 300
	var stale []string
	for i := 1; i <= n; i++ {
		stale = append(stale, fmt.Sprintf("user:%d", i))
	}
	f.set(stale...)
	f.set("unmanaged:1")
	sub := f.rdb.Subscribe(ctx, "cache:events")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	f.exec(`CREATE TABLE products (id bigint PRIMARY KEY, name text, price int)`)
	cfg := f.rulesConfig(`  - table: users
    keys: ["user:{id}", "user:email:{email}"]
    actions: [delete, version, publish, stream]
    publish_channel: cache:events
    stream_key: events
  - table: products
    keys: ["product:{id}"]
    actions: [refresh]
    refresh_columns: [id, name, price]
  - table: orders
    actions: [generation]
    generation_key: gen:orders
    on_truncate: generation
`)
	cfg = strings.Replace(cfg, "rules:\n", "client:\n  leases: true\nrules:\n", 1)
	f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()

	// First start: every stale key is gone, on every master; others stay.
	if left := f.present(stale...); len(left) > 0 {
		t.Fatalf("first-start flush left %d keys, e.g. %q", len(left), left[0])
	}
	f.wantKept("unmanaged:1")
	masters := map[string]bool{}
	for _, k := range stale {
		m, err := f.cl.MasterOf(ctx, keyslot.Slot(k))
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Addr()] = true
		if len(masters) == 3 {
			break
		}
	}
	if len(masters) != 3 {
		t.Fatalf("the keys lived on %d masters, want 3", len(masters))
	}

	// Inserts, updates and deletes over many slots.
	var rows []string
	for i := 1; i <= n; i++ {
		rows = append(rows, fmt.Sprintf("(%d, 'u%d@x', 'n', '')", i, i))
	}
	f.set(stale...)
	f.exec(`INSERT INTO users VALUES ` + strings.Join(rows, ","))
	f.barrier()
	f.wantGone(stale...)
	for i := 1; i <= 5; i++ {
		k := fmt.Sprintf("user:%d", i)
		if got := f.get(cacheaside.LeaseKey(k)); got != cacheaside.LeaseFence && got != "" {
			t.Errorf("lease of %s = %q, want the fence (or lapsed)", k, got)
		}
		if v := f.get(k + ":v"); v == "" {
			t.Errorf("version key %s:v not set", k)
		}
	}
	f.set(stale...)
	f.set("user:email:u7@x", "user:email:new@x")
	f.exec(`UPDATE users SET email = 'new@x' WHERE id = 7`)
	f.exec(`DELETE FROM users WHERE id > 150`)
	f.barrier()
	f.wantGone("user:7", "user:email:u7@x", "user:email:new@x")
	f.wantGone(stale[150:]...)
	f.wantKept(stale[10:149]...) // rows 11..149 did not change again

	// Messages and stream entries of those transactions.
	m, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatalf("no message on cache:events: %v", err)
	}
	var ev event
	if err := json.Unmarshal([]byte(m.Payload), &ev); err != nil || len(ev.Changes) == 0 || ev.Changes[0].Table != "public.users" {
		t.Errorf("message %q: %+v, %v", m.Payload, ev, err)
	}
	if n := f.rdb.XLen(ctx, "events").Val(); n < 3 {
		t.Errorf("stream events has %d entries, want one per transaction (at least 3)", n)
	}

	// Refresh and generation.
	f.exec(`INSERT INTO products VALUES (1, 'pen', 3), (2, 'ink', 5)`)
	f.exec(`INSERT INTO orders VALUES (1, 1, 'n')`)
	f.barrier()
	if v := f.get("product:2"); !strings.Contains(v, `"ink"`) {
		t.Errorf("product:2 = %q, want the refreshed row", v)
	}
	gen := f.get("gen:orders")
	if gen == "" {
		t.Error("gen:orders not incremented")
	}

	// TRUNCATE: every key of the pattern on every master is deleted, and
	// every lease is fenced (a reader's token replaced by the fence, so its
	// load cannot fill afterwards) or gone.
	f.set(stale[:150]...)
	for _, k := range stale[:150] {
		f.rdb.Set(ctx, cacheaside.LeaseKey(k), "token", 0)
	}
	f.exec(`TRUNCATE users`)
	f.exec(`TRUNCATE orders`)
	f.barrier()
	f.wantGone(stale[:150]...)
	for _, k := range stale[:150] {
		if v, _ := f.rdb.Get(ctx, cacheaside.LeaseKey(k)).Result(); v != "" && v != cacheaside.LeaseFence {
			t.Fatalf("lease of %s = %q after TRUNCATE, want the fence or nothing", k, v)
		}
	}
	if f.get("gen:orders") == gen {
		t.Error("TRUNCATE orders did not bump gen:orders")
	}
	f.wantKept("unmanaged:1")

	// The watermark is at or above the slot's confirmed position.
	if w := parseLSN(t, f.get("cdcinvalidate:cdcinvalidate:lsn")); w < f.confirmed() {
		t.Errorf("watermark %s below the confirmed position %s", w, f.confirmed())
	}
}

// TestTopologyCheck: `cdcinvalidate check` reports what it found on each
// topology and refuses a cluster whose slots are not all served, or a
// cluster node given as a standalone redis.addr.
func TestTopologyCheck(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{cluster: true})
	ctx := f.ctx()
	out, code := cli(t, "check", "--config", f.cfgPath)
	t.Logf("check output:\n%s", out)
	if code != 0 {
		t.Errorf("exit status %d on a healthy cluster, want 0", code)
	}
	wantFindings(t, out, []string{"OK", "redis cluster 127.0.0.1:", "mode cluster: 3 masters", "3 replicas", "16384 of 16384 slots covered"})

	// A cluster node named as a standalone server.
	one := f.writeConfig(fmt.Sprintf("postgres:\n  dsn: %q\nredis:\n  addr: %q\n%s", f.pg.DSN("postgres"), f.cl.Nodes[0].Addr(), rules))
	out, code = cli(t, "check", "--config", one)
	if code != 1 {
		t.Errorf("exit status %d with a cluster node as redis.addr, want 1", code)
	}
	wantFindings(t, out, []string{"ERROR", "is a node of a Redis Cluster", "redis.cluster: true"})

	// Slots 0-99 unassigned on every node: refused.
	for _, r := range f.cl.Nodes {
		c := redis.NewClient(&redis.Options{Addr: r.Addr()})
		err := c.ClusterDelSlotsRange(ctx, 0, 99).Err()
		c.Close()
		if err != nil && !strings.Contains(err.Error(), "already unassigned") {
			t.Fatalf("CLUSTER DELSLOTSRANGE on %s: %v", r.Addr(), err)
		}
	}
	out, code = cli(t, "check", "--config", f.cfgPath)
	t.Logf("check output:\n%s", out)
	if code != 1 {
		t.Errorf("exit status %d with 100 slots unassigned, want 1", code)
	}
	wantFindings(t, out, []string{"ERROR", "16284 of 16384 slots covered", "100 hash slots have no master", "redis-cli --cluster fix"})
}

// TestTopologyCheckSentinel: check asks the sentinels for the master, its
// replicas and the quorum.
func TestTopologyCheckSentinel(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{sentinel: true})
	out, code := cli(t, "check", "--config", f.cfgPath)
	t.Logf("check output:\n%s", out)
	if code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	wantFindings(t, out, []string{"OK", "redis sentinel master mymaster via", "mode sentinel: master " + f.sn.Master.Addr(), "1 replicas, 3 sentinels, quorum 2"})
}

// TestSentinelFailoverLostWrites: the engine reaches Redis through
// Sentinel. The replica is paused while the engine deletes keys on the
// master (acknowledged, so PostgreSQL is confirmed), then the master is
// killed (-9) and the sentinels promote the replica, which never received
// those deletes: the stale values are back. The engine follows the
// failover, its watermark check sees the new master behind what it had
// acknowledged, and on_history_lost: flush deletes every managed key, so
// no stale value survives. The negative control (sink.watermark: false)
// shows the same failover leaving the stale values in place.
func TestSentinelFailoverLostWrites(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		watermark bool
	}{{"watermark", true}, {"negative control without watermark", false}} {
		t.Run(tc.name, func(t *testing.T) {
			extra := ""
			if !tc.watermark {
				extra = "sink:\n  watermark: false\n"
			}
			f := newFixture(t, fixtureOpts{sentinel: true, extra: extra})
			ctx := f.ctx()
			f.start()
			f.barrier()
			var keys []string
			for i := 1; i <= 20; i++ {
				keys = append(keys, fmt.Sprintf("user:%d", i))
				f.exec(`INSERT INTO users VALUES ($1, $2, 'n', '')`, i, fmt.Sprintf("u%d@x", i))
			}
			f.barrier()
			f.set(keys...)
			if err := f.rdb.Do(ctx, "wait", 1, 10000).Err(); err != nil {
				t.Fatal(err)
			}

			cutReplica(t, f.sn.Replica, f.sn.Master)
			f.exec(`UPDATE users SET name = 'changed'`)
			f.barrier()
			f.wantGone(keys...)
			confirmedBefore := f.confirmed()
			if err := f.sn.Master.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := f.sn.Replica.Resume(); err != nil {
				t.Fatal(err)
			}
			now, err := f.sn.WaitNewMaster(ctx, f.sn.Master.Addr())
			if err != nil {
				t.Fatal(err)
			}
			if now != f.sn.Replica.Addr() {
				t.Fatalf("new master %s, want the replica %s", now, f.sn.Replica.Addr())
			}
			// The promoted replica has the values the engine had deleted.
			direct := redis.NewClient(&redis.Options{Addr: now})
			defer direct.Close()
			if n := direct.Exists(ctx, keys...).Val(); n != int64(len(keys)) {
				t.Fatalf("the promoted replica has %d of the %d deleted keys; the test needs it to lack the deletes", n, len(keys))
			}
			// A later commit: the engine follows the failover.
			f.exec(`UPDATE users SET name = 'again' WHERE id = 1000`) // no row: only the barrier matters
			f.barrierTimeout(2 * time.Minute)
			// The flush deletes barrier:* too, before user:*: a second
			// barrier, and a bounded wait, let it finish.
			f.barrier()
			present := f.present(keys...)
			for deadline := time.Now().Add(30 * time.Second); tc.watermark && len(present) > 0 && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
				present = f.present(keys...)
			}
			if tc.watermark {
				if len(present) > 0 {
					t.Errorf("after a failover that lost acknowledged deletes, stale keys are still cached: %q", present)
				}
				if w := parseLSN(t, f.get("cdcinvalidate:cdcinvalidate:lsn")); w < confirmedBefore {
					t.Errorf("watermark %s on the new master below the position confirmed before the failover %s", w, confirmedBefore)
				}
			} else if len(present) != len(keys) {
				t.Errorf("negative control: %d of %d stale keys present, want all (the scenario must lose the deletes)", len(present), len(keys))
			}
		})
	}
}

// TestSentinelFollowsFailover: a SENTINEL FAILOVER while the engine
// streams (the replica in sync): invalidations after it reach the new
// master, and nothing was lost, so nothing is flushed (a managed key no
// change touched survives).
func TestSentinelFollowsFailover(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{sentinel: true})
	ctx := f.ctx()
	f.start()
	f.barrier()
	f.exec(`INSERT INTO users SELECT g, 'u' || g || '@x', 'n', '' FROM generate_series(1, 20) g`)
	f.barrier()
	f.set("user:1", "user:2", "user:999")
	if err := f.rdb.Do(ctx, "wait", 1, 10000).Err(); err != nil {
		t.Fatal(err)
	}
	now, err := f.sn.Failover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if now != f.sn.Replica.Addr() {
		t.Fatalf("new master %s, want %s", now, f.sn.Replica.Addr())
	}
	f.exec(`UPDATE users SET name = 'x' WHERE id IN (1, 2)`)
	f.barrierTimeout(2 * time.Minute)
	f.wantGone("user:1", "user:2")
	f.wantKept("user:999")
	direct := redis.NewClient(&redis.Options{Addr: now})
	defer direct.Close()
	if n := direct.Exists(ctx, "user:1", "user:2").Val(); n != 0 {
		t.Errorf("the new master %s still has %d of the invalidated keys", now, n)
	}
}

// TestSentinelWaitReplicasLosesNothing: the failover of
// TestSentinelFailoverLostWrites with redis.wait_replicas: 1. While the
// replica lacks the deletes, the engine does not confirm them to
// PostgreSQL; after the failover it sends them again to the promoted
// replica once it has a replica of its own (the old master, restarted):
// the keys are gone and nothing had to be flushed (a managed key no change
// touched survives).
func TestSentinelWaitReplicasLosesNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{sentinel: true})
	ctx := f.ctx()
	cfg := strings.Replace(mustRead(t, f.cfgPath), "redis:\n", "redis:\n  wait_replicas: 1\n  wait_timeout: 200ms\n", 1)
	f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()
	f.exec(`INSERT INTO users SELECT g, 'u' || g || '@x', 'n', '' FROM generate_series(1, 20) g`)
	f.barrier()
	var keys []string
	for i := 1; i <= 20; i++ {
		keys = append(keys, fmt.Sprintf("user:%d", i))
	}
	f.set(append(keys, "user:999")...)
	if err := f.rdb.Do(ctx, "wait", 1, 10000).Err(); err != nil {
		t.Fatal(err)
	}
	cutReplica(t, f.sn.Replica, f.sn.Master)
	f.exec(`UPDATE users SET name = 'changed'`)
	after := f.currentLSN()
	time.Sleep(3 * time.Second) // the engine retries; nothing may be confirmed
	if c := f.confirmed(); c >= after {
		t.Fatalf("confirmed %s at or past the update %s although no replica has it", c, after)
	}
	if err := f.sn.Master.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := f.sn.Replica.Resume(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.sn.WaitNewMaster(ctx, f.sn.Master.Addr()); err != nil {
		t.Fatal(err)
	}
	// The new master has no replica yet: the position still waits.
	time.Sleep(2 * time.Second)
	if c := f.confirmed(); c >= after {
		t.Fatalf("confirmed %s at or past the update %s while the new master has no replica", c, after)
	}
	// The old master comes back (empty); the sentinels make it a replica.
	if err := f.sn.Master.Start(); err != nil {
		t.Fatal(err)
	}
	f.barrierTimeout(2 * time.Minute)
	f.wantGone(keys...)
	f.wantKept("user:999")
	// Status updates go every status_interval (1s): a bounded wait.
	c := f.confirmed()
	for deadline := time.Now().Add(30 * time.Second); c < after && time.Now().Before(deadline); c = f.confirmed() {
		time.Sleep(100 * time.Millisecond)
	}
	if c < after {
		t.Errorf("confirmed %s still below the update %s after the failover", c, after)
	}
}

// TestClusterWaitReplicasLosesNothing: redis.wait_replicas: 1 on a
// cluster. The replica of a master (not the main watermark's) is cut off
// while rows whose keys live on that master change: the engine does not
// confirm them to PostgreSQL, since that master's WAIT counts no replica
// (the WAIT goes to every master, on the connection of a write to it). The
// master is killed (-9) and its replica, which lacks the deletes, promoted;
// with no replica of its own the position still waits. The old master
// restarts and rejoins as the promoted one's replica: the engine sends the
// batch again, the keys are gone, and nothing had to be flushed (a managed
// key on that master that no change touched survives).
func TestClusterWaitReplicasLosesNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{cluster: true})
	ctx := f.ctx()
	cfg := strings.Replace(mustRead(t, f.cfgPath), "redis:\n", "redis:\n  wait_replicas: 1\n  wait_timeout: 200ms\n", 1)
	f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()
	mainMaster, err := f.cl.MasterOf(ctx, keyslot.Slot("cdcinvalidate:cdcinvalidate:lsn"))
	if err != nil {
		t.Fatal(err)
	}
	var keys, ids []string
	var victim *harness.Redis
	spare := ""
	for i := 1; len(keys) < 10 || spare == ""; i++ {
		k := fmt.Sprintf("user:%d", i)
		m, err := f.cl.MasterOf(ctx, keyslot.Slot(k))
		if err != nil {
			t.Fatal(err)
		}
		if m == mainMaster || (victim != nil && m != victim) {
			continue
		}
		victim = m
		if len(keys) == 10 {
			spare = k // a managed key on the victim that no change touches
			continue
		}
		keys = append(keys, k)
		ids = append(ids, fmt.Sprint(i))
		f.exec(`INSERT INTO users VALUES ($1, $2, 'n', '')`, i, fmt.Sprintf("u%d@x", i))
	}
	f.barrier()
	f.set(append(keys, spare)...)
	replica, err := f.cl.ReplicaOf(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	syncReplica(t, victim, keyslot.Slot(keys[0]))
	cutReplica(t, replica, victim)
	f.exec(`UPDATE users SET name = 'changed' WHERE id IN (` + strings.Join(ids, ",") + `)`)
	after := f.currentLSN()
	time.Sleep(3 * time.Second) // the engine retries; nothing may be confirmed
	if c := f.confirmed(); c >= after {
		t.Fatalf("confirmed %s at or past the update %s although the replica of %s lacks it", c, after, victim.Addr())
	}
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := replica.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := f.cl.WaitMaster(ctx, keyslot.Slot(keys[0]), replica); err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(&redis.Options{Addr: replica.Addr()})
	defer rc.Close()
	n := 0
	for _, k := range keys { // one by one: they span slots
		n += int(rc.Exists(ctx, k).Val())
	}
	if n != len(keys) {
		t.Fatalf("the promoted replica has %d of the %d keys; the test needs it to lack the deletes", n, len(keys))
	}
	time.Sleep(2 * time.Second) // no replica for the promoted one yet
	if c := f.confirmed(); c >= after {
		t.Fatalf("confirmed %s at or past the update %s while the promoted master has no replica", c, after)
	}
	// The old master comes back and becomes the promoted one's replica.
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	followMaster(t, f, keyslot.Slot(keys[0]))
	f.barrierTimeout(2 * time.Minute)
	f.wantGone(keys...)
	f.wantKept(spare)
	c := f.confirmed()
	for deadline := time.Now().Add(30 * time.Second); c < after && time.Now().Before(deadline); c = f.confirmed() {
		time.Sleep(100 * time.Millisecond)
	}
	if c < after {
		t.Errorf("confirmed %s still below the update %s after the failover", c, after)
	}
}

// followMaster waits until the test's cluster client reaches the master
// of slot (after a failover).
func followMaster(t *testing.T, f *fixture, slot int) {
	t.Helper()
	ctx := f.ctx()
	probe := "probe:{" + keyslot.SlotTag(slot) + "}"
	for deadline := time.Now().Add(time.Minute); ; {
		f.rdb.(*redis.ClusterClient).ReloadState(ctx)
		if err := f.rdb.Set(ctx, probe, 1, 0).Err(); err == nil {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("the test's cluster client does not reach the master of slot %d: %v", slot, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// syncReplica makes sure master's replicas have everything it has: a write
// in slot (which master serves) and WAIT on the same connection (WAIT
// counts up to the offset of the connection's last write).
func syncReplica(t *testing.T, master *harness.Redis, slot int) {
	t.Helper()
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: master.Addr(), PoolSize: 1})
	defer c.Close()
	var wait *redis.Cmd
	if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "sync:{"+keyslot.SlotTag(slot)+"}", 1, 0)
		wait = p.Do(ctx, "wait", 1, 10000)
		return nil
	}); err != nil {
		t.Fatalf("sync the replica of %s: %v", master.Addr(), err)
	}
	if n, _ := wait.Int64(); n < 1 {
		t.Fatalf("the replica of %s did not acknowledge within 10 s", master.Addr())
	}
}

// TestClusterShardLostWhileStopped: a master's watermark found below the
// slot's confirmed position at start (it lost writes while the engine was
// stopped) makes the engine flush before streaming; a restart without that
// (the negative control) flushes nothing.
func TestClusterShardLostWhileStopped(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{cluster: true})
	ctx := f.ctx()
	r := f.start()
	f.barrier()
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'n', '')`)
	f.barrier()
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	// Negative control: a plain restart keeps a managed key no change touched.
	f.set("user:999")
	r = f.start()
	f.barrier()
	f.wantKept("user:999")
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	// One master (not the main watermark's) went back in time.
	main := "cdcinvalidate:cdcinvalidate:lsn"
	keys, err := sink.ShardWatermarkKeys(ctx, f.rdb, main)
	if err != nil {
		t.Fatal(err)
	}
	victim := ""
	for _, k := range keys {
		if m1, _ := f.cl.MasterOf(ctx, keyslot.Slot(k)); m1 != nil {
			if m2, _ := f.cl.MasterOf(ctx, keyslot.Slot(main)); m2 != m1 {
				victim = k
				break
			}
		}
	}
	if victim == "" || f.get(victim) == "" {
		t.Fatalf("no shard watermark on another master than %s (keys %q)", main, keys)
	}
	f.rdb.Set(ctx, victim, "0/1", 0)
	f.set("user:999")
	f.start()
	f.barrier()
	f.wantGone("user:999")
	if w := parseLSN(t, f.get(victim)); w <= 1 {
		t.Errorf("shard watermark %s still %s after the flush", victim, w)
	}
}

// cutReplica makes replica miss what master acknowledges from now on: the
// replica is stopped (SIGSTOP) and the master drops its replication link,
// else the writes would wait in the replica's socket buffer and arrive
// when it resumes.
func cutReplica(t *testing.T, replica, master *harness.Redis) {
	t.Helper()
	if err := replica.Pause(); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: master.Addr()})
	defer c.Close()
	if err := c.ClientKillByFilter(context.Background(), "TYPE", "replica").Err(); err != nil {
		t.Fatal(err)
	}
}
