// Package metrics exposes what cdcinvalidate does as Prometheus metrics and
// answers health checks.
//
// It implements the observers of the replication stream and of the sink, so
// those packages stay free of Prometheus; gauges that describe state (lag,
// positions, the slot) are read when scraped. Metric names start with
// cdcinvalidate_; docs/operations.md lists them all, and the alert rules and the
// dashboard in deploy/ use only these names (a test checks that).
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cdcinvalidate/cdcinvalidate/mapping"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
	"github.com/cdcinvalidate/cdcinvalidate/sink"
	"github.com/cdcinvalidate/cdcinvalidate/verifier"
)

const ns = "cdcinvalidate"

// Positions are the engine's live positions, read at scrape time.
type Positions interface {
	Applied() replication.LSN
	Lag(now time.Time) (time.Duration, int)
}

// StreamPositions are the replication stream's live positions.
type StreamPositions interface {
	Received() replication.LSN
	ServerWALEnd() replication.LSN
}

// SlotStats is what the engine last read about its slot from pg_replication_slots.
type SlotStats struct {
	ConfirmedLSN  replication.LSN
	RetainedBytes int64 // pg_current_wal_lsn() - restart_lsn
	SafeWALSize   int64 // -1 when unlimited (max_slot_wal_keep_size = -1) or unknown
	WALStatus     string
	Active        bool
	At            time.Time
}

// States of the engine as a whole.
var states = []string{
	replication.StateConnecting, replication.StateStreaming, replication.StateBackingOff, replication.StateStandby,
	replication.StateStopped, "redis_unavailable", "failed",
}

// Metrics holds the collectors. Create it with New.
type Metrics struct {
	Registry *prometheus.Registry

	changes      *prometheus.CounterVec
	keysRendered *prometheus.CounterVec
	batches      prometheus.Counter
	batchKeys    prometheus.Histogram
	keysSent     prometheus.Counter
	keysDeleted  prometheus.Counter
	truncates    prometheus.Counter
	redisRTT     prometheus.Histogram
	commitApply  prometheus.Histogram
	errors       *prometheus.CounterVec
	tooLong      prometheus.Counter
	fenced       *prometheus.CounterVec
	flights      prometheus.Counter
	flightWaits  *prometheus.CounterVec
	actions      *prometheus.CounterVec
	reloads      *prometheus.CounterVec

	verifyChecks   *prometheus.CounterVec
	verifyRatio    *prometheus.GaugeVec
	verifyStaleAge prometheus.Histogram
	verifyDropped  prometheus.Counter

	state      atomic.Value // string
	redisDown  atomic.Bool
	pos        Positions
	stream     StreamPositions
	slotMu     sync.Mutex
	slot       SlotStats
	readyLag   time.Duration
	tableCache sync.Map // qualified name -> *tableObserver
	rules      atomic.Pointer[RuleSource]
}

// RuleSource reads the per-rule totals of the rules in force (see
// mapping.Mapper.Stats), at scrape time.
type RuleSource struct {
	Stats            func() []mapping.RuleStats
	RefreshFallbacks func() uint64
}

// AttachRules sets where per-rule totals are read from; a reload of the
// rules attaches the new ones (their totals start again from zero).
func (m *Metrics) AttachRules(src RuleSource) { m.rules.Store(&src) }

