package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// workload is one catch-up workload: Rows single-row UPDATEs of the bench
// table, batch of them per transaction.
type workload struct {
	name, desc string
	batch      int
	shape      string  // "batched" or "single"
	v          variant // the rules (workload_options.go)
}

// workloads are the catch-up workloads: both shapes of every variant, the
// reference (the delete rule) first.
func (b *bench) workloads() []workload {
	var out []workload
	for _, v := range b.opts.variants() {
		out = append(out, b.shapes(v)...)
	}
	return out
}

func (b *bench) shapes(v variant) []workload {
	ws := []workload{
		{name: "batched", desc: fmt.Sprintf("batched, %s rows/txn", thousands(int64(b.opts.Batch))), batch: b.opts.Batch},
		{name: "single", desc: "single-row txns", batch: 1},
	}
	for i := range ws {
		ws[i].shape, ws[i].v = ws[i].name, v
		if n := v.name(b.opts.VerifyRate); n != "" {
			ws[i].name += " " + n
			ws[i].desc += ", " + n
		}
	}
	return ws
}

func (w workload) transactions(rows int) int { return (rows + w.batch - 1) / w.batch }

// targetRatio is the catch-up goal for the workload's shape.
func (w workload) targetRatio() float64 {
	if w.batch == 1 {
		return TargetCatchUpRatioSingle
	}
	return TargetCatchUpRatio
}

// catchUp measures one workload opts.Repeat times.
func (b *bench) catchUp(ctx context.Context, w workload) (*CatchUp, error) {
	c := &CatchUp{
		Workload: w.name, Description: w.desc, Changes: b.opts.Rows,
		Transactions: w.transactions(b.opts.Rows), TargetRatio: w.targetRatio(),
		CatchUpVariant: CatchUpVariant{Shape: w.shape, Variant: variantInfoOf(w.v, b.opts.VerifyRate)},
	}
	b.cur = w.v
	defer func() { b.cur = b.opts.reference() }()
	for i := 1; i <= b.opts.Repeat; i++ {
		run, wal, err := b.catchUpRun(ctx, w, fmt.Sprintf("catch-up %s, run %d/%d", w.name, i, b.opts.Repeat))
		if err != nil {
			summariseCatchUp(c)
			return c, err
		}
		c.Runs = append(c.Runs, run)
		c.WALBytes = wal
	}
	summariseCatchUp(c)
	if b.opts.ProfileDir != "" {
		path, err := b.profileRun(ctx, w, time.Duration(c.EngineSeconds*float64(time.Second)))
		if err != nil {
			return c, fmt.Errorf("CPU profile: %w", err)
		}
		c.CPUProfile = path
	}
	return c, nil
}

// summariseCatchUp fills the medians and the verdict from the runs.
func summariseCatchUp(c *CatchUp) {
	if len(c.Runs) == 0 {
		return
	}
	var eng, recv, ratios, cpuPer []float64
	for _, r := range c.Runs {
		eng = append(eng, r.EngineSeconds)
		recv = append(recv, r.RecvSeconds)
		ratios = append(ratios, r.Ratio)
		if r.EngineCPUSeconds >= 0 && c.Changes > 0 {
			cpuPer = append(cpuPer, r.EngineCPUSeconds*100_000/float64(c.Changes))
		}
	}
	c.EngineSeconds = median(eng)
	c.RecvSeconds = median(recv)
	c.EngineRate = ratio(float64(c.Changes), c.EngineSeconds)
	c.RecvRate = ratio(float64(c.Changes), c.RecvSeconds)
	c.Ratio = median(ratios)
	c.EngineCPUPer100k = -1
	if len(cpuPer) > 0 {
		c.EngineCPUPer100k = median(cpuPer)
	}
	per100k := func(get func(CatchUpRun) float64) float64 {
		var xs []float64
		for _, r := range c.Runs {
			v := get(r)
			if v < 0 || c.Changes <= 0 {
				return -1
			}
			xs = append(xs, v*100_000/float64(c.Changes))
		}
		return median(xs)
	}
	c.CPU = CPUPer100k{
		EngineWalsender: per100k(func(r CatchUpRun) float64 { return r.EngineWalsenderCPU }),
		Engine:          per100k(func(r CatchUpRun) float64 { return r.EngineCPUSeconds }),
		Redis:           per100k(func(r CatchUpRun) float64 { return r.RedisCPUSeconds }),
		RecvWalsender:   per100k(func(r CatchUpRun) float64 { return r.RecvWalsenderCPU }),
		Recv:            per100k(func(r CatchUpRun) float64 { return r.RecvCPUSeconds }),
	}
	c.Met = c.Ratio > 0 && c.Ratio <= c.TargetRatio
}

