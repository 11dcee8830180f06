package main

// The leaderboard step: write-behind counters (package writebehind) absorb
// hot increments in Redis, and a flusher applies them to PostgreSQL
// exactly once, through a stop and a restart.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/mapping"
	"github.com/cdcinvalidate/cdcinvalidate/writebehind"
)

const (
	scoresSchema = `CREATE TABLE scores (board text, player text, score bigint NOT NULL DEFAULT 0, PRIMARY KEY (board, player))`
	lbBoard      = "daily"
	lbWriters    = 4   // goroutines calling Apply
	lbBatch      = 100 // increments per Apply: one script call, one stream entry
	lbBatches    = 300 // 30,000 increments in all
	lbPause      = 20 * time.Millisecond
	drainTimeout = 30 * time.Second
)

var lbPlayers = []string{"ann", "bob", "cid"}

// scoreMappings are the demo's write-behind keys.
func scoreMappings() []writebehind.Mapping {
	return []writebehind.Mapping{{Key: "score:{board}:{player}", Table: "scores", Column: "score", Mode: writebehind.Add}}
}

// checkScoreKeys refuses the step if a rule of rules.yaml could delete the
// score keys: they are the live values, ahead of the database.
func checkScoreKeys(root string) error {
	cfg, err := config.Load(filepath.Join(root, "rules.yaml"), func(string) (string, bool) { return "", false })
	if err != nil {
		return fmt.Errorf("rules.yaml: %w", err)
	}
	var globs []string
	for _, r := range cfg.Rules {
		for _, k := range r.Keys {
			t, err := mapping.ParseTemplate(k)
			if err != nil {
				return fmt.Errorf("rules.yaml key %q: %w", k, err)
			}
			globs = append(globs, t.Glob())
		}
	}
	return writebehind.CheckGlobs(globs, scoreMappings())
}

// flusherRun is one flusher running in a goroutine; stop cancels it and
// waits for Run to return.
type flusherRun struct {
	f      *writebehind.Flusher
	cancel context.CancelFunc
	done   chan error
}

func (d *demo) startFlusher(ctx context.Context) (*flusherRun, error) {
	f, err := writebehind.NewFlusher(d.rdb, scoreMappings(), writebehind.FlusherOptions{DSN: d.pg.DSN("postgres")})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &flusherRun{f: f, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- f.Run(ctx) }()
	return r, nil
}

func (r *flusherRun) stop() error {
	r.cancel()
	err := <-r.done
	r.done <- err // stop may be called again
	if err != nil {
		return fmt.Errorf("the write-behind flusher stopped with an error: %w", err)
	}
	return nil
}