// New creates and registers every metric. pos and stream may be set later
// with Attach; until then position gauges read zero.
func New(version string, readyMaxLag time.Duration) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry(), readyLag: readyMaxLag}
	m.state.Store(replication.StateConnecting)
	f := func(c prometheus.Collector) { m.Registry.MustRegister(c) }
	m.changes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "changes_total",
		Help: "Row changes received for rule tables, by table and operation."}, []string{"table", "op"})
	m.keysRendered = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "keys_rendered_total",
		Help: "Cache keys the rules produced from row changes, by table (before deduplication)."}, []string{"table"})
	m.batches = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "batches_total",
		Help: "Redis pipelines applied."})
	m.batchKeys = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "batch_keys",
		Help: "Keys per applied pipeline (after deduplication).", Buckets: prometheus.ExponentialBuckets(1, 4, 8)})
	m.keysSent = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "keys_invalidated_total",
		Help: "Keys sent to Redis for deletion (after deduplication)."})
	m.keysDeleted = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "keys_deleted_total",
		Help: "Invalidated keys that existed in Redis."})
	m.truncates = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "truncate_patterns_total",
		Help: "TRUNCATE patterns applied with SCAN + UNLINK."})
	m.redisRTT = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "redis_roundtrip_seconds",
		Help: "Round trip of one applied Redis pipeline.", Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14)})
	m.commitApply = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "commit_to_apply_seconds",
		Help:    "From a transaction's commit time (server clock) to Redis acknowledging its invalidations.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "errors_total",
		Help: "Errors by class: redis_transient (retried), redis_permanent (stops), replication (reconnects), stalled (an operation still failing after its escalation bound; retried, logged as an error)."}, []string{"class"})
	m.tooLong = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "keys_too_long_total",
		Help: "Keys longer than sink.max_key_bytes, invalidated all the same unless sink.on_long_key is stop (use a digest filter in the template)."})
	m.actions = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "actions_total",
		Help: "Actions besides plain deletes applied in Redis, by action (unlink, del, version, publish, stream, refresh, generation), before deduplication."}, []string{"action"})
	for k := replication.ActUnlink; k <= replication.ActIncr; k++ {
		m.actions.WithLabelValues(k.String())
	}
	m.fenced = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "late_writes_fenced_total",
		Help: "Late writes of a leader that lost the slot while it held them (paused or partitioned), not made because the watermark in Redis was past their commit: truncate (TRUNCATE or explicit patterns), action (version raises, refresh writes, deletes of refreshed keys). Non-zero means a paused leader woke up; its effects were applied by another instance. A restart replaying what it applied before is not counted."}, []string{"what"})
	for _, w := range []string{"truncate", "action"} {
		m.fenced.WithLabelValues(w)
	}
	m.flights = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "sink_flights_total",
		Help: "Batches of plain deletes sent in a pipeline of their own while earlier batches could be in flight (sink.max_in_flight >= 2)."})
	m.flightWaits = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "sink_flight_waits_total",
		Help: "Waits for batches in flight (sink.max_in_flight >= 2), by reason: slots_full (every slot taken; a higher max_in_flight may help), drain (the sink waited for all of them: a batch that may not fly, a TRUNCATE, a new session, the end of the input)."}, []string{"reason"})
	for _, r := range []string{"slots_full", "drain"} {
		m.flightWaits.WithLabelValues(r)
	}
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rule_reloads_total",
		Help: "Rules reloads (SIGHUP) by result: ok (the new rules run), rejected (the old rules keep running; the log says why)."}, []string{"result"})
	m.verifyChecks = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "verify_checks_total",
		Help: "Consistency checks of sampled invalidations (verify: section), by window, table, rule and result: absent and newer are consistent, stale is not, unverifiable cannot be told."},
		[]string{"window", "table", "rule", "result"})
	m.verifyRatio = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "verify_consistency_ratio",
		Help: "Share of the judged checks of a window that were consistent since start (1 with none); five nines is 0.99999."}, []string{"window"})
	m.verifyStaleAge = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "verify_stale_age_seconds",
		Help: "Age of an invalidation when its key was confirmed stale.", Buckets: prometheus.ExponentialBuckets(0.1, 4, 8)})
	m.verifyDropped = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "verify_samples_dropped_total",
		Help: "Sampled invalidations not checked because verify.max_pending checks were waiting."})
	for _, c := range []string{"redis_transient", "redis_permanent", "replication", "stalled"} {
		m.errors.WithLabelValues(c)
	}
	for _, r := range []string{"ok", "rejected"} {
		m.reloads.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.changes, m.keysRendered, m.batches, m.batchKeys, m.keysSent, m.keysDeleted,
		m.truncates, m.redisRTT, m.commitApply, m.errors, m.tooLong, m.actions, m.fenced, m.flights, m.flightWaits, m.reloads,
		m.verifyChecks, m.verifyRatio, m.verifyStaleAge, m.verifyDropped} {
		f(c)
	}
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "build_info", Help: "Build information.",
		ConstLabels: prometheus.Labels{"version": version}})
	bi.Set(1)
	f(bi)
	f(&stateCollector{m: m})
	return m
}

// Verifier returns the consistency verifier's observer (see package verifier).
func (m *Metrics) Verifier() VerifyObserver { return VerifyObserver{m} }