// catchUpRun: two slots at the same point, the workload, then the engine
// and pg_recvlogical one after the other over the same WAL range.
func (b *bench) catchUpRun(ctx context.Context, w workload, step string) (CatchUpRun, uint64, error) {
	run := CatchUpRun{EngineWalsenderCPU: -1, RecvWalsenderCPU: -1, RecvCPUSeconds: -1, RedisCommands: -1, RedisCPUSeconds: -1,
		CatchUpRunApplied: CatchUpRunApplied{EngineAppliedSeconds: -1}}
	b.prog.Step("%s: writing %s changes", step, thousands(int64(b.opts.Rows)))
	start, end, err := b.prepareRange(ctx, w, engineSlot, recvSlot)
	if err != nil {
		return run, 0, err
	}
	// item:0 has no row: if it is gone after the engine ran, the engine
	// flushed keys it was not asked to delete, and the run measured that.
	b.prog.Step("%s: preparing Redis (%s rows' keys)", step, thousands(int64(b.opts.Rows)))
	if err := b.prepareRedis(ctx, w.v); err != nil {
		return run, 0, err
	}
	sub, err := b.subscribe(ctx, w.v)
	if err != nil {
		return run, 0, err
	}
	defer sub.close()
	metricsAddr := ""
	if w.v.verify > 0 {
		port, err := harness.FreePort()
		if err != nil {
			return run, 0, err
		}
		metricsAddr = "127.0.0.1:" + strconv.Itoa(port)
	}

	b.prog.Step("%s: engine", step)
	before := b.redisStats(ctx)
	pr := b.startProbe(ctx, w.v, sub)
	eng, err := b.startEngine(ctx, engineSlot, start, metricsAddr)
	if err != nil {
		pr.finish(nil)
		return run, 0, err
	}
	ef, err := b.follow(ctx, eng, engineSlot, start, end, false)
	applied, probeCmds := pr.finish(sub)
	if err != nil {
		stopChild(eng)
		return run, 0, err
	}
	after := b.redisStats(ctx)
	if metricsAddr != "" {
		run.Verify = b.verifierFigures(ctx, metricsAddr)
	}
	if err := eng.Stop(30 * time.Second); err != nil {
		return run, 0, err
	}
	run.RedisCommands, run.RedisCPUSeconds = after.since(before)
	if run.RedisCommands > 0 {
		run.RedisCommands = max(run.RedisCommands-probeCmds, 0)
	}
	run.EngineSeconds = ef.elapsed.Seconds()
	if !applied.IsZero() {
		run.EngineAppliedSeconds = applied.Sub(eng.StartedAt()).Seconds()
	}
	run.EngineStartupSeconds = ef.startup.Seconds()
	run.EngineWalsenderCPU = cpuSeconds(ef.walsenderCPU)
	run.EngineCPUSeconds = cpuSeconds(eng.CPUTime())
	run.EngineMaxRSSBytes = eng.MaxRSS()
	sub.settle(200 * time.Millisecond)
	rc, err := b.checkRun(ctx, w, start, end, sub.close())
	if err != nil {
		return run, 0, err
	}
	run.KeysLeft, run.Problems = rc.keysLeft, rc.problems
	if run.Verify != nil && run.Verify.Stale > 0 {
		run.Problems = append(run.Problems, fmt.Sprintf("the online verifier found %d stale keys", run.Verify.Stale))
	}
	if n, err := b.countKeys(ctx, 0, 0); err != nil {
		return run, 0, err
	} else if n == 0 {
		run.Flushed = true
	}

	b.prog.Step("%s: pg_recvlogical", step)
	args := []string{"-d", b.dsn, "--slot", recvSlot, "--start", "--endpos", end.String(), "-f", "/dev/null", "--no-loop"}
	for _, o := range b.pluginOpts {
		args = append(args, "-o", o)
	}
	recv, err := startChild("pg_recvlogical", b.recvBin, args, harness.WithoutCDCEnv(nil))
	if err != nil {
		return run, 0, err
	}
	b.track(recv)
	rf, err := b.follow(ctx, recv, recvSlot, start, end, true)
	if err != nil {
		stopChild(recv)
		return run, 0, err
	}
	run.RecvSeconds = rf.elapsed.Seconds()
	run.RecvStartupSeconds = rf.startup.Seconds()
	run.RecvWalsenderCPU = cpuSeconds(rf.walsenderCPU)
	run.RecvCPUSeconds = cpuSeconds(recv.CPUTime())
	run.Ratio = ratio(run.EngineSeconds, run.RecvSeconds)

	for _, s := range []string{engineSlot, recvSlot} {
		if err := b.dropSlot(ctx, s); err != nil {
			return run, 0, err
		}
	}
	return run, walBytes(start, end), nil
}

