package bench

import (
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

func durations(ms ...int) []time.Duration {
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		out[i] = time.Duration(m) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond // 1..100 ms
	}
	thousand := make([]time.Duration, 1000)
	for i := range thousand {
		thousand[i] = time.Duration(i+1) * time.Microsecond // 1..1000 µs
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one value p50", durations(7), 0.5, 7 * time.Millisecond},
		{"one value max", durations(7), 1, 7 * time.Millisecond},
		{"q zero is the minimum", durations(1, 2, 3), 0, time.Millisecond},
		{"p50 of 1..100", hundred, 0.5, 50 * time.Millisecond},
		{"p99 of 1..100", hundred, 0.99, 99 * time.Millisecond},
		{"p99.9 of 1..100 is the max", hundred, 0.999, 100 * time.Millisecond},
		{"max of 1..100", hundred, 1, 100 * time.Millisecond},
		{"p99.9 of 1..1000 (no float overshoot)", thousand, 0.999, 999 * time.Microsecond},
		{"p99 of 1..1000", thousand, 0.99, 990 * time.Microsecond},
		{"p50 of two is the lower", durations(1, 9), 0.5, time.Millisecond},
		{"p50 of three", durations(1, 2, 9), 0.5, 2 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.q); got != tt.want {
				t.Errorf("percentile(%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestSummariseSortsAndKeepsInput(t *testing.T) {
	in := durations(5, 1, 4, 2, 3)
	got := summarise(in)
	want := Percentiles{P50: 3 * time.Millisecond, P99: 5 * time.Millisecond, P999: 5 * time.Millisecond, Max: 5 * time.Millisecond}
	if got != want {
		t.Errorf("summarise = %+v, want %+v", got, want)
	}
	if in[0] != 5*time.Millisecond {
		t.Errorf("summarise sorted its input: %v", in)
	}
	if (summarise(nil) != Percentiles{}) {
		t.Error("summarise(nil) is not zero")
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1}, 2},
		{[]float64{3, 1, 2}, 2},
		{[]float64{10, 1, 2, 3}, 2.5},
		{[]float64{1.2, 1.1, 5}, 1.2},
	}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestRateAndRatio(t *testing.T) {
	tests := []struct {
		n    int
		d    time.Duration
		want float64
	}{
		{200_000, 2 * time.Second, 100_000},
		{1, 10 * time.Millisecond, 100},
		{5, 0, 0},
		{5, -time.Second, 0},
	}
	for _, tt := range tests {
		if got := rate(tt.n, tt.d); got != tt.want {
			t.Errorf("rate(%d, %v) = %v, want %v", tt.n, tt.d, got, tt.want)
		}
	}
	for _, tt := range []struct{ a, b, want float64 }{{2.3, 2, 1.15}, {1, 0, 0}, {1, -1, 0}, {0, 4, 0}} {
		if got := ratio(tt.a, tt.b); got < tt.want-1e-12 || got > tt.want+1e-12 {
			t.Errorf("ratio(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestPacer(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		rate float64
		i    int64
		want time.Duration // due after t0
	}{
		{"first op at start", 2000, 0, 0},
		{"2000/s: op 1 after 500µs", 2000, 1, 500 * time.Microsecond},
		{"2000/s: op 2000 after 1s", 2000, 2000, time.Second},
		{"500/s: op 5000 after 10s (no drift)", 500, 5000, 10 * time.Second},
		{"3/s: op 1 after a third", 3, 1, 333333333 * time.Nanosecond},
		{"unpaced: always at start", 0, 12345, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pacer{start: t0, rate: tt.rate}
			if got := p.due(tt.i).Sub(t0); got != tt.want {
				t.Errorf("due(%d) = t0+%v, want t0+%v", tt.i, got, tt.want)
			}
		})
	}
	p := pacer{start: t0, rate: 1000}
	waits := []struct {
		i    int64
		now  time.Duration
		want time.Duration
	}{
		{10, 0, 10 * time.Millisecond}, // early: sleep until due
		{10, 4 * time.Millisecond, 6 * time.Millisecond},
		{10, 10 * time.Millisecond, 0}, // on time
		{10, time.Second, 0},           // late: at once, never negative
		{1000, 500 * time.Millisecond, 500 * time.Millisecond},
	}
	for _, w := range waits {
		if got := p.wait(w.i, t0.Add(w.now)); got != w.want {
			t.Errorf("wait(%d) at t0+%v = %v, want %v", w.i, w.now, got, w.want)
		}
	}
}

// TestPacerHoldsTheRate: a writer that follows the pacer and stalls once
// still issues rate*duration operations in the duration.
func TestPacerHoldsTheRate(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	p := pacer{start: t0, rate: 2000}
	deadline := t0.Add(time.Second)
	now := t0
	n := 0
	for i := int64(0); p.due(i).Before(deadline); i++ {
		now = now.Add(p.wait(i, now))
		if i == 100 {
			now = now.Add(50 * time.Millisecond) // a stall
		}
		now = now.Add(100 * time.Microsecond) // the operation
		n++
	}
	if n != 2000 {
		t.Errorf("ops in 1s at 2000/s = %d, want 2000", n)
	}
	if now.After(deadline.Add(time.Millisecond)) {
		t.Errorf("the writer caught up only at t0+%v", now.Sub(t0))
	}
}

func TestLSNMath(t *testing.T) {
	lsn := func(s string) pglogrepl.LSN {
		l, err := pglogrepl.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	tests := []struct {
		start, end, cur string
		bytes           uint64
		progress        float64
	}{
		{"0/1000", "0/2000", "0/1800", 0x1000, 0.5},
		{"0/1000", "0/2000", "0/0", 0x1000, 0},
		{"0/1000", "0/2000", "0/3000", 0x1000, 1},
		{"0/FFFFFF00", "1/100", "1/0", 0x200, 0.5}, // across the 4 GB boundary
		{"0/2000", "0/2000", "0/2000", 0, 1},       // empty range: done
		{"0/3000", "0/2000", "0/0", 0, 1},          // end before start
	}
	for _, tt := range tests {
		s, e, c := lsn(tt.start), lsn(tt.end), lsn(tt.cur)
		if got := walBytes(s, e); got != tt.bytes {
			t.Errorf("walBytes(%s, %s) = %d, want %d", tt.start, tt.end, got, tt.bytes)
		}
		if got := progressOf(s, e, c); got != tt.progress {
			t.Errorf("progressOf(%s, %s, %s) = %v, want %v", tt.start, tt.end, tt.cur, got, tt.progress)
		}
	}
}
