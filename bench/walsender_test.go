package bench

import (
	"testing"
	"time"
)

func TestWalsenderDelays(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	points := []walPoint{
		{at: at(0), current: 100, sent: 100, streaming: true},  // caught up
		{at: at(10), current: 200, sent: 100, streaming: true}, // 200 written at 10, not sent: 0 ms old yet
		{at: at(20), current: 300, sent: 150, streaming: true}, // oldest unsent (150..200) seen at 10
		{at: at(30), current: 300, sent: 250, streaming: true}, // 250..300 seen first at 20
		{at: at(40), current: 400, sent: 400, streaming: true}, // caught up
		{at: at(50), current: 500, streaming: false},           // no walsender: skipped
	}
	got := walsenderDelays(points)
	want := []time.Duration{0, 0, 10 * time.Millisecond, 10 * time.Millisecond, 0}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("sample %d: delay %s, want %s (all: %v)", i, got[i], want[i], got)
		}
	}
	p50, p99, mx := delaySummary(got)
	if p50 != 0 || p99 != 10 || mx != 10 {
		t.Errorf("summary p50 %v p99 %v max %v, want 0 10 10", p50, p99, mx)
	}
}
