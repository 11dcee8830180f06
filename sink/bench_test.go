package sink

import (
	"fmt"
	"testing"

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
