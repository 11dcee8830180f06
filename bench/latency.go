package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// latency runs the engine on a fresh slot and measures, at each rate, the
// time from a commit to the deletion of its key as Redis reports it.
func (b *bench) latency(ctx context.Context) ([]Latency, error) {
	b.prog.Step("latency: starting the engine")
	if err := b.vacuum(ctx); err != nil {
		return nil, err
	}
	created, err := b.createSlot(ctx, engineSlot)
	if err != nil {
		return nil, err
	}
	// With --profile the engine serves pprof, and each rate's writes
	// are profiled.
	pprofAddr := ""
	if b.opts.ProfileDir != "" {
		if err := os.MkdirAll(b.opts.ProfileDir, 0o755); err != nil {
			return nil, err
		}
		port, err := harness.FreePort()
		if err != nil {
			return nil, err
		}
		pprofAddr = "127.0.0.1:" + strconv.Itoa(port)
	}
	eng, err := b.startEngine(ctx, engineSlot, created, pprofAddr)
	if err != nil {
		return nil, err
	}
	defer stopChild(eng)
	if _, err := b.waitActive(ctx, eng, engineSlot); err != nil {
		return nil, err
	}

	// Keyspace notifications for generic commands (del, also sent for
	// unlink), added to what the server already notifies, on every master.
	tr := newTracker()
	stopWatching, err := b.watchDeletions(ctx, tr)
	if err != nil {
		return nil, err
	}
	defer stopWatching()

	var out []Latency
	for _, r := range b.opts.Rates {
		l, err := b.latencyAt(ctx, r, tr, eng, pprofAddr, engineSlot)
		if err != nil {
			return out, fmt.Errorf("rate %s: %w", r, err)
		}
		out = append(out, l)
	}
	if err := eng.Stop(30 * time.Second); err != nil {
		return out, err
	}
	if err := b.dropSlot(ctx, engineSlot); err != nil {
		return out, err
	}
	if !b.opts.LatencyControl {
		return out, nil
	}
	return out, b.latencyControl(ctx, out)
}

// latencyControl runs the writers again at each rate with pg_recvlogical
// as the only consumer (on a fresh slot, into /dev/null) and records how
// far its walsender fell behind: the share of the latency that any
// consumer pays on this machine at that rate, to compare with the
// engine's walsender delay of the same run.
func (b *bench) latencyControl(ctx context.Context, out []Latency) error {
	b.prog.Step("latency control: pg_recvlogical at the same rates")
	if _, err := b.createSlot(ctx, recvSlot); err != nil {
		return err
	}
	args := []string{"-d", b.dsn, "--slot", recvSlot, "--start", "-f", "/dev/null", "--no-loop"}
	for _, o := range b.pluginOpts {
		args = append(args, "-o", o)
	}
	recv, err := startChild("pg_recvlogical", b.recvBin, args, harness.WithoutCDCEnv(nil))
	if err != nil {
		return err
	}
	b.track(recv)
	if _, err := b.waitActive(ctx, recv, recvSlot); err != nil {
		stopChild(recv)
		return err
	}
	for i, r := range b.opts.Rates {
		l, err := b.latencyAt(ctx, r, nil, recv, "", recvSlot)
		if err != nil {
			stopChild(recv)
			return fmt.Errorf("control at rate %s: %w", r, err)
		}
		out[i].ControlAchievedPerSecond = l.AchievedPerSecond
		out[i].ControlWalsenderP50Ms, out[i].ControlWalsenderP99Ms, out[i].ControlWalsenderMaxMs = l.WalsenderP50Ms, l.WalsenderP99Ms, l.WalsenderMaxMs
	}
	stopChild(recv)
	return b.dropSlot(ctx, recvSlot)
}

// keyspaceFlags adds K (keyspace channel) and g (generic commands) to the
// server's notify-keyspace-events flags, unless they are covered already.
func keyspaceFlags(old string) string {
	out := old
	if !strings.Contains(out, "K") {
		out += "K"
	}
	if !strings.Contains(out, "g") && !strings.Contains(out, "A") {
		out += "g"
	}
	return out
}

// writerConns is how many connections write at a rate: one per 1,000
// commits/s (a single connection's round trips would otherwise limit the
// rate on a busy machine), at most 4; maxConns for max.
func writerConns(r Rate, maxConns int) int {
	if r.Max {
		return maxConns
	}
	return min(max(int(math.Ceil(r.PerSecond/1000)), 1), 4)
}