// VerifyObserver records the consistency verifier's checks.
type VerifyObserver struct{ m *Metrics }

// Checked counts one finished check.
func (o VerifyObserver) Checked(window time.Duration, table, rule string, r verifier.Result) {
	o.m.verifyChecks.WithLabelValues(verifier.WindowLabel(window), table, rule, string(r)).Inc()
}

// Ratio sets a window's consistency ratio.
func (o VerifyObserver) Ratio(window time.Duration, ratio float64) {
	o.m.verifyRatio.WithLabelValues(verifier.WindowLabel(window)).Set(ratio)
}

// StaleAge records the age of a stale invalidation.
func (o VerifyObserver) StaleAge(age time.Duration) { o.m.verifyStaleAge.Observe(age.Seconds()) }

// Dropped counts dropped samples.
func (o VerifyObserver) Dropped(n int) { o.m.verifyDropped.Add(float64(n)) }

// Attach sets where position gauges are read from.
func (m *Metrics) Attach(pos Positions, stream StreamPositions) {
	m.slotMu.Lock()
	m.pos, m.stream = pos, stream
	m.slotMu.Unlock()
}

// SetSlot records the slot's latest statistics.
func (m *Metrics) SetSlot(s SlotStats) {
	m.slotMu.Lock()
	m.slot = s
	m.slotMu.Unlock()
}

// RuleReload counts a rules reload: applied (ok) or rejected.
func (m *Metrics) RuleReload(ok bool) {
	if ok {
		m.reloads.WithLabelValues("ok").Inc()
		return
	}
	m.reloads.WithLabelValues("rejected").Inc()
}

// SetFailed marks the engine failed (a permanent error stopped it).
func (m *Metrics) SetFailed() { m.state.Store("failed") }

// CurrentState returns the engine's state as the state metric shows it.
func (m *Metrics) CurrentState() string {
	s := m.state.Load().(string)
	if s == replication.StateStreaming && m.redisDown.Load() {
		return "redis_unavailable"
	}
	return s
}

// replication.Observer

// Table returns the counters of one table.
func (m *Metrics) Table(name string) replication.TableObserver {
	if t, ok := m.tableCache.Load(name); ok {
		return t.(*tableObserver)
	}
	t := &tableObserver{keys: m.keysRendered.WithLabelValues(name)}
	for i, op := range []replication.Op{replication.OpInsert, replication.OpUpdate, replication.OpDelete} {
		t.ops[i] = m.changes.WithLabelValues(name, op.String())
	}
	actual, _ := m.tableCache.LoadOrStore(name, t)
	return actual.(*tableObserver)
}

// State records the stream's state; "failed" stays once set.
func (m *Metrics) State(state string) {
	if m.state.Load().(string) != "failed" {
		m.state.Store(state)
	}
}

// Reconnect counts a lost replication connection.
func (m *Metrics) Reconnect(error) { m.errors.WithLabelValues("replication").Inc() }

type tableObserver struct {
	ops  [3]prometheus.Counter
	keys prometheus.Counter
}

func (t *tableObserver) Change(op replication.Op, keys int) {
	switch op {
	case replication.OpInsert:
		t.ops[0].Inc()
	case replication.OpUpdate:
		t.ops[1].Inc()
	case replication.OpDelete:
		t.ops[2].Inc()
	}
	if keys > 0 {
		t.keys.Add(float64(keys))
	}
}

// sink.Observer

// Batch records one applied pipeline.
func (m *Metrics) Batch(keys, deleted int, rtt time.Duration) {
	m.redisDown.Store(false)
	m.batches.Inc()
	m.batchKeys.Observe(float64(keys))
	m.keysSent.Add(float64(keys))
	m.keysDeleted.Add(float64(deleted))
	m.redisRTT.Observe(rtt.Seconds())
}

// Truncate records one applied TRUNCATE pattern.
func (m *Metrics) Truncate(deleted int, took time.Duration) {
	m.redisDown.Store(false)
	m.truncates.Inc()
	m.keysDeleted.Add(float64(deleted))
}

// Applied records commit-to-apply latencies.
func (m *Metrics) Applied(now time.Time, commitTimes []time.Time) {
	for _, t := range commitTimes {
		m.commitApply.Observe(max(now.Sub(t), 0).Seconds())
	}
}

