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
		m.PeakRSSBytes = eng.MaxRSS() // without /proc: getrusage after the exit
	}
	if m.TargetRSSBytes > 0 && m.PeakRSSBytes > 0 {
		met := m.PeakRSSBytes <= m.TargetRSSBytes
		m.Met = &met
	}
	return m, b.dropSlot(ctx, engineSlot)
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
