package sink

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// TestWaitReplicas: with WaitReplicas a batch is acknowledged only once
// the replica has it; while the replica is stopped the position waits
// (nothing acknowledged), and it goes on when the replica is back. The
// negative control (no WaitReplicas) acknowledges with the replica stopped.
func TestWaitReplicas(t *testing.T) {
	master := harness.RedisT(t, harness.RedisOptions{})
	replica := harness.RedisT(t, harness.RedisOptions{Args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(master.Port())}})
	rdb := redis.NewClient(&redis.Options{Addr: master.Addr(), MaxRetries: -1})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for rdb.Do(ctx, "wait", 1, 100).Val() != int64(1) {
		if ctx.Err() != nil {
			t.Fatal("replica never connected")
		}
		rdb.Set(ctx, "probe", 1, 0)
	}
	cfg := Config{Client: rdb, WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, WatermarkKey: "cdcinvalidate:s:lsn"}
	run(t, cfg, replication.Event{Keys: []string{"a"}, LSN: 1, End: 2})

	if err := replica.Pause(); err != nil {
		t.Fatal(err)
	}
	// Stopped replica: no acknowledgement within 2s, the sink retries.
	ack := &ackRecorder{}
	s := New(cfg, ack)
	in := make(chan replication.Event, 1)
	in <- replication.Event{Keys: []string{"b"}, LSN: 3, End: 4}
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	err := s.Run(short, in)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) || len(ack.acked) != 0 {
		t.Fatalf("with the replica stopped: Run = %v, acked %v; want a wait and nothing acknowledged", err, ack.acked)
	}
	if s.Stats.Retries.Load() == 0 {
		t.Error("no retry counted while the replica was behind")
	}
	// Negative control: without WaitReplicas the same batch is acknowledged.
	plain := cfg
	plain.WaitReplicas = 0
	if got := run(t, plain, replication.Event{Keys: []string{"c"}, LSN: 5, End: 6}); got.Stats.LastApplied.Load() != 6 {
		t.Errorf("without wait_replicas: last applied %d, want 6", got.Stats.LastApplied.Load())
	}
	// The replica back: the waiting batch goes through.
	if err := replica.Resume(); err != nil {
		t.Fatal(err)
	}
	if got := run(t, cfg, replication.Event{Keys: []string{"d"}, LSN: 7, End: 8}); got.Stats.LastApplied.Load() != 8 {
		t.Errorf("after resume: last applied %d, want 8", got.Stats.LastApplied.Load())
	}
}