func cpuSeconds(d time.Duration) float64 {
	if d < 0 {
		return -1
	}
	return d.Seconds()
}

// prepareRange creates the slots at the current position, runs the
// workload and returns the WAL range that holds it.
func (b *bench) prepareRange(ctx context.Context, w workload, slots ...string) (start, end pglogrepl.LSN, err error) {
	if err := b.vacuum(ctx); err != nil {
		return 0, 0, err
	}
	for i, s := range slots {
		lsn, err := b.createSlot(ctx, s)
		if err != nil {
			return 0, 0, err
		}
		if i == 0 {
			start = lsn
		}
	}
	conn, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Commit records are the same either way; not waiting for each flush
	// only makes the workload faster to write on a server with fsync on.
	if _, err := conn.Exec(ctx, `SET synchronous_commit = off`); err != nil {
		return 0, 0, err
	}
	sql := workloadSQL(b.opts.Rows, w.batch)
	if w.v.tables > 1 {
		sql = multiTableWorkloadSQL(b.opts.Rows, w.batch, w.v.tables)
	}
	if _, err := conn.Exec(ctx, sql); err != nil {
		return 0, 0, fmt.Errorf("workload %s: %w", w.name, err)
	}
	end, err = b.flushedEnd(ctx, conn)
	if err != nil {
		return 0, 0, fmt.Errorf("workload %s: read the end position: %w", w.name, err)
	}
	return start, end, nil
}

// workloadSQL updates rows 1..rows of the bench table once each, batch rows
// per transaction, committing inside a DO block (one round trip for the
// whole workload). It must run outside a transaction block.
func workloadSQL(rows, batch int) string {
	txns := (rows + batch - 1) / batch
	return fmt.Sprintf(`DO $$
BEGIN
  FOR i IN 0..%d LOOP
    UPDATE %s SET n = n + 1 WHERE id > i::bigint * %d AND id <= least((i::bigint + 1) * %d, %d);
    COMMIT;
  END LOOP;
END
$$`, txns-1, table, batch, batch, rows)
}

// followResult is what follow observed of one consumer.
type followResult struct {
	elapsed      time.Duration // from the process start until done
	startup      time.Duration // from the process start until the slot was active
	walsenderCPU time.Duration // CPU time of its walsender, -1 if unknown
}