func (d *demo) leaderboard(ctx context.Context) error {
	if err := checkScoreKeys(d.root); err != nil {
		return err
	}
	d.say("%s(writebehind.CheckGlobs: no pattern of rules.yaml can match score:*, so the engine never deletes a score)", indent)
	if _, err := d.db.Exec(ctx, scoresSchema); err != nil {
		return fmt.Errorf("create table scores: %w", err)
	}
	d.say("%sSQL   %s;", indent, scoresSchema)
	d.say("%smapping  score:{board}:{player} -> scores.score (Add); flusher running in this process", indent)
	w, err := writebehind.NewWriter(d.rdb, scoreMappings(), writebehind.WriterOptions{})
	if err != nil {
		return err
	}
	start := time.Now()
	fl, err := d.startFlusher(ctx)
	if err != nil {
		return err
	}
	first := fl
	defer func() { _ = fl.stop() }()

	// Writers: each batch adds points to the players in turn (1..5, plus
	// 1 for bob and 2 for cid, so that the board has an order); acked holds
	// what Apply acknowledged, per player.
	var (
		mu      sync.Mutex
		acked   = map[string]int64{}
		batches atomic.Int64
		wg      sync.WaitGroup
		errs    = make(chan error, lbWriters)
	)
	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	d.say("%s%d goroutines add %d increments to %s on board %q, in Apply batches of %d",
		indent, lbWriters, lbBatches*lbBatch, strings.Join(lbPlayers, ", "), lbBoard, lbBatch)
	for g := range lbWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := g; b < lbBatches; b += lbWriters {
				ops := make([]writebehind.Op, lbBatch)
				sum := map[string]int64{}
				for i := range ops {
					pi := (b + i) % len(lbPlayers)
					p, pts := lbPlayers[pi], int64(1+(b*7+i)%5+pi)
					ops[i] = writebehind.IncrOp("score:"+lbBoard+":"+p, pts)
					sum[p] += pts
				}
				if _, err := w.Apply(wctx, ops...); err != nil {
					errs <- fmt.Errorf("Apply: %w", err)
					return
				}
				mu.Lock()
				for p, n := range sum {
					acked[p] += n
				}
				mu.Unlock()
				batches.Add(1)
				select {
				case <-wctx.Done():
					return
				case <-time.After(lbPause):
				}
			}
		}()
	}
	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()
	fail := func(err error) error {
		stopWriters()
		<-writersDone
		return err
	}
	reached := func(n int64) error {
		err := harness.Poll(ctx, 60*time.Second, func() (bool, error) {
			select {
			case err := <-errs:
				return false, err
			default:
				return batches.Load() >= n, nil
			}
		})
		return err
	}

	if err := reached(lbBatches / 3); err != nil {
		return fail(err)
	}
	if err := d.showScores(ctx, "live in Redis"); err != nil {
		return fail(err)
	}
	if err := reached(lbBatches / 2); err != nil {
		return fail(err)
	}
	if err := fl.stop(); err != nil {
		return fail(err)
	}
	d.say("%sflusher STOPPED mid-way (its context cancelled: a stop and a restart, not kill -9; the kill -9", indent)
	d.say("%sproof is TestFaultsExactlyOnce in writebehind/); it had applied %d windows; the writes go on",
		indent, first.f.Stats.Windows.Load())
	select { // let a backlog build up while no flusher runs
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-time.After(500 * time.Millisecond):
	}
	backlog, err := d.undrained(ctx)
	if err != nil {
		return fail(err)
	}
	if fl, err = d.startFlusher(ctx); err != nil {
		return fail(err)
	}
	d.say("%sa new flusher starts with %d entries waiting in the stream", indent, backlog)

	<-writersDone
	select {
	case err := <-errs:
		return err
	default:
	}
	err = harness.Poll(ctx, drainTimeout, func() (bool, error) {
		n, err := d.undrained(ctx)
		return n == 0, err
	})
	if errors.Is(err, harness.ErrPollTimeout) {
		return fmt.Errorf("the write-behind stream was not drained within %s (flusher retries: %d)", drainTimeout, fl.f.Stats.Retries.Load())
	}
	if err != nil {
		return err
	}
	d.say("%sall %d batches acknowledged; stream drained (pending 0), %.1f s after the first write",
		indent, batches.Load(), time.Since(start).Seconds())

	d.say("%s%-8s %10s %10s %14s", indent, "player", "Redis", "database", "acknowledged")
	var total int64
	var bad []string
	ranked := slices.Clone(lbPlayers)
	slices.SortFunc(ranked, func(a, b string) int { return cmp.Compare(acked[b], acked[a]) })
	for _, p := range ranked {
		key := "score:" + lbBoard + ":" + p
		rv, err := d.rdb.Get(ctx, key).Int64()
		if err != nil {
			return fmt.Errorf("GET %s: %w", key, err)
		}
		var dv int64
		if err := d.db.QueryRow(ctx, `SELECT score FROM scores WHERE board = $1 AND player = $2`, lbBoard, p).Scan(&dv); err != nil {
			return fmt.Errorf("read the score of %s: %w", p, err)
		}
		d.say("%s%-8s %10d %10d %14d", indent, p, rv, dv, acked[p])
		total += acked[p]
		if rv != acked[p] || dv != acked[p] {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("write-behind scores differ between Redis, the database and the acknowledged writes for %s", strings.Join(bad, ", "))
	}
	rows := first.f.Stats.RowsWritten.Load() + fl.f.Stats.RowsWritten.Load()
	windows := first.f.Stats.Windows.Load() + fl.f.Stats.Windows.Load()
	d.say("%sequal, nothing lost, nothing twice: %d increments (%d points) became %d row writes in %d transactions",
		indent, batches.Load()*lbBatch, total, rows, windows)
	return fl.stop()
}

// showScores prints the board's scores as Redis holds them.
func (d *demo) showScores(ctx context.Context, what string) error {
	var parts []string
	for _, p := range lbPlayers {
		v, err := d.rdb.Get(ctx, "score:"+lbBoard+":"+p).Result()
		if err != nil {
			return fmt.Errorf("GET score:%s:%s: %w", lbBoard, p, err)
		}
		parts = append(parts, p+" "+v)
	}
	var points int64
	if err := d.db.QueryRow(ctx, `SELECT coalesce(sum(score), 0) FROM scores`).Scan(&points); err != nil {
		return fmt.Errorf("read the scores: %w", err)
	}
	d.say("%s%s: %s   (the database holds %d points so far)", indent, what, strings.Join(parts, ", "), points)
	return nil
}

// undrained is the number of stream entries not yet applied: pending in
// the flushers' group, or not yet delivered.
func (d *demo) undrained(ctx context.Context) (int64, error) {
	groups, err := d.rdb.XInfoGroups(ctx, writebehind.DefaultStream).Result()
	if err != nil {
		return 0, fmt.Errorf("XINFO GROUPS %s: %w", writebehind.DefaultStream, err)
	}
	for _, g := range groups {
		if g.Name == writebehind.DefaultGroup && g.Lag >= 0 {
			return g.Pending + g.Lag, nil
		}
	}
	return 0, fmt.Errorf("stream %s has no group %s with a known lag (Redis 7 needed)", writebehind.DefaultStream, writebehind.DefaultGroup)
}
