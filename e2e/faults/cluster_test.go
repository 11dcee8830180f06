//go:build failpoints

package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
)

// Redis Cluster scenarios: the same workload and checker against a
// cluster of 3 masters and 3 replicas (harness.StartCluster, node timeout
// 2 s), the engine with redis.cluster: true. Only with -tags failpoints,
// although only one of them needs it: the CI runs the untagged scenarios
// twice (go test ./..., then the tagged suite), and six Redis processes
// per scenario are too dear for that.

// shardFailoverRun is one run of "a master fails over to a replica that
// missed what it acknowledged": while the workload runs, the replica of a
// master that does not hold the main watermark is cut off (SIGSTOP, its
// replication link killed), the writers go on for about a second (the
// engine's deletes on that master are acknowledged, so confirmed to
// PostgreSQL, and the replica never gets them), then the master is killed
// with SIGKILL and the replica, resumed, is promoted by the cluster. The
// values it still holds are stale unless the engine notices (its watermark
// on that master is behind what it had set) and flushes.
func shardFailoverRun(t *testing.T, sc *scenario, f *fixture, rng *rand.Rand, label string) checkResult {
	ctx := context.Background()
	main, err := f.cl.MasterOf(ctx, keyslot.Slot(f.markKey()))
	if err != nil {
		t.Fatal(err)
	}
	var victim *harness.Redis
	slot := rng.IntN(keyslot.Slots)
	for ; victim == nil; slot = (slot + 997) % keyslot.Slots {
		m, err := f.cl.MasterOf(ctx, slot)
		if err != nil {
			t.Fatal(err)
		}
		if m != main {
			victim = m
			break
		}
	}
	replica, err := f.cl.ReplicaOf(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	return f.cycle(sc, rng, defaultLoad, label, func(l *load) {
		syncReplica(t, victim, slot) // it has every filled value
		sleepRand(rng, 200*time.Millisecond, 500*time.Millisecond)
		cutReplica(t, replica, victim)
		sc.fault("replica cut off (SIGSTOP, link killed)")
		sleepRand(rng, 800*time.Millisecond, 1200*time.Millisecond)
		if err := victim.Kill(); err != nil {
			t.Fatal(err)
		}
		sc.fault("master kill -9")
		resume := burst(l, 0) // the writers wait for the promotion
		if err := replica.Resume(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := f.cl.WaitMaster(ctx, slot, replica); err != nil {
			t.Fatal(err)
		}
		sc.fault("replica that missed acknowledged deletes promoted")
		f.followFailover(slot)
		sc.note("%s: promoted %.1f s after the kill", label, time.Since(start).Seconds())
		resume()
		sleepRand(rng, 300*time.Millisecond, 600*time.Millisecond)
	}, nil)
}

// TestClusterShardFailoverLostWrites: a cluster master fails over (kill
// -9) to a replica that missed the deletes it had acknowledged, under the
// live workload. The engine's watermark on that master (one per master)
// shows it, and consistency.on_history_lost (flush) removes what the
// promoted replica brought back: no stale key.
func TestClusterShardFailoverLostWrites(t *testing.T) {
	sc := newScenario(t, "cluster: master kill -9, promoted replica missed acknowledged deletes", "a shard that lost writes is detected (watermark per master) and flushed", false)
	f := newFixture(t, fixtureOpts{cluster: true})
	rng := rngFor(t)
	p := f.startStreaming()
	for i := 1; i <= runs(1); i++ {
		r := shardFailoverRun(t, sc, f, rng, fmt.Sprintf("run %d", i))
		if !strings.Contains(p.Output(), "of a cluster master was") {
			t.Errorf("run %d: the engine did not report the shard's lost writes (%s); output:\n%s", i, r, p.Tail(30))
		} else {
			sc.note("run %d: the engine saw the shard's watermark behind and flushed", i)
		}
		// The flush leaves little to compare: a run on the new topology
		// (the promoted replica without a replica of its own).
		r = f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d, after the failover", i), func(l *load) {
			sleepRand(rng, 800*time.Millisecond, 1200*time.Millisecond)
		}, nil)
		if r.plain == 0 {
			t.Errorf("run %d after the failover: no key compared (%s)", i, r)
		}
	}
}

