package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// memory runs the engine on a fresh slot, commits one INSERT ... SELECT
// generate_series of BigRows rows, and reads the engine's VmHWM once it
// confirmed the transaction.
func (b *bench) memory(ctx context.Context) (*Memory, error) {
	m := &Memory{Rows: b.opts.BigRows, Wide: b.opts.Wide, BaselineRSSBytes: -1, PeakRSSBytes: -1}
	if b.opts.BigRows == TargetRSSRows && !b.opts.Wide {
		m.TargetRSSBytes = TargetRSSBytes
	}
	b.prog.Step("memory: starting the engine")
	if err := b.vacuum(ctx); err != nil {
		return m, err
	}
	start, err := b.createSlot(ctx, engineSlot)
	if err != nil {
		return m, err
	}
	if b.opts.Wide {
		// pg_recvlogical reads the same range afterwards: the walsender's
		// own time for these rows, beside the engine's.
		if _, err := b.createSlot(ctx, recvSlot); err != nil {
			return m, err
		}
	}
	pprofAddr := ""
	if b.opts.ProfileDir != "" {
		if err := os.MkdirAll(b.opts.ProfileDir, 0o755); err != nil {
			return m, err
		}
		port, err := harness.FreePort()
		if err != nil {
			return m, err
		}
		pprofAddr = "127.0.0.1:" + strconv.Itoa(port)
	}
	eng, err := b.startEngine(ctx, engineSlot, start, pprofAddr)
	if err != nil {
		return m, err
	}
	defer stopChild(eng)
	if _, err := b.waitActive(ctx, eng, engineSlot); err != nil {
		return m, err
	}
	pid := eng.Pid()
	if hwm, _, err := harness.ProcMem(pid); err == nil {
		m.BaselineRSSBytes = hwm
	}

	cpu0 := procCPU(pid)
	redis0 := b.redisStats(ctx)
	var walsender walsenderCPU
	walsender.sample(b, ctx)

	b.prog.Step("memory: one transaction of %s rows", thousands(int64(b.opts.BigRows)))
	conn, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		return m, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// New ids after the table's rows; one statement in autocommit is one
	// transaction, committed synchronously.
	insert := fmt.Sprintf(`INSERT INTO %s (id, payload%s) SELECT g, 'item ' || g || ' ' || md5(g::text)%s FROM generate_series(%d, %d) g`,
		table, wideNames(b.opts.Wide), wideValues(b.opts.Wide), b.opts.Rows+1, b.opts.Rows+b.opts.BigRows)
	done := make(chan error, 1)
	t0 := time.Now()
	go func() {
		_, err := conn.Exec(ctx, insert)
		done <- err
	}()
	if err := b.watchRSS(ctx, eng, done, "inserting"); err != nil {
		return m, fmt.Errorf("INSERT of %d rows: %w", b.opts.BigRows, err)
	}
	committed := time.Now()
	m.InsertSeconds = committed.Sub(t0).Seconds()
	profiled := make(chan error, 1)
	cpuPath := ""
	if pprofAddr != "" {
		// From the commit on, the engine applies what the walsender
		// sends; a fixed window (the profile endpoint takes a duration)
		// of its steady state.
		cpuPath = filepath.Join(b.opts.ProfileDir, "engine-cpu-memory.pprof")
		go func() {
			profiled <- fetchProfile(ctx, "http://"+pprofAddr+"/debug/pprof/profile?seconds="+strconv.Itoa(memoryProfileSeconds), cpuPath)
		}()
	}
	end, err := b.flushedEnd(ctx, conn)
	if err != nil {
		return m, err
	}
	m.WALBytes = walBytes(start, end)

	b.prog.Step("memory: waiting for the engine to confirm the transaction")
	deadline := time.Now().Add(consumerTimeout)
	for {
		st, err := b.readSlot(ctx, engineSlot)
		if err != nil {
			return m, err
		}
		if st.confirmed >= end {
			break
		}
		walsender.sampleSlot(st)
		if !eng.Running() {
			return m, exitedUnexpectedly(eng)
		}
		if time.Now().After(deadline) {
			return m, fmt.Errorf("engine did not confirm the transaction within %s", consumerTimeout)
		}
		if hwm, rss, err := harness.ProcMem(pid); err == nil {
			b.prog.Detail("RSS %s, peak %s", megabytes(rss), megabytes(hwm))
		}
		select {
		case <-ctx.Done():
			return m, ctx.Err()
		case <-time.After(pollEvery):
		}
	}
	m.ConfirmedSeconds = time.Since(committed).Seconds()
	if hwm, _, err := harness.ProcMem(pid); err == nil {
		m.PeakRSSBytes = hwm
	}
	if c := procCPU(pid); c >= 0 && cpu0 >= 0 {
		m.EngineCPUSeconds = (c - cpu0).Seconds()
	} else {
		m.EngineCPUSeconds = -1
	}
	m.WalsenderCPUSeconds = walsender.seconds()
	m.RedisCommands, m.RedisCPUSeconds = b.redisStats(ctx).since(redis0)
	if cpuPath != "" {
		b.prog.Step("memory: waiting for the %d s CPU profile", memoryProfileSeconds)
		if err := <-profiled; err != nil {
			return m, fmt.Errorf("CPU profile: %w", err)
		}
		m.CPUProfile = cpuPath
	}
	if pprofAddr != "" {
		path := filepath.Join(b.opts.ProfileDir, "engine-heap-memory.pprof")
		if err := fetchProfile(ctx, "http://"+pprofAddr+"/debug/pprof/heap", path); err != nil {
			return m, fmt.Errorf("heap profile: %w", err)
		}
		m.HeapProfile = path
	}
	if err := eng.Stop(30 * time.Second); err != nil {
		return m, err
	}
	if m.PeakRSSBytes < 0 {
		m.PeakRSSBytes = eng.MaxRSS() // read by Stop (-1 without /proc: unknown)
	}
	if m.TargetRSSBytes > 0 && m.PeakRSSBytes > 0 {
		met := m.PeakRSSBytes <= m.TargetRSSBytes
		m.Met = &met
	}
	if err := b.dropSlot(ctx, engineSlot); err != nil {
		return m, err
	}
	if b.opts.Wide {
		b.prog.Step("memory: pg_recvlogical over the same WAL")
		args := []string{"-d", b.dsn, "--slot", recvSlot, "--start", "--endpos", end.String(), "-f", "/dev/null", "--no-loop"}
		for _, o := range b.pluginOpts {
			args = append(args, "-o", o)
		}
		recv, err := startChild("pg_recvlogical", b.recvBin, args, harness.WithoutCDCEnv(nil))
		if err != nil {
			return m, err
		}
		b.track(recv)
		rf, err := b.follow(ctx, recv, recvSlot, start, end, true)
		if err != nil {
			stopChild(recv)
			return m, err
		}
		m.RecvSeconds = rf.elapsed.Seconds()
		m.RecvWalsenderCPUSeconds = cpuSeconds(rf.walsenderCPU)
		if err := b.dropSlot(ctx, recvSlot); err != nil {
			return m, err
		}
	}
	return m, nil
}

