package bench

import (
	"context"
	"sort"
	"time"

	"github.com/jackc/pglogrepl"
)

// walsenderEvery is how often the walsender's sent position is sampled
// during the latency measurement.
const walsenderEvery = 10 * time.Millisecond

// walPoint is one sample: when, the server's current WAL position, and the
// position the walsender serving the slot had sent.
type walPoint struct {
	at        time.Time
	current   pglogrepl.LSN
	sent      pglogrepl.LSN
	streaming bool
}

// walsenderDelays turns samples into the walsender's delay at each one: how
// long the oldest WAL not yet sent had existed, i.e. the time since the
// first sample whose current position was past the sent position (zero
// when everything written had been sent). It is a lower bound with the
// sampling interval's resolution: the unsent WAL existed at that earlier
// sample at the latest. Samples without an active walsender are skipped.
// Every consumer of the slot, whatever it does, sees at least this delay:
// it is the walsender's share of the commit-to-invalidation latency.
func walsenderDelays(points []walPoint) []time.Duration {
	var out []time.Duration
	first := 0 // the first sample whose current position may be past sent
	for _, p := range points {
		if !p.streaming {
			continue
		}
		if p.sent >= p.current {
			out = append(out, 0)
			continue
		}
		// Samples are in time order and current positions never go back,
		// so the search can start where the last one ended (sent
		// positions never go back either).
		for first < len(points) && points[first].current <= p.sent {
			first++
		}
		if first >= len(points) || points[first].at.After(p.at) {
			out = append(out, 0)
			continue
		}
		out = append(out, p.at.Sub(points[first].at))
	}
	return out
}

// sampleWalsender samples the walsender serving slot every walsenderEvery
// until ctx ends, and returns the samples.
func (b *bench) sampleWalsender(ctx context.Context, slot string) []walPoint {
	const q = `SELECT pg_current_wal_lsn()::text, coalesce((SELECT r.sent_lsn::text FROM pg_stat_replication r
		JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1), '')`
	var out []walPoint
	t := time.NewTicker(walsenderEvery)
	defer t.Stop()
	for {
		var cur, sent string
		if err := b.db.QueryRow(ctx, q, slot).Scan(&cur, &sent); err == nil {
			p := walPoint{at: time.Now()}
			p.current, _ = pglogrepl.ParseLSN(cur)
			if sent != "" {
				p.sent, _ = pglogrepl.ParseLSN(sent)
				p.streaming = true
			}
			out = append(out, p)
		}
		select {
		case <-ctx.Done():
			return out
		case <-t.C:
		}
	}
}

// delaySummary is the p50, p99 and max of delays in milliseconds.
func delaySummary(ds []time.Duration) (p50, p99, maxMs float64) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return ms(rank(0.50)), ms(rank(0.99)), ms(s[len(s)-1])
}

// waitSent waits until the walsender serving slot has sent the WAL written
// so far, or for at most limit.
func (b *bench) waitSent(ctx context.Context, slot string, limit time.Duration) {
	const q = `SELECT pg_current_wal_lsn() <= coalesce((SELECT r.sent_lsn FROM pg_stat_replication r
		JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1), '0/0')`
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var done bool
		if err := b.db.QueryRow(ctx, q, slot).Scan(&done); err == nil && done {
			return
		}
		time.Sleep(walsenderEvery)
	}
}
