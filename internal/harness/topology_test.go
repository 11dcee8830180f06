package harness

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestCluster(t *testing.T) {
	ctx := testCtx(t)
	c := ClusterT(t, ClusterOptions{})
	if len(c.Nodes) != 6 {
		t.Fatalf("%d nodes, want 6", len(c.Nodes))
	}
	cl := c.Client()
	defer cl.Close()
	// Keys over many slots: every one lands, wherever it lives.
	for i := 0; i < 200; i++ {
		if err := cl.Set(ctx, fmt.Sprintf("k:%d", i), i, 0).Err(); err != nil {
			t.Fatalf("SET k:%d: %v", i, err)
		}
	}
	var mu sync.Mutex
	masters := 0
	var total int64
	err := cl.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		n, err := m.DBSize(ctx).Result()
		if err != nil {
			return err
		}
		mu.Lock()
		masters++
		total += n
		mu.Unlock()
		if n == 0 {
			return fmt.Errorf("master %s holds none of 200 keys", m.Options().Addr)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if masters != 3 || total != 200 {
		t.Fatalf("%d masters holding %d keys, want 3 holding 200", masters, total)
	}
	one := redis.NewClient(&redis.Options{Addr: c.Nodes[5].Addr()})
	defer one.Close()
	info, err := one.ClusterInfo(ctx).Result()
	if err != nil || !strings.Contains(info, "cluster_slots_assigned:16384") {
		t.Fatalf("CLUSTER INFO = %q, %v", info, err)
	}
	m, err := c.MasterOf(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m != c.Nodes[0] {
		t.Errorf("slot 0 served by %s, want the first node %s", m.Addr(), c.Nodes[0].Addr())
	}
	dir := c.Nodes[0].Dir()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := pingRedis(ctx, c.Nodes[0].Addr()); err == nil {
		t.Fatalf("node still answers after Close (dir %s)", dir)
	}
}

func TestSentinel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := SentinelT(t, SentinelOptions{})
	if len(s.Sentinels) != 3 || s.Quorum != 2 {
		t.Fatalf("%d sentinels, quorum %d; want 3 and 2", len(s.Sentinels), s.Quorum)
	}
	old, err := s.CurrentMaster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if old != s.Master.Addr() {
		t.Fatalf("sentinels name %s, want the master %s", old, s.Master.Addr())
	}
	fc := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.Name, SentinelAddrs: s.Addrs()})
	defer fc.Close()
	if err := fc.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := fc.Wait(ctx, 1, 5000).Err(); err != nil {
		t.Fatal(err)
	}
	now, err := s.Failover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if now != s.Replica.Addr() {
		t.Fatalf("after the failover the master is %s, want the replica %s", now, s.Replica.Addr())
	}
	// The failover client follows; the replicated key is there.
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := fc.Get(ctx, "k").Result()
		if err == nil && got == "v" {
			if err := fc.Set(ctx, "k2", "v", 0).Err(); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("failover client after the failover: GET k = %q, %v", got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if s.Node(now) != s.Replica {
		t.Fatal("Node does not find the new master")
	}
}