// TestNegativeClusterShardFailoverWithoutWatermark is its negative
// control: with sink.watermark: false nothing sees the lost writes, and
// the checker must find the stale values on the promoted replica.
func TestNegativeClusterShardFailoverWithoutWatermark(t *testing.T) {
	sc := newScenario(t, "NEGATIVE: cluster shard failover lost writes, sink.watermark: false", "the checker sees values the promoted replica kept", true)
	f := newFixture(t, fixtureOpts{cluster: true, noWatermark: true})
	rng := rngFor(t)
	f.startStreaming()
	for i := 1; i <= runs(1); i++ {
		r := shardFailoverRun(t, sc, f, rng, fmt.Sprintf("run %d", i))
		if r.stale() == 0 {
			t.Fatalf("negative control run %d: the checker found no stale key after the shard failover (%s): the scenario cannot see this loss", i, r)
		}
		sc.note("run %d: checker found %d stale keys, e.g. %s", i, r.stale(), r.examples(1)[0])
	}
}

// reshardSlots is how many slots a resharding run moves (keys migrated
// one by one by redis-cli while the engine streams).
const reshardSlots = 1200

// reshardRun is one run of "resharding under load": while the workload
// runs, redis-cli --cluster reshard moves reshardSlots slots (with their
// keys, MIGRATE by MIGRATE) from the master of slot 0 to another one: the
// engine's deletes meet MOVED, ASK and TRYAGAIN.
func reshardRun(t *testing.T, sc *scenario, f *fixture, rng *rand.Rand, label string) checkResult {
	ctx := context.Background()
	from, err := f.cl.MasterOf(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	to, err := f.cl.MasterOf(ctx, keyslot.Slots-1)
	if err != nil {
		t.Fatal(err)
	}
	if to == from {
		if to, err = f.cl.MasterOf(ctx, keyslot.Slots/2); err != nil {
			t.Fatal(err)
		}
	}
	return f.cycle(sc, rng, defaultLoad, label, func(l *load) {
		sleepRand(rng, 200*time.Millisecond, 500*time.Millisecond)
		start := time.Now()
		if err := f.cl.Reshard(ctx, from, to, reshardSlots); err != nil {
			t.Fatal(err)
		}
		sc.fault(fmt.Sprintf("%d slots resharded (redis-cli --cluster reshard)", reshardSlots))
		sc.note("%s: reshard took %.1f s", label, time.Since(start).Seconds())
		sleepRand(rng, 200*time.Millisecond, 400*time.Millisecond)
	}, nil)
}

// TestClusterReshardUnderLoad: slots move between masters while the
// engine streams; the deletes that meet MOVED, ASK or TRYAGAIN are
// followed or retried, none is lost.
func TestClusterReshardUnderLoad(t *testing.T) {
	sc := newScenario(t, "cluster: resharding under load", "MOVED, ASK and TRYAGAIN lose nothing", false)
	f := newFixture(t, fixtureOpts{cluster: true})
	rng := rngFor(t)
	f.startStreaming()
	for i := 1; i <= runs(1); i++ {
		reshardRun(t, sc, f, rng, fmt.Sprintf("run %d", i))
	}
}

// followFailover waits until the test's own cluster client reaches the
// master that serves slot now.
func (f *fixture) followFailover(slot int) {
	f.t.Helper()
	ctx := context.Background()
	probe := "cdcinvalidate:test-probe:{" + keyslot.SlotTag(slot) + "}"
	cc := f.rdb.(*redis.ClusterClient)
	harness.WaitFor(f.t, 30*time.Second, "the test's cluster client to reach the new master", func() bool {
		cc.ReloadState(ctx)
		time.Sleep(100 * time.Millisecond)
		return cc.Set(ctx, probe, 1, 0).Err() == nil
	})
}

// syncReplica makes sure master's replicas have everything it has: a write
// in slot (which master serves) and WAIT on the same connection (WAIT
// waits for the offset of the connection's last write).
func syncReplica(t *testing.T, master *harness.Redis, slot int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: master.Addr(), PoolSize: 1})
	defer c.Close()
	var wait *redis.Cmd
	if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "cdcinvalidate:test-sync:{"+keyslot.SlotTag(slot)+"}", 1, 0)
		wait = p.Do(ctx, "wait", 1, 10000)
		return nil
	}); err != nil {
		t.Fatalf("sync the replica of %s: %v", master.Addr(), err)
	}
	if n, _ := wait.Int64(); n < 1 {
		t.Fatalf("the replica of %s did not acknowledge within 10 s", master.Addr())
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
