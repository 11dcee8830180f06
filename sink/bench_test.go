package sink

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// BenchmarkBatchBuild gathers 64 single-transaction events of 3 keys each
// (a third of them repeated across transactions) into one batch: the
// sink's per-key cost before the pipeline is written. Reported per key.
func BenchmarkBatchBuild(b *testing.B) {
	s := New(Config{}, &ackRecorder{})
	var events []replication.Event
	for i := range 64 {
		events = append(events, replication.Event{
			Keys: []string{fmt.Sprintf("user:%d", i), fmt.Sprintf("user:email:%d@x", i), fmt.Sprintf("user:%d", i/3)},
			LSN:  replication.LSN(100 + i), End: replication.LSN(108 + i),
		})
	}
	b.ReportAllocs()
	for b.Loop() {
		s.startBatch()
		for _, ev := range events {
			s.addEvent(ev)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64*3), "ns/key")
}

// BenchmarkBatchBuildActions is BenchmarkBatchBuild with a version, a
// refreshed value and a stream event per key.
func BenchmarkBatchBuildActions(b *testing.B) {
	s := New(Config{}, &ackRecorder{})
	var events []replication.Event
	for i := range 64 {
		var acts []replication.Action
		for _, k := range []string{fmt.Sprintf("user:%d", i), fmt.Sprintf("user:email:%d@x", i)} {
			acts = append(acts,
				replication.Action{Kind: replication.ActVersion, Key: k + ":v"},
				replication.Action{Kind: replication.ActSet, Key: k, Value: `{"id":1}`},
				replication.Action{Kind: replication.ActStream, Key: k, Target: "events", Table: "public.users", Op: replication.OpUpdate})
		}
		events = append(events, replication.Event{Actions: acts, LSN: replication.LSN(100 + i), End: replication.LSN(108 + i)})
	}
	b.ReportAllocs()
	for b.Loop() {
		s.startBatch()
		for _, ev := range events {
			s.addEvent(ev)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64*6), "ns/action")
}

// BenchmarkApplyActions applies batches of 64 transactions with a version
// raise and a refresh write each (128 scripts' worth of keys in a few
// scripts) to a real Redis with the watermark kept: the round trip and
// Redis's script time per action. Run it with and without
// CDC_UNSAFE=unfenced-actions (-tags failpoints) to see what the
// watermark fence (one GET per script) costs.
func BenchmarkApplyActions(b *testing.B) {
	rd := harness.RedisT(b, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	s := New(Config{Client: rdb, WatermarkKey: "wm"}, &ackRecorder{})
	ctx := context.Background()
	lsn := replication.LSN(0x1000)
	b.ReportAllocs()
	for b.Loop() {
		s.startBatch()
		var end replication.LSN
		for i := range 64 {
			lsn += 0x10
			end = lsn + 8
			s.addEvent(replication.Event{Actions: []replication.Action{
				{Kind: replication.ActVersion, Key: fmt.Sprintf("item:%d:v", i)},
				{Kind: replication.ActSet, Key: fmt.Sprintf("item:%d", i), Value: `{"id":1,"n":2,"name":"some text"}`},
			}, LSN: lsn, End: end})
		}
		if err := s.applyKeys(ctx, nil, end, end); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*128), "ns/action")
}
