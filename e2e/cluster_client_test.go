package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
)

// TestClusterClientLibrary: cacheaside against a Redis Cluster with the
// engine streaming (client.leases, client.publish_channel):
//
//   - the stale-set race stays closed on every master: a fill whose row
//     changed (and was invalidated) during its load is refused, for keys
//     in many slots (the lease, fenced by the engine, shares its key's
//     slot), and no Redis error occurs;
//   - single-flight across processes: 3 clients × 20 concurrent reads of a
//     key load it once (the others wait on the lease, or coalesce);
//   - the L1 invalidation channel: the engine's PUBLISH reaches
//     subscribers on every node (masters and replicas), and the L1 of
//     every client drops the keys of a changed row;
//   - the subscription follows a failover: the master the clients'
//     subscriptions are on is killed (-9); their L1 goes off, comes back
//     once they resubscribe through the cluster, and invalidates again.
func TestClusterClientLibrary(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{cluster: true})
	ctx := f.ctx()
	const channel = "cache:events"
	cfg := f.rulesConfig(`  - table: users
    keys: ["user:{id}"]
`)
	cfg = strings.Replace(cfg, "rules:\n", "client:\n  leases: true\n  publish_channel: "+channel+"\nrules:\n", 1)
	f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()
	const n = 60
	f.exec(fmt.Sprintf(`INSERT INTO users SELECT g, 'u' || g || '@x', 'v0', '' FROM generate_series(1, %d) g`, n))
	f.barrier()
	name := func(id int) string {
		var s string
		if err := f.db.QueryRow(ctx, `SELECT name FROM users WHERE id = $1`, id).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}

	clients := make([]*cacheaside.Client, 3)
	for i := range clients {
		rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: f.cl.Addrs(), DialerRetries: 1, MaxRetryBackoff: 64 * time.Millisecond})
		t.Cleanup(func() { _ = rdb.Close() })
		c, err := cacheaside.New(rdb, cacheaside.Options{MaxWait: 3 * time.Second,
			L1: cacheaside.L1Options{Size: 1000, Channel: channel, TTL: time.Minute, HealthInterval: 300 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		clients[i] = c
	}
	waitL1 := func(on bool, within time.Duration) {
		t.Helper()
		harness.WaitFor(t, within, fmt.Sprintf("every client's L1 active = %v", on), func() bool {
			for _, c := range clients {
				if c.L1Active() != on {
					return false
				}
			}
			return true
		})
	}
	waitL1(true, 10*time.Second)

	// The stale-set race, on keys of every master.
	masters := map[string]bool{}
	c0 := clients[0]
	for id := 1; id <= 20; id++ {
		key := fmt.Sprintf("user:%d", id)
		m, err := f.cl.MasterOf(ctx, keyslot.Slot(key))
		if err != nil {
			t.Fatal(err)
		}
		masters[m.Addr()] = true
		v, err := c0.Get(ctx, key, func(ctx context.Context) ([]byte, error) {
			old := name(id) // the old row is read; then it changes and is invalidated
			f.exec(`UPDATE users SET name = 'v1' WHERE id = $1`, id)
			f.barrier()
			return []byte(old), nil
		})
		if err != nil || string(v) != "v0" {
			t.Fatalf("Get %s = %q, %v", key, v, err)
		}
		if f.exists(key) {
			t.Errorf("%s: the value read before the change was cached (%q): the fill must be refused", key, f.get(key))
		}
	}
	if len(masters) != 3 {
		t.Fatalf("the keys lived on %d masters, want 3", len(masters))
	}
	if s := c0.Stats.Snapshot(); s.FillsRefused != 20 || s.RedisErrors != 0 {
		t.Errorf("fills refused %d (want 20), redis errors %d (want 0)", s.FillsRefused, s.RedisErrors)
	}

	// Single-flight across the three clients.
	var loads atomic.Int32
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for _, c := range clients {
		for range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				v, err := c.Get(ctx, "user:40", func(ctx context.Context) ([]byte, error) {
					loads.Add(1)
					time.Sleep(100 * time.Millisecond)
					return []byte(name(40)), nil
				})
				if err != nil || string(v) != "v0" {
					t.Errorf("Get user:40 = %q, %v", v, err)
				}
			}()
		}
	}
	close(gate)
	wg.Wait()
	if loads.Load() != 1 {
		t.Errorf("60 concurrent reads in 3 clients loaded %d times, want 1", loads.Load())
	}

	// PUBLISH reaches every node.
	var subs []*redis.PubSub
	for _, r := range f.cl.Nodes {
		c := redis.NewClient(&redis.Options{Addr: r.Addr()})
		t.Cleanup(func() { _ = c.Close() })
		ps := c.Subscribe(ctx, channel)
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ps.Close() })
		subs = append(subs, ps)
	}
	f.exec(`UPDATE users SET name = 'v2' WHERE id = 50`)
	for i, ps := range subs {
		m, err := ps.ReceiveTimeout(ctx, 10*time.Second)
		if err != nil {
			t.Fatalf("no message on node %s: %v", f.cl.Nodes[i].Addr(), err)
		}
		if msg, ok := m.(*redis.Message); !ok || !strings.Contains(msg.Payload, `"user:50"`) {
			t.Errorf("node %s: got %v, want the message naming user:50", f.cl.Nodes[i].Addr(), m)
		}
	}

	// L1: every client holds keys of every master, then the rows change.
	l1Round := func(round string, ids []int) {
		t.Helper()
		for _, c := range clients {
			for _, id := range ids {
				for range 2 { // the second read is an L1 hit
					if _, err := c.Get(ctx, fmt.Sprintf("user:%d", id), func(ctx context.Context) ([]byte, error) { return []byte(name(id)), nil }); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		before := make([]uint64, len(clients))
		for i, c := range clients {
			before[i] = c.Stats.L1Invalidated.Load()
			if c.Stats.L1Hits.Load() == 0 {
				t.Fatalf("%s: client %d: no L1 hit", round, i)
			}
		}
		list := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(ids)), ","), "[]")
		f.exec(`UPDATE users SET name = $1 WHERE id IN (`+list+`)`, round)
		f.barrier()
		defer func() {
			if t.Failed() {
				for i, c := range clients {
					t.Logf("%s: client %d: L1 active %v, stats %+v", round, i, c.L1Active(), c.Stats.Snapshot())
				}
			}
		}()
		harness.WaitFor(t, 10*time.Second, round+": every client's L1 to drop the changed keys", func() bool {
			for i, c := range clients {
				if c.Stats.L1Invalidated.Load() < before[i]+uint64(len(ids)) {
					return false
				}
			}
			return true
		})
		for i, c := range clients {
			for _, id := range ids {
				v, err := c.Get(ctx, fmt.Sprintf("user:%d", id), func(ctx context.Context) ([]byte, error) { return []byte(name(id)), nil })
				if err != nil || string(v) != round {
					t.Errorf("%s: client %d: user:%d = %q, %v; want %q", round, i, id, v, err, round)
				}
			}
		}
	}
	l1Round("v3", []int{21, 22, 23, 24, 25, 26, 27, 28, 29, 30})

	// The subscriptions' master is killed: they follow the failover.
	subMaster, err := f.cl.MasterOf(ctx, keyslot.Slot(channel))
	if err != nil {
		t.Fatal(err)
	}
	replica, err := f.cl.ReplicaOf(ctx, subMaster)
	if err != nil {
		t.Fatal(err)
	}
	syncReplica(t, subMaster, keyslot.Slot(channel))
	if err := subMaster.Kill(); err != nil {
		t.Fatal(err)
	}
	waitL1(false, 10*time.Second)
	if err := f.cl.WaitMaster(ctx, keyslot.Slot(channel), replica); err != nil {
		t.Fatal(err)
	}
	followMaster(t, f, keyslot.Slot(channel))
	start := time.Now()
	waitL1(true, 30*time.Second)
	t.Logf("L1 back %v after the promotion", time.Since(start).Round(100*time.Millisecond))
	l1Round("v4", []int{31, 32, 33, 34, 35, 36, 37, 38, 39})
}
