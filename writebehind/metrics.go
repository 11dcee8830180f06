package writebehind

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// FlusherStats are running totals of a Flusher, safe to read at any time.
type FlusherStats struct {
	// Windows are transactions committed (each one window).
	Windows atomic.Uint64
	// EntriesApplied are stream entries applied by those transactions.
	EntriesApplied atomic.Uint64
	// EntriesSkipped are entries redelivered after they had been applied
	// (a flusher died between its commit and its acknowledgement); they
	// were acknowledged, not applied again.
	EntriesSkipped atomic.Uint64
	// OpsApplied are the operations (increments and sets) in EntriesApplied.
	OpsApplied atomic.Uint64
	// RowsWritten are row upserts: OpsApplied / RowsWritten is the
	// aggregation factor.
	RowsWritten atomic.Uint64
	// Claimed are pending entries taken over at the start of a session.
	Claimed atomic.Uint64
	// Retries are sessions ended by a PostgreSQL or Redis failure.
	Retries atomic.Uint64
	// Lost are entries found deleted from the stream before they were
	// applied (someone trimmed the stream); never expected.
	Lost atomic.Uint64
	// RedisBehind counts sessions that found Redis behind PostgreSQL.
	RedisBehind atomic.Uint64

	backlog      atomic.Int64 // stream length when last read
	lastLagNanos atomic.Int64
}

// Backlog is the stream's length when last read: the entries not yet
// applied, plus at most one applied entry that trimming keeps.
func (s *FlusherStats) Backlog() int64 { return s.backlog.Load() }

// LastLag is the age of the oldest entry of the last applied window at its
// commit.
func (s *FlusherStats) LastLag() time.Duration { return time.Duration(s.lastLagNanos.Load()) }

const metricsNS, metricsSub = "cdcinvalidate", "writebehind"

type flusherMetrics struct {
	collectors []prometheus.Collector
	lag        prometheus.Histogram
	retries    *prometheus.CounterVec
	active     prometheus.Gauge
}

func newFlusherMetrics(s *FlusherStats) *flusherMetrics {
	m := &flusherMetrics{}
	counter := func(name, help string, v *atomic.Uint64) {
		m.collectors = append(m.collectors, prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: name, Help: help,
		}, func() float64 { return float64(v.Load()) }))
	}
	counter("windows_applied_total", "Windows committed to PostgreSQL (one transaction each).", &s.Windows)
	counter("entries_applied_total", "Stream entries applied to PostgreSQL.", &s.EntriesApplied)
	counter("entries_skipped_total", "Redelivered entries that had already been applied (acknowledged, not applied again).", &s.EntriesSkipped)
	counter("ops_applied_total", "Increments and sets applied to PostgreSQL.", &s.OpsApplied)
	counter("rows_written_total", "Row upserts; ops_applied_total / rows_written_total is the aggregation factor.", &s.RowsWritten)
	counter("entries_claimed_total", "Pending entries taken over from earlier flusher sessions.", &s.Claimed)
	counter("entries_lost_total", "Entries deleted from the stream before they were applied (never expected: someone trimmed the stream).", &s.Lost)
	m.collectors = append(m.collectors, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: metricsNS, Subsystem: metricsSub, Name: "pending_entries",
		Help: "Entries in the stream not yet applied to PostgreSQL (stream length when last read).",
	}, func() float64 { return float64(s.backlog.Load()) }))
	m.lag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: metricsNS, Subsystem: metricsSub, Name: "flush_lag_seconds",
		Help:    "Age of the oldest entry of each window when the window committed.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 12),
	})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNS, Subsystem: metricsSub, Name: "retries_total",
		Help: "Flusher sessions ended by a failure and retried, by cause (postgres, redis).",
	}, []string{"cause"})
	m.active = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: metricsNS, Subsystem: metricsSub, Name: "active",
		Help: "1 while this flusher holds the stream's lock and applies; 0 while it stands by or retries.",
	})
	m.collectors = append(m.collectors, m.lag, m.retries, m.active)
	return m
}

func (m *flusherMetrics) register(r prometheus.Registerer) error {
	var errs []error
	for _, c := range m.collectors {
		if err := r.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