// memoryProfileSeconds is the CPU profile window of the memory phase,
// from the commit on.
const memoryProfileSeconds = 20

func procCPU(pid int) time.Duration {
	d, err := harness.ProcCPU(pid)
	if err != nil {
		return -1
	}
	return d
}

// walsenderCPU follows the CPU time of the engine's walsender (on this
// machine only with throwaway servers): the last reading of its process.
type walsenderCPU struct {
	on   bool
	pid  int
	last time.Duration
}

func (w *walsenderCPU) sample(b *bench, ctx context.Context) {
	w.on = b.throwaway
	if st, err := b.readSlot(ctx, engineSlot); err == nil {
		w.sampleSlot(st)
	}
}

func (w *walsenderCPU) sampleSlot(st slotState) {
	if !w.on || st.activePID == 0 {
		return
	}
	if d, err := harness.ProcCPU(st.activePID); err == nil {
		w.pid, w.last = st.activePID, d
	}
}

func (w *walsenderCPU) seconds() float64 {
	if w.pid == 0 {
		return -1
	}
	return w.last.Seconds()
}

// watchRSS shows the engine's RSS until done delivers, and fails early
// when the engine exits.
func (b *bench) watchRSS(ctx context.Context, eng *harness.Process, done <-chan error, what string) error {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-eng.Done():
			return exitedUnexpectedly(eng)
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if hwm, rss, err := harness.ProcMem(eng.Pid()); err == nil {
				b.prog.Detail("%s; engine RSS %s, peak %s", what, megabytes(rss), megabytes(hwm))
			}
		}
	}
}

// wideExtra is how many columns --wide adds to the table's ten: 100.
const wideExtra = 90

// wideAlterSQL adds the columns of --wide to the bench table.
func wideAlterSQL() string {
	var s strings.Builder
	s.WriteString("ALTER TABLE " + table)
	for i := 1; i <= wideExtra; i++ {
		if i > 1 {
			s.WriteString(",")
		}
		fmt.Fprintf(&s, " ADD COLUMN c%d text", i)
	}
	return s.String()
}

// wideNames and wideValues are the added columns of the memory phase's
// INSERT and their values: every 20th a 3.2 KB text (TOASTed), the others
// short numbers.
func wideNames(wide bool) string {
	if !wide {
		return ""
	}
	var s strings.Builder
	for i := 1; i <= wideExtra; i++ {
		fmt.Fprintf(&s, ", c%d", i)
	}
	return s.String()
}

func wideValues(wide bool) string {
	if !wide {
		return ""
	}
	var s strings.Builder
	for i := 1; i <= wideExtra; i++ {
		if i%20 == 0 {
			fmt.Fprintf(&s, ", repeat(md5((g + %d)::text), 100)", i)
		} else {
			fmt.Fprintf(&s, ", (g * %d)::text", i)
		}
	}
	return s.String()
}
