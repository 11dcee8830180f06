package sink

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// clusterKeys are keys over many slots, with every brace shape.
func clusterKeys(n int) []string {
	keys := []string{"{}x", "a{b}c", "user:{7}:orders", "user:{7", "x}y", "{", "}", "{}"}
	for i := 0; len(keys) < n; i++ {
		keys = append(keys, fmt.Sprintf("user:%d", i))
	}
	return keys
}

// TestClusterEveryAction runs every action on a real 3-master cluster:
// no command spans slots (CROSSSLOT would stop the sink), every key is
// deleted with its lease fenced, versions, refreshes, generations,
// messages and the watermark land, and a TRUNCATE pattern and a flush
// reach the keys of every master.
func TestClusterEveryAction(t *testing.T) {
	cl := harness.ClusterT(t, harness.ClusterOptions{})
	rdb := cl.Client()
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	keys := clusterKeys(400)
	for _, k := range keys {
		if err := rdb.Set(ctx, k, "cached", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	slots := map[int]bool{}
	for _, k := range keys {
		slots[keyslot.Slot(k)] = true
	}
	if len(slots) < 300 {
		t.Fatalf("keys cover only %d slots", len(slots))
	}
	var acts []replication.Action
	for _, k := range keys[:50] {
		acts = append(acts, replication.Action{Kind: replication.ActVersion, Key: k + ":v"},
			replication.Action{Kind: replication.ActDel, Key: "del:" + k},
			replication.Action{Kind: replication.ActSet, Key: "set:" + k, Value: "fresh"},
			replication.Action{Kind: replication.ActPublish, Target: "chan", Table: "public.t", Op: replication.OpUpdate, Key: k},
			replication.Action{Kind: replication.ActStream, Target: "events", Table: "public.t", Op: replication.OpUpdate, Key: k})
		if err := rdb.Set(ctx, "del:"+k, "cached", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	acts = append(acts, replication.Action{Kind: replication.ActIncr, Key: "gen:a"}, replication.Action{Kind: replication.ActIncr, Key: "gen:b"})
	sub := rdb.Subscribe(ctx, "chan")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Client: rdb, Cluster: true, KeysPerCommand: 16,
		Companion: cacheaside.LeaseKey, CompanionPatterns: cacheaside.LeasePatterns, FenceValue: "fence", Fence: time.Minute,
		WatermarkKey: "cdcinvalidate:s:lsn", PublishChannel: "keys",
	}
	s := run(t, cfg,
		replication.Event{Keys: keys[:200], LSN: 0x100, End: 0x110},
		replication.Event{Keys: keys[200:], Actions: acts, LSN: 0x200, End: 0x210})
	if n := s.Stats.Deleted.Load(); n < uint64(len(keys)) {
		t.Errorf("deleted %d keys, want at least %d", n, len(keys))
	}
	for _, k := range keys {
		if rdb.Exists(ctx, k).Val() != 0 {
			t.Errorf("key %q still there", k)
		}
		if got := rdb.Get(ctx, cacheaside.LeaseKey(k)).Val(); got != "fence" {
			t.Errorf("lease of %q = %q, want the fence", k, got)
		}
	}
	for _, k := range keys[:50] {
		if got := rdb.Get(ctx, k+":v").Val(); got != "0/200" {
			t.Errorf("version %s:v = %q, want 0/200", k, got)
		}
		if rdb.Exists(ctx, "del:"+k).Val() != 0 {
			t.Errorf("del:%s still there", k)
		}
		if got := rdb.Get(ctx, "set:"+k).Val(); got != "fresh" {
			t.Errorf("set:%s = %q, want fresh", k, got)
		}
		for _, p := range []string{"del:", "set:"} { // the rule's own command and refresh fence leases too
			if got := rdb.Get(ctx, cacheaside.LeaseKey(p+k)).Val(); got != "fence" {
				t.Errorf("lease of %s%s = %q, want the fence", p, k, got)
			}
		}
	}
	for _, g := range []string{"gen:a", "gen:b"} {
		if got := rdb.Get(ctx, g).Val(); got != "1" {
			t.Errorf("%s = %q, want 1", g, got)
		}
	}
	if n := rdb.XLen(ctx, "events").Val(); n != 1 {
		t.Errorf("stream events has %d entries, want 1", n)
	}
	msg, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Channel != "chan" {
		t.Errorf("message on %q", msg.Channel)
	}
	if got := rdb.Get(ctx, "cdcinvalidate:s:lsn").Val(); got != "0/210" {
		t.Errorf("watermark = %q, want 0/210", got)
	}

	// TRUNCATE: keys of a pattern deleted and their leases fenced, on every master.
	for _, k := range keys {
		rdb.Set(ctx, k, "cached", 0)
		rdb.Set(ctx, cacheaside.LeaseKey(k), "token", 0)
	}
	rdb.Set(ctx, "other:1", "kept", 0)
	run(t, cfg, replication.Event{Globs: []string{"user:*", "{*", "}*", "a{*", "x}*"}, LSN: 0x300, End: 0x310})
	for _, k := range keys {
		if rdb.Exists(ctx, k).Val() != 0 {
			t.Errorf("TRUNCATE left %q", k)
		}
		if got := rdb.Get(ctx, cacheaside.LeaseKey(k)).Val(); got != "fence" {
			t.Errorf("TRUNCATE left the lease of %q as %q, want the fence", k, got)
		}
	}
	if rdb.Exists(ctx, "other:1").Val() != 1 {
		t.Error("TRUNCATE deleted a key outside its patterns")
	}
	// The keys lived on every master, so the scans reached them all.
	shards, err := rdb.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	masters := map[string]bool{}
	for _, k := range keys {
		sl := keyslot.Slot(k)
		for _, r := range shards {
			if sl >= int(r.Start) && sl <= int(r.End) {
				masters[r.Nodes[0].Addr] = true
			}
		}
	}
	if len(masters) != 3 {
		t.Errorf("keys on %d masters, want 3", len(masters))
	}

	// Negative control: the same batch without Cluster grouping is refused
	// by the cluster (CROSSSLOT), which stops the sink.
	plain := cfg
	plain.Cluster = false
	sk := New(plain, &ackRecorder{})
	in := make(chan replication.Event, 1)
	in <- replication.Event{Keys: keys, LSN: 0x400, End: 0x410}
	close(in)
	err = sk.Run(ctx, in)
	if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Errorf("without Cluster grouping: Run = %v, want a CROSSSLOT error", err)
	}
}

// TestClusterActionsFencedByWatermark is TestActionsFencedByWatermarkAfterTruncate
// on a cluster, where the watermark is read before the batch (it lives in
// another slot than the keys): a late transaction's raises and writes
// across masters are left out once the watermark passed it.
func TestClusterActionsFencedByWatermark(t *testing.T) {
	cl := harness.ClusterT(t, harness.ClusterOptions{})
	rdb := cl.Client()
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := Config{Client: rdb, Cluster: true, KeysPerCommand: 16, WatermarkKey: "cdcinvalidate:s:lsn"}
	keys := clusterKeys(60)
	var acts, fresh []replication.Action
	for _, k := range keys {
		acts = append(acts, replication.Action{Kind: replication.ActVersion, Key: "t:" + k + ":v"},
			replication.Action{Kind: replication.ActSet, Key: "t:" + k, Value: "old"})
		fresh = append(fresh, replication.Action{Kind: replication.ActSet, Key: "n:" + k, Value: "new"})
	}
	old := replication.Event{Actions: acts, LSN: 0x100, End: 0x108}
	run(t, cfg, old, replication.Event{Globs: []string{"t:*"}, LSN: 0x200, End: 0x208})
	s := run(t, cfg, old, replication.Event{Actions: fresh, LSN: 0x300, End: 0x308})
	for _, k := range keys {
		if n := rdb.Exists(ctx, "t:"+k, "t:"+k+":v").Val(); n != 0 {
			t.Errorf("the late transaction put back %d of t:%s and its version key after the newer TRUNCATE", n, k)
		}
		if got := rdb.Get(ctx, "n:"+k).Val(); got != "new" {
			t.Errorf("n:%s = %q, want new (a transaction the watermark has not passed)", k, got)
		}
	}
	if n := s.Stats.Fenced.Load(); n != uint64(2*len(keys)) {
		t.Errorf("Stats.Fenced = %d, want %d", n, 2*len(keys))
	}
	if s.clusterMark != 0x208 {
		t.Errorf("the watermark read before the last batch = %s, want 0/208", s.clusterMark)
	}
}