// KeyTooLong counts a key that was too long to send.
func (m *Metrics) KeyTooLong() { m.tooLong.Inc() }

// Actions counts applied actions of one kind.
func (m *Metrics) Actions(kind replication.ActionKind, n int) {
	m.actions.WithLabelValues(kind.String()).Add(float64(n))
}

// Fenced counts late writes the watermark kept out (see sink.Observer).
func (m *Metrics) Fenced(what string, n int) { m.fenced.WithLabelValues(what).Add(float64(n)) }

// Flight implements sink.Observer.
func (m *Metrics) Flight(ev sink.FlightEvent) {
	if ev == sink.FlightSent {
		m.flights.Inc()
		return
	}
	m.flightWaits.WithLabelValues(ev.String()).Inc()
}

// RedisError counts a failed Redis attempt.
func (m *Metrics) RedisError(_ error, permanent bool) {
	if permanent {
		m.errors.WithLabelValues("redis_permanent").Inc()
		return
	}
	m.redisDown.Store(true)
	m.errors.WithLabelValues("redis_transient").Inc()
}

// Stalled counts an operation that kept failing beyond its escalation bound
// (Redis or the replication connection); readiness already fails while it
// fails.
func (m *Metrics) Stalled(error) { m.errors.WithLabelValues("stalled").Inc() }

// stateCollector reports gauges computed at scrape time.
type stateCollector struct{ m *Metrics }

var (
	descState       = prometheus.NewDesc(ns+"_state", "1 for the engine's current state.", []string{"state"}, nil)
	descApplied     = prometheus.NewDesc(ns+"_applied_lsn", "WAL position up to which Redis acknowledged every invalidation (confirmed to PostgreSQL at the next status update).", nil, nil)
	descReceived    = prometheus.NewDesc(ns+"_received_lsn", "Highest WAL position received from the server.", nil, nil)
	descServerEnd   = prometheus.NewDesc(ns+"_server_wal_end_lsn", "The server's WAL end as of its last message.", nil, nil)
	descLagBytes    = prometheus.NewDesc(ns+"_lag_bytes", "Server WAL end minus the applied position.", nil, nil)
	descLagSeconds  = prometheus.NewDesc(ns+"_lag_seconds", "Age of the oldest received transaction whose invalidations are not yet applied; 0 when caught up.", nil, nil)
	descPending     = prometheus.NewDesc(ns+"_pending_transactions", "Transactions received and not yet applied.", nil, nil)
	descSlotConf    = prometheus.NewDesc(ns+"_slot_confirmed_lsn", "confirmed_flush_lsn of the slot as last read.", nil, nil)
	descSlotRetain  = prometheus.NewDesc(ns+"_slot_retained_wal_bytes", "WAL the slot keeps on the server's disk (pg_current_wal_lsn() - restart_lsn).", nil, nil)
	descSlotSafe    = prometheus.NewDesc(ns+"_slot_safe_wal_size_bytes", "WAL that can still be written before the slot is invalidated (max_slot_wal_keep_size); absent when unlimited.", nil, nil)
	descSlotActive  = prometheus.NewDesc(ns+"_slot_active", "1 when a walsender streams from the slot.", nil, nil)
	descSlotStatus  = prometheus.NewDesc(ns+"_slot_wal_status", "1 for the slot's wal_status (reserved, extended, unreserved, lost).", []string{"status"}, nil)
	descSlotScraped = prometheus.NewDesc(ns+"_slot_stats_timestamp_seconds", "When the slot statistics were read.", nil, nil)
	descRuleChanges = prometheus.NewDesc(ns+"_rule_changes_total", "Row changes a rule applied to (result applied) or "+
		"let pass through its ops, when_changed or when (result skipped), by rule (its index in rules) and "+
		"table; from zero again after a reload.", []string{"rule", "table", "result"}, nil)
	descRuleOutputs = prometheus.NewDesc(ns+"_rule_outputs_total", "Keys and actions a rule produced, by rule and table; from zero again after a reload.", []string{"rule", "table"}, nil)
	descFallbacks   = prometheus.NewDesc(ns+"_refresh_fallbacks_total", "Keys the refresh action deleted instead of writing, because the change did not carry every refreshed column (an unchanged TOASTed value).", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descApplied, descReceived, descServerEnd, descLagBytes, descLagSeconds,
		descPending, descSlotConf, descSlotRetain, descSlotSafe, descSlotActive, descSlotStatus, descSlotScraped,
		descRuleChanges, descRuleOutputs, descFallbacks} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	cur := m.CurrentState()
	for _, s := range states {
		v := 0.0
		if s == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, s)
	}
	m.slotMu.Lock()
	pos, stream, slot := m.pos, m.stream, m.slot
	m.slotMu.Unlock()
	if pos != nil && stream != nil {
		applied := pos.Applied()
		end := stream.ServerWALEnd()
		lag, pending := pos.Lag(time.Now())
		ch <- gauge(descApplied, float64(applied))
		ch <- gauge(descReceived, float64(stream.Received()))
		ch <- gauge(descServerEnd, float64(end))
		lagBytes := 0.0
		if end > applied {
			lagBytes = float64(end - applied)
		}
		ch <- gauge(descLagBytes, lagBytes)
		ch <- gauge(descLagSeconds, lag.Seconds())
		ch <- gauge(descPending, float64(pending))
	}
	if !slot.At.IsZero() {
		ch <- gauge(descSlotConf, float64(slot.ConfirmedLSN))
		ch <- gauge(descSlotRetain, float64(slot.RetainedBytes))
		if slot.SafeWALSize >= 0 {
			ch <- gauge(descSlotSafe, float64(slot.SafeWALSize))
		}
		active := 0.0
		if slot.Active {
			active = 1
		}
		ch <- gauge(descSlotActive, active)
		for _, s := range []string{"reserved", "extended", "unreserved", "lost"} {
			v := 0.0
			if s == slot.WALStatus {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descSlotStatus, prometheus.GaugeValue, v, s)
		}
		ch <- gauge(descSlotScraped, float64(slot.At.Unix()))
	}
	if src := m.rules.Load(); src != nil {
		for _, r := range src.Stats() {
			idx, table := strconv.Itoa(r.Rule.Index()), r.Rule.QualifiedTable()
			ch <- prometheus.MustNewConstMetric(descRuleChanges, prometheus.CounterValue, float64(r.Applied), idx, table, "applied")
			ch <- prometheus.MustNewConstMetric(descRuleChanges, prometheus.CounterValue, float64(r.Skipped), idx, table, "skipped")
			ch <- prometheus.MustNewConstMetric(descRuleOutputs, prometheus.CounterValue, float64(r.Outputs), idx, table)
		}
		ch <- prometheus.MustNewConstMetric(descFallbacks, prometheus.CounterValue, float64(src.RefreshFallbacks()))
	}
}

