package bench

import (
	"math"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
)

// percentile returns the q-quantile (0 < q <= 1) of sorted by the
// nearest-rank method: the smallest value such that at least q of all
// values are at or below it. It returns 0 for no values.
func percentile(sorted []time.Duration, q float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if q <= 0 {
		return sorted[0]
	}
	// The small epsilon keeps q*n from landing just above an integer
	// through floating-point error (0.999*1000 = 999.0000000000001).
	rank := int(math.Ceil(q*float64(n) - 1e-9))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// Percentiles summarises latencies.
type Percentiles struct {
	P50, P99, P999, Max time.Duration
}

func summarise(ls []time.Duration) Percentiles {
	s := slices.Clone(ls)
	slices.Sort(s)
	return Percentiles{
		P50:  percentile(s, 0.50),
		P99:  percentile(s, 0.99),
		P999: percentile(s, 0.999),
		Max:  percentile(s, 1),
	}
}

// median returns the median of xs (the mean of the middle two for an even
// count), or 0 for none.
func median(xs []float64) float64 {
	n := len(xs)
	if n == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// rate returns n events per second over d, 0 when d is not positive.
func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// ratio returns a/b, 0 when b is not positive.
func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

// pacer spaces operations evenly at a target rate: operation i is due at
// start + i/rate. An operation that is late is due at once (the schedule
// is not shifted, so a stall is followed by a catch-up burst and the
// average rate holds), which a time.Ticker would not do: it drops ticks.
// A rate of 0 or less means no pacing: every operation is due at once.
type pacer struct {
	start time.Time
	rate  float64
}

// due is when operation i (counting from 0) should start.
func (p pacer) due(i int64) time.Time {
	if p.rate <= 0 {
		return p.start
	}
	return p.start.Add(time.Duration(float64(i) * float64(time.Second) / p.rate))
}

// wait returns how long to sleep at now before operation i.
func (p pacer) wait(i int64, now time.Time) time.Duration {
	return max(p.due(i).Sub(now), 0)
}

// walBytes is the WAL between two positions, 0 when end is not after start.
func walBytes(start, end pglogrepl.LSN) uint64 {
	if end <= start {
		return 0
	}
	return uint64(end - start)
}

// progressOf is how far cur is from start to end, between 0 and 1.
func progressOf(start, end, cur pglogrepl.LSN) float64 {
	if end <= start {
		return 1
	}
	if cur <= start {
		return 0
	}
	if cur >= end {
		return 1
	}
	return float64(cur-start) / float64(end-start)
}