// latencyAt runs the writers at rate r while consumer streams from slot,
// sampling the slot's walsender. With a tracker (the engine's run) each
// write's key is cached first and its invalidation awaited; without one
// (the pg_recvlogical control) only the walsender's delay is measured.
func (b *bench) latencyAt(ctx context.Context, r Rate, tr *tracker, consumer *harness.Process, pprofAddr, slot string) (Latency, error) {
	l := Latency{Rate: r.String(), TargetPerSecond: r.PerSecond, Conns: writerConns(r, b.opts.MaxConns)}
	b.prog.Step("latency at %s commits/s for %s", r, b.opts.Duration)
	conns := make([]*pgx.Conn, l.Conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	const update = `UPDATE ` + table + ` SET n = n + 1 WHERE id = $1`
	// The writers cache keys item:1..item:Rows (removed at the end with
	// given servers; in the control no consumer deletes them).
	b.mu.Lock()
	b.keysSet = max(b.keysSet, b.opts.Rows)
	b.mu.Unlock()
	for i := range conns {
		c, err := pgx.Connect(ctx, b.dsn)
		if err != nil {
			return l, err
		}
		conns[i] = c
		if _, err := c.Prepare(ctx, "update", update); err != nil {
			return l, err
		}
	}

	var profiled chan error
	if pprofAddr != "" {
		profiled = make(chan error, 1)
		secs := max(int(b.opts.Duration.Seconds()), 1)
		path := filepath.Join(b.opts.ProfileDir, "engine-cpu-latency-"+r.String()+".pprof")
		go func() {
			profiled <- fetchProfile(ctx, "http://"+pprofAddr+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), path)
		}()
		l.CPUProfile = path
	}

	start := time.Now().Add(20 * time.Millisecond)
	deadline := start.Add(b.opts.Duration)
	p := pacer{start: start, rate: r.PerSecond}
	var seq, nextID, writes atomic.Int64
	var lastDone atomic.Int64 // unix nanoseconds
	g, gctx := errgroup.WithContext(ctx)
	for _, conn := range conns {
		g.Go(func() error {
			for {
				i := seq.Add(1) - 1
				if !r.Max && !p.due(i).Before(deadline) {
					return nil
				}
				if d := p.wait(i, time.Now()); d > 0 {
					select {
					case <-gctx.Done():
						return gctx.Err()
					case <-time.After(d):
					}
				}
				if r.Max && !time.Now().Before(deadline) {
					return nil
				}
				// The next row whose key is not still awaited; when every
				// row's is (a small table at a high rate), wait for one.
				var id int64
				var key string
				for tries := 1; tr != nil; tries++ {
					id = nextID.Add(1)%int64(b.opts.Rows) + 1
					key = keyPrefix + strconv.FormatInt(id, 10)
					if tr.begin(key) {
						break
					}
					if tries%b.opts.Rows == 0 {
						if !time.Now().Before(deadline.Add(lostAfter)) {
							return fmt.Errorf("every one of the %d rows still has a write awaiting invalidation after %s", b.opts.Rows, lostAfter)
						}
						select {
						case <-gctx.Done():
							return gctx.Err()
						case <-time.After(time.Millisecond):
						}
					}
				}
				if tr == nil {
					id = nextID.Add(1)%int64(b.opts.Rows) + 1
					key = keyPrefix + strconv.FormatInt(id, 10)
				}
				// The key is cached before each write in the control too:
				// the walsender then competes with the same bench work (a
				// Redis round trip per write) in both runs, and only the
				// consumer and the deletions' notifications differ.
				if err := b.rdb.Set(gctx, key, "cached", 0).Err(); err != nil {
					return fmt.Errorf("redis: SET %s: %w", key, err)
				}
				if _, err := conn.Exec(gctx, "update", id); err != nil {
					return fmt.Errorf("UPDATE: %w", err)
				}
				now := time.Now()
				if tr != nil {
					tr.committed(key, now)
				}
				writes.Add(1)
				for {
					last := lastDone.Load()
					if now.UnixNano() <= last || lastDone.CompareAndSwap(last, now.UnixNano()) {
						break
					}
				}
			}
		})
	}
	// The walsender's delay while the writers run (and until the last
	// invalidation arrived or was given up).
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	sampled := make(chan []walPoint, 1)
	go func() { sampled <- b.sampleWalsender(sampleCtx, slot) }()
	probed := make(chan []time.Duration, 1)
	if tr != nil { // the control run has no engine behind the proxy
		go func() { probed <- b.sampleProxyRTT(sampleCtx) }()
	}
	// Progress while the writers run.
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				if tr != nil {
					b.prog.Detail("%s writes, %d awaiting invalidation", thousands(writes.Load()), tr.pendingCount())
				} else {
					b.prog.Detail("%s writes", thousands(writes.Load()))
				}
			}
		}
	}()
	err := g.Wait()
	close(stopProgress)
	<-progressDone
	if err != nil {
		return l, err
	}
	if !consumer.Running() {
		return l, exitedUnexpectedly(consumer)
	}
	if profiled != nil {
		if err := <-profiled; err != nil {
			return l, fmt.Errorf("CPU profile: %w", err)
		}
	}
	l.Writes = int(writes.Load())
	l.AchievedPerSecond = rate(l.Writes, time.Unix(0, lastDone.Load()).Sub(start))

	if tr == nil {
		// The control: let the walsender catch up with the last writes.
		b.waitSent(ctx, slot, lostAfter)
		stopSampling()
		l.WalsenderP50Ms, l.WalsenderP99Ms, l.WalsenderMaxMs = delaySummary(walsenderDelays(<-sampled))
		return l, nil
	}
	b.prog.Detail("waiting up to %s for the last invalidations", lostAfter)
	lost, lat := tr.drain(ctx, lostAfter)
	stopSampling()
	l.WalsenderP50Ms, l.WalsenderP99Ms, l.WalsenderMaxMs = delaySummary(walsenderDelays(<-sampled))
	var rtt time.Duration
	if rtts := <-probed; len(rtts) > 0 {
		rp := summarise(rtts)
		rtt = rp.P50
		l.RedisRTTP50Ms, l.RedisRTTP99Ms = ms(rp.P50), ms(rp.P99)
	}
	l.Lost = lost
	ps := summarise(lat)
	l.P50Ms, l.P99Ms, l.P999Ms, l.MaxMs = ms(ps.P50), ms(ps.P99), ms(ps.P999), ms(ps.Max)
	if !r.Max && r.PerSecond == TargetP99Rate {
		// The latency includes the engine's round trip to Redis once
		// (--redis-rtt): the target allows for it.
		met := ps.P99 <= TargetP99+b.opts.RedisRTT && len(lat) > 0
		l.TargetP99Ms = ms(TargetP99 + b.opts.RedisRTT)
		l.Met = &met
		if rtt > 0 {
			// The same target over the round trip the proxy delivered.
			m := ps.P99 <= TargetP99+rtt && len(lat) > 0
			l.TargetP99MeasuredRTTMs, l.MetMeasuredRTT = ms(TargetP99+rtt), &m
		}
	}
	return l, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// tracker matches writes to the deletions of their keys. A deletion may be