// follow polls slot every 10 ms while c consumes it. With untilExit the
// consumer is done when it exits with status 0 (pg_recvlogical --endpos);
// otherwise when the slot's confirmed_flush_lsn reaches end (the engine).
func (b *bench) follow(ctx context.Context, c *harness.Process, slot string, start, end pglogrepl.LSN, untilExit bool) (followResult, error) {
	res := followResult{walsenderCPU: -1}
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	deadline := c.StartedAt().Add(consumerTimeout)
	for {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-c.Done():
			if !untilExit || c.Err() != nil {
				return res, exitedUnexpectedly(c)
			}
			res.elapsed = c.ExitedAt().Sub(c.StartedAt())
			if res.startup == 0 {
				res.startup = res.elapsed
			}
			return res, nil
		case <-tick.C:
		}
		st, err := b.readSlot(ctx, slot)
		if err != nil {
			return res, err
		}
		now := time.Now()
		if st.activePID != 0 {
			if res.startup == 0 {
				res.startup = now.Sub(c.StartedAt())
			}
			// The walsender is on this machine only with throwaway servers.
			if b.throwaway {
				if d, err := harness.ProcCPU(st.activePID); err == nil {
					res.walsenderCPU = d
				}
			}
		}
		if !untilExit && st.confirmed >= end {
			res.elapsed = now.Sub(c.StartedAt())
			return res, nil
		}
		if untilExit {
			b.prog.Detail("reading until --endpos %s", end)
		} else {
			b.prog.Detail("%.0f%% of %s of WAL confirmed", 100*progressOf(start, end, st.confirmed), megabytes(int64(walBytes(start, end))))
		}
		if now.After(deadline) {
			return res, fmt.Errorf("%s not done after %s", c.Name(), consumerTimeout)
		}
	}
}

// profileRun runs the workload once more and takes a CPU profile of the
// engine through /debug/pprof/profile while it catches up. expect is the
// measured catch-up time; the profile lasts a bit longer and the engine is
// stopped only when it has been written.
func (b *bench) profileRun(ctx context.Context, w workload, expect time.Duration) (string, error) {
	step := fmt.Sprintf("catch-up %s: CPU profile run", w.name)
	b.prog.Step("%s: writing %s changes", step, thousands(int64(b.opts.Rows)))
	start, end, err := b.prepareRange(ctx, w, engineSlot)
	if err != nil {
		return "", err
	}
	if err := b.prepareRedis(ctx, w.v); err != nil {
		return "", err
	}
	if err := os.MkdirAll(b.opts.ProfileDir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(b.opts.ProfileDir, "engine-cpu-"+w.name+".pprof")
	port, err := harness.FreePort()
	if err != nil {
		return "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	b.prog.Step("%s: engine", step)
	eng, err := b.startEngine(ctx, engineSlot, start, addr)
	if err != nil {
		return "", err
	}
	defer stopChild(eng)
	secs := int(math.Ceil(expect.Seconds()*1.5)) + 2
	fetched := make(chan error, 1)
	go func() {
		fetched <- fetchProfile(ctx, "http://"+addr+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), path)
	}()
	if _, err := b.follow(ctx, eng, engineSlot, start, end, false); err != nil {
		return "", err
	}
	b.prog.Step("%s: waiting for the %d s profile", step, secs)
	select {
	case err := <-fetched:
		if err != nil {
			return "", err
		}
	case <-time.After(time.Duration(secs)*time.Second + time.Minute):
		return "", fmt.Errorf("no profile from %s within %d s", addr, secs+60)
	}
	if err := eng.Stop(30 * time.Second); err != nil {
		return "", err
	}
	return path, b.dropSlot(ctx, engineSlot)
}

// fetchProfile GETs url into path, retrying the connection while the
// engine's HTTP server comes up.
func fetchProfile(ctx context.Context, url, path string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			if ctx.Err() != nil || time.Now().After(deadline) {
				return fmt.Errorf("fetch profile: %w", err)
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			return fmt.Errorf("fetch profile: %s: %s", resp.Status, msg)
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, resp.Body); err != nil {
			f.Close()
			return fmt.Errorf("fetch profile: %w", err)
		}
		return f.Close()
	}
}