func gauge(d *prometheus.Desc, v float64) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
}

// Ready reports whether the engine streams, Redis answers, and the lag is
// within the configured bound; the reason says why not.
func (m *Metrics) Ready() (bool, string) {
	st := m.CurrentState()
	if st != replication.StateStreaming {
		return false, "state " + st
	}
	m.slotMu.Lock()
	pos := m.pos
	m.slotMu.Unlock()
	if pos != nil && m.readyLag > 0 {
		if lag, _ := pos.Lag(time.Now()); lag > m.readyLag {
			return false, "lag " + lag.Round(time.Millisecond).String() + " above " + m.readyLag.String()
		}
	}
	return true, "streaming"
}

// Handler serves /metrics, /healthz, /readyz and, when pprof is set, /debug/pprof/.
func (m *Metrics) Handler(withPprof bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if m.CurrentState() == "failed" {
			http.Error(w, "failed", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := m.Ready()
		// ?standby=ok also counts a standby as ready: with several
		// instances (one streams, the others wait to take over) an
		// orchestrator's readiness must include the standbys, or a rollout
		// or a PodDisruptionBudget waits for a standby to stream, which it
		// never does while the leader lives.
		if !ok && r.URL.Query().Get("standby") == "ok" && m.CurrentState() == replication.StateStandby {
			ok, why = true, replication.StateStandby
		}
		if !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready: " + why + "\n"))
	})
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Serve listens on addr and serves Handler until ctx ends. The listener is
// opened before Serve returns an error, so a port in use fails at once.
func Serve(ctx context.Context, addr string, h http.Handler) (net.Addr, func() error, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	wait := func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
	return ln.Addr(), wait, nil
}