// seen before the writer's Exec returned (the engine can be that quick):
// its latency then counts as 0.
type tracker struct {
	mu      sync.Mutex
	pending map[string]*awaited
	lat     []time.Duration
}

type awaited struct {
	committed, deleted time.Time
}

func newTracker() *tracker { return &tracker{pending: map[string]*awaited{}} }

// begin registers a write of key before it happens; false if a write of
// key is still awaiting its invalidation.
func (t *tracker) begin(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, busy := t.pending[key]; busy {
		return false
	}
	t.pending[key] = &awaited{}
	return true
}

// committed records when the write of key was acknowledged.
func (t *tracker) committed(key string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.pending[key]
	if a == nil {
		return
	}
	a.committed = at
	if !a.deleted.IsZero() {
		t.done(key, a)
	}
}

// deleted records that Redis reported key deleted.
func (t *tracker) deleted(key string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := t.pending[key]
	if a == nil || !a.deleted.IsZero() {
		return // a key the bench does not await, or a second event
	}
	a.deleted = at
	if !a.committed.IsZero() {
		t.done(key, a)
	}
}

func (t *tracker) done(key string, a *awaited) {
	t.lat = append(t.lat, max(a.deleted.Sub(a.committed), 0))
	delete(t.pending, key)
}

func (t *tracker) pendingCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending)
}

// drain waits until every committed write was seen invalidated or is
// older than after, then returns how many were not (and forgets them),
// and the latencies recorded since the last drain.
func (t *tracker) drain(ctx context.Context, after time.Duration) (lost int, lat []time.Duration) {
	for {
		t.mu.Lock()
		now := time.Now()
		waiting := false
		for _, a := range t.pending {
			if !a.committed.IsZero() && now.Sub(a.committed) < after {
				waiting = true
				break
			}
		}
		if !waiting || ctx.Err() != nil {
			for k, a := range t.pending {
				if !a.committed.IsZero() {
					lost++
				}
				delete(t.pending, k)
			}
			lat, t.lat = t.lat, nil
			t.mu.Unlock()
			return lost, lat
		}
		t.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
}
