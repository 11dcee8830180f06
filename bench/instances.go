package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// Beyond one slot (--instances N >= 2). One slot is read by one walsender,
// on one core: its ceiling is one core's decoding. The pattern beyond it
// splits the tables over N publications and N slots, one engine each
// (docs/topologies.md, "Several instances"). The bench measures it on N
// tables cdcbench_items_1..N holding the --rows ids in N ranges (the
// rule of every table is item:{id}, so the keys are those of the other
// phases), publications cdcbench_pub_1..N, and for each workload and run,
// over the same WAL range (every slot created at the same point):
//
//   - the N engines (slots cdcbench_engine_1..N), started together, from
//     the first start until every one confirmed the end;
//   - one engine on publication cdcbench_pub_all (all N tables; slot
//     cdcbench_engine_all), the same total rows;
//   - N pg_recvlogical (slots cdcbench_recv_1..N), started together,
//     until the last one exited at --endpos.
//
// The workload's transactions go to the tables in turn (batch rows each,
// one row each for the single-row workload).

// instanceNames are the objects of instance k (1-based).
func instanceTable(k int) string      { return fmt.Sprintf("%s_%d", table, k) }
func instancePub(k int) string        { return fmt.Sprintf("%s_%d", publication, k) }
func instanceEngineSlot(k int) string { return fmt.Sprintf("%s_%d", engineSlot, k) }
func instanceRecvSlot(k int) string   { return fmt.Sprintf("%s_%d", recvSlot, k) }

const (
	allPublication = publication + "_all"
	allEngineSlot  = engineSlot + "_all"
)

// instanceRange is the ids of instance k's table: 1..Rows split evenly
// (sizes differ by at most one).
func (b *bench) instanceRange(k int) (lo, hi int) {
	n, rows := b.opts.Instances, b.opts.Rows
	return (k-1)*rows/n + 1, k * rows / n
}

func (b *bench) instanceSlots() []string {
	var out []string
	for k := 1; k <= b.opts.Instances; k++ {
		out = append(out, instanceEngineSlot(k), instanceRecvSlot(k))
	}
	return append(out, allEngineSlot)
}

// setupInstances creates the instances' tables and publications (with
// --instances >= 2).
func (b *bench) setupInstances(ctx context.Context) error {
	if b.opts.Instances < 2 {
		return nil
	}
	b.prog.Step("creating %d tables and publications for --instances", b.opts.Instances)
	var tables []string
	var sqls []string
	for k := 1; k <= b.opts.Instances; k++ {
		t := instanceTable(k)
		lo, hi := b.instanceRange(k)
		tables = append(tables, t)
		sqls = append(sqls,
			`CREATE TABLE `+t+` (LIKE `+table+` INCLUDING ALL) WITH (fillfactor = 90, autovacuum_enabled = false)`,
			fmt.Sprintf(`INSERT INTO %s SELECT * FROM %s WHERE id BETWEEN %d AND %d`, t, table, lo, hi),
			`VACUUM ANALYZE `+t,
			`CREATE PUBLICATION `+instancePub(k)+` FOR TABLE `+t)
	}
	sqls = append(sqls, `CREATE PUBLICATION `+allPublication+` FOR TABLE `+strings.Join(tables, ", "))
	for _, sql := range sqls {
		if _, err := b.db.Exec(ctx, sql); err != nil {
			return fmt.Errorf("postgres: %s: %w", firstWords(sql), err)
		}
	}
	return nil
}

// dropInstances drops the instances' slots, publications and tables
// (any number of them: an interrupted run may have used another --instances).
func (b *bench) dropInstances(ctx context.Context) error {
	var slots []string
	rows, err := b.db.Query(ctx, `SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'cdcbench\_engine\_%' OR slot_name LIKE 'cdcbench\_recv\_%'`)
	if err != nil {
		return fmt.Errorf("postgres: list the bench's slots: %w", err)
	}
	if slots, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return fmt.Errorf("postgres: list the bench's slots: %w", err)
	}
	for _, s := range slots {
		if err := b.dropSlot(ctx, s); err != nil {
			return err
		}
	}
	for _, q := range []string{
		`SELECT 'DROP PUBLICATION ' || quote_ident(pubname) FROM pg_publication WHERE pubname LIKE 'cdcbench\_pub\_%'`,
		`SELECT 'DROP TABLE ' || quote_ident(relname) FROM pg_class WHERE relkind = 'r' AND relname LIKE 'cdcbench\_items\_%' AND relnamespace = 'public'::regnamespace`,
	} {
		rows, err := b.db.Query(ctx, q)
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		drops, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		for _, d := range drops {
			if _, err := b.db.Exec(ctx, d); err != nil {
				return fmt.Errorf("postgres: %s: %w", d, err)
			}
		}
	}
	return nil
}

// instancesWorkloadSQL updates every row of the instances' tables once,
// batch rows per transaction, the transactions going to the tables in
// turn. It must run outside a transaction block.
func (b *bench) instancesWorkloadSQL(batch int) string {
	var s strings.Builder
	txns := 0
	for k := 1; k <= b.opts.Instances; k++ {
		lo, hi := b.instanceRange(k)
		txns = max(txns, (hi-lo+1+batch-1)/batch)
	}
	fmt.Fprintf(&s, "DO $$\nBEGIN\n  FOR i IN 0..%d LOOP\n", txns-1)
	for k := 1; k <= b.opts.Instances; k++ {
		lo, hi := b.instanceRange(k)
		fmt.Fprintf(&s, "    UPDATE %s SET n = n + 1 WHERE id >= %d + i::bigint * %d AND id < least(%d + (i::bigint + 1) * %d, %d);\n    COMMIT;\n",
			instanceTable(k), lo, batch, lo, batch, hi+1)
	}
	s.WriteString("  END LOOP;\nEND\n$$")
	return s.String()
}

// InstancesCatchUp is the catch-up of one workload by N engines, each on
// its own slot and tables, against one engine and N pg_recvlogical.
type InstancesCatchUp struct {
	Workload     string `json:"workload"`
	Description  string `json:"description"`
	Instances    int    `json:"instances"`
	Changes      int    `json:"changes"` // in total, over the N tables
	Transactions int    `json:"transactions"`
	WALBytes     uint64 `json:"wal_bytes"` // of the last run
	// Medians over the runs. Engines and Recvs: from the first start
	// until the last one was done.
	EnginesSeconds   float64 `json:"engines_seconds"`
	OneEngineSeconds float64 `json:"one_engine_seconds"`
	RecvsSeconds     float64 `json:"pg_recvlogicals_seconds"`
	EnginesRate      float64 `json:"engines_changes_per_second"`
	OneEngineRate    float64 `json:"one_engine_changes_per_second"`
	RecvsRate        float64 `json:"pg_recvlogicals_changes_per_second"`
	// Speedup is the median of the runs' one engine / N engines times;
	// RatioToRecvs the median of N engines / N pg_recvlogical.
	Speedup      float64        `json:"speedup"`
	RatioToRecvs float64        `json:"ratio_to_pg_recvlogicals"`
	Runs         []InstancesRun `json:"runs"`
}

// InstancesRun is one run; CPU times are sums over the processes (-1
// unknown), walsender CPU with throwaway servers only.
type InstancesRun struct {
	EnginesSeconds        float64 `json:"engines_seconds"`
	EnginesCPUSeconds     float64 `json:"engines_cpu_seconds"`
	EnginesWalsenderCPU   float64 `json:"engines_walsender_cpu_seconds"`
	OneEngineSeconds      float64 `json:"one_engine_seconds"`
	OneEngineCPUSeconds   float64 `json:"one_engine_cpu_seconds"`
	OneEngineWalsenderCPU float64 `json:"one_engine_walsender_cpu_seconds"`
	RecvsSeconds          float64 `json:"pg_recvlogicals_seconds"`
	RecvsWalsenderCPU     float64 `json:"pg_recvlogicals_walsender_cpu_seconds"`
	// Keys the N engines, and the one engine, left undeleted.
	EnginesKeysLeft   int `json:"engines_keys_left"`
	OneEngineKeysLeft int `json:"one_engine_keys_left"`
	// Flushed: an engine deleted item:0, which no row maps to (it flushed
	// the managed keys), so the run did not measure deletes alone.
	Flushed bool `json:"flushed,omitempty"`
}

// checkFlushed sets *flushed when item:0 is gone.
func (b *bench) checkFlushed(ctx context.Context, flushed *bool) error {
	n, err := b.countKeys(ctx, 0, 0)
	if err != nil {
		return err
	}
	if n == 0 {
		*flushed = true
	}
	return nil
}

// instancesCatchUp measures one workload opts.Repeat times.
func (b *bench) instancesCatchUp(ctx context.Context, w workload) (*InstancesCatchUp, error) {
	n := b.opts.Instances
	c := &InstancesCatchUp{Workload: w.name, Description: w.desc, Instances: n, Changes: b.opts.Rows}
	for k := 1; k <= n; k++ {
		lo, hi := b.instanceRange(k)
		c.Transactions += (hi - lo + 1 + w.batch - 1) / w.batch
	}
	defer summariseInstances(c)
	for i := 1; i <= b.opts.Repeat; i++ {
		run, wal, err := b.instancesRun(ctx, w, fmt.Sprintf("%d instances, catch-up %s, run %d/%d", n, w.name, i, b.opts.Repeat))
		if err != nil {
			return c, err
		}
		c.Runs = append(c.Runs, run)
		c.WALBytes = wal
	}
	return c, nil
}

func summariseInstances(c *InstancesCatchUp) {
	if len(c.Runs) == 0 {
		return
	}
	var eng, one, recv, speed, rat []float64
	for _, r := range c.Runs {
		eng = append(eng, r.EnginesSeconds)
		one = append(one, r.OneEngineSeconds)
		recv = append(recv, r.RecvsSeconds)
		speed = append(speed, ratio(r.OneEngineSeconds, r.EnginesSeconds))
		rat = append(rat, ratio(r.EnginesSeconds, r.RecvsSeconds))
	}
	c.EnginesSeconds, c.OneEngineSeconds, c.RecvsSeconds = median(eng), median(one), median(recv)
	c.EnginesRate = ratio(float64(c.Changes), c.EnginesSeconds)
	c.OneEngineRate = ratio(float64(c.Changes), c.OneEngineSeconds)
	c.RecvsRate = ratio(float64(c.Changes), c.RecvsSeconds)
	c.Speedup, c.RatioToRecvs = median(speed), median(rat)
}

func (b *bench) instancesRun(ctx context.Context, w workload, step string) (InstancesRun, uint64, error) {
	n := b.opts.Instances
	run := InstancesRun{EnginesCPUSeconds: -1, EnginesWalsenderCPU: -1, OneEngineCPUSeconds: -1, OneEngineWalsenderCPU: -1, RecvsWalsenderCPU: -1}
	b.prog.Step("%s: writing %s changes", step, thousands(int64(b.opts.Rows)))
	for k := 1; k <= n; k++ {
		if _, err := b.db.Exec(ctx, `VACUUM `+instanceTable(k)); err != nil {
			return run, 0, fmt.Errorf("postgres: VACUUM: %w", err)
		}
	}
	// Each engine's watermark must be its own slot's starting point: one
	// below it would be history lost, and the engine would flush.
	var start pglogrepl.LSN
	created := map[string]pglogrepl.LSN{}
	for i, s := range b.instanceSlots() {
		lsn, err := b.createSlot(ctx, s)
		if err != nil {
			return run, 0, err
		}
		created[s] = lsn
		if i == 0 {
			start = lsn
		}
	}
	conn, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		return run, 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `SET synchronous_commit = off`); err != nil {
		return run, 0, err
	}
	if _, err := conn.Exec(ctx, b.instancesWorkloadSQL(w.batch)); err != nil {
		return run, 0, fmt.Errorf("workload %s over %d tables: %w", w.name, n, err)
	}
	end, err := b.flushedEnd(ctx, conn)
	if err != nil {
		return run, 0, err
	}

	// N engines together.
	// item:0 has no row: gone after a run, an engine flushed (see catchUpRun).
	b.prog.Step("%s: prefilling keys, %d engines", step, n)
	if err := b.setKeys(ctx, 0, b.opts.Rows); err != nil {
		return run, 0, err
	}
	var engines []*harness.Process
	var slots []string
	for k := 1; k <= n; k++ {
		eng, err := b.startInstanceEngine(ctx, instanceEngineSlot(k), instancePub(k), []string{instanceTable(k)}, created[instanceEngineSlot(k)])
		if err != nil {
			for _, e := range engines {
				stopChild(e)
			}
			return run, 0, err
		}
		engines = append(engines, eng)
		slots = append(slots, instanceEngineSlot(k))
	}
	res, err := b.followAll(ctx, engines, slots, start, end, false)
	for _, e := range engines {
		if serr := e.Stop(30 * time.Second); serr != nil && err == nil {
			err = serr
		}
	}
	if err != nil {
		return run, 0, err
	}
	run.EnginesSeconds, run.EnginesWalsenderCPU = res.elapsed.Seconds(), cpuSeconds(res.walsenderCPU)
	run.EnginesCPUSeconds = sumCPU(engines)
	if run.EnginesKeysLeft, err = b.countKeys(ctx, 1, b.opts.Rows); err != nil {
		return run, 0, err
	}
	if err := b.checkFlushed(ctx, &run.Flushed); err != nil {
		return run, 0, err
	}

	// One engine over all the tables.
	b.prog.Step("%s: prefilling keys, one engine", step)
	if err := b.setKeys(ctx, 0, b.opts.Rows); err != nil {
		return run, 0, err
	}
	var tables []string
	for k := 1; k <= n; k++ {
		tables = append(tables, instanceTable(k))
	}
	one, err := b.startInstanceEngine(ctx, allEngineSlot, allPublication, tables, created[allEngineSlot])
	if err != nil {
		return run, 0, err
	}
	res, err = b.followAll(ctx, []*harness.Process{one}, []string{allEngineSlot}, start, end, false)
	if serr := one.Stop(30 * time.Second); serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return run, 0, err
	}
	run.OneEngineSeconds, run.OneEngineWalsenderCPU = res.elapsed.Seconds(), cpuSeconds(res.walsenderCPU)
	run.OneEngineCPUSeconds = sumCPU([]*harness.Process{one})
	if run.OneEngineKeysLeft, err = b.countKeys(ctx, 1, b.opts.Rows); err != nil {
		return run, 0, err
	}
	if err := b.checkFlushed(ctx, &run.Flushed); err != nil {
		return run, 0, err
	}

	// N pg_recvlogical together.
	b.prog.Step("%s: %d pg_recvlogical", step, n)
	var recvs []*harness.Process
	slots = nil
	for k := 1; k <= n; k++ {
		args := []string{"-d", b.dsn, "--slot", instanceRecvSlot(k), "--start", "--endpos", end.String(), "-f", "/dev/null", "--no-loop"}
		for _, o := range b.pluginOpts {
			if strings.HasPrefix(o, "publication_names=") {
				o = "publication_names=" + instancePub(k)
			}
			args = append(args, "-o", o)
		}
		recv, err := startChild("pg_recvlogical", b.recvBin, args, harness.WithoutCDCEnv(nil))
		if err != nil {
			for _, r := range recvs {
				stopChild(r)
			}
			return run, 0, err
		}
		b.track(recv)
		recvs = append(recvs, recv)
		slots = append(slots, instanceRecvSlot(k))
	}
	res, err = b.followAll(ctx, recvs, slots, start, end, true)
	if err != nil {
		for _, r := range recvs {
			stopChild(r)
		}
		return run, 0, err
	}
	run.RecvsSeconds, run.RecvsWalsenderCPU = res.elapsed.Seconds(), cpuSeconds(res.walsenderCPU)

	for _, s := range b.instanceSlots() {
		if err := b.dropSlot(ctx, s); err != nil {
			return run, 0, err
		}
	}
	return run, walBytes(start, end), nil
}

func sumCPU(ps []*harness.Process) float64 {
	var t time.Duration
	for _, p := range ps {
		d := p.CPUTime()
		if d < 0 {
			return -1
		}
		t += d
	}
	return t.Seconds()
}

// startInstanceEngine starts an engine on slot and publication with the
// rule tables -> item:{id}, after setting its watermarks (see startEngine).
func (b *bench) startInstanceEngine(ctx context.Context, slot, pub string, tables []string, created pglogrepl.LSN) (*harness.Process, error) {
	var s strings.Builder
	q := func(v string) string { j, _ := json.Marshal(v); return string(j) }
	fmt.Fprintf(&s, "# written by cdcinvalidate bench (--instances)\npostgres:\n  slot: %s\n  publication: %s\n", slot, pub)
	fmt.Fprintf(&s, "redis:\n%s", b.engineRedisYAML())
	s.WriteString("log:\n  level: warn\n  format: console\nrules:\n")
	for _, t := range tables {
		fmt.Fprintf(&s, "  - table: %s\n    keys: [%s]\n", t, q(keyPrefix+"{id}"))
	}
	path := fmt.Sprintf("%s/engine-%s.yaml", b.tmp, slot)
	if err := os.WriteFile(path, []byte(s.String()), 0o600); err != nil {
		return nil, err
	}
	if err := b.seedWatermarks(ctx, slot, created); err != nil {
		return nil, err
	}
	c, err := startChild("engine "+slot, b.engineBin, []string{"run", "--config", path}, b.childEnv())
	if err != nil {
		return nil, err
	}
	b.track(c)
	return c, nil
}

// followAll polls slots every 10 ms while ps (ps[i] on slots[i]) consume
// them, as follow does for one, and returns the time from the first start
// until the last was done, and the walsenders' CPU time summed.
func (b *bench) followAll(ctx context.Context, ps []*harness.Process, slots []string, start, end pglogrepl.LSN, untilExit bool) (followResult, error) {
	res := followResult{walsenderCPU: -1}
	first := ps[0].StartedAt()
	for _, p := range ps {
		if p.StartedAt().Before(first) {
			first = p.StartedAt()
		}
	}
	done := make([]time.Time, len(ps))
	walCPU := make([]time.Duration, len(ps))
	for i := range walCPU {
		walCPU[i] = -1
	}
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	deadline := first.Add(consumerTimeout)
	for {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-tick.C:
		}
		rows, err := b.mon.Query(ctx, `SELECT slot_name, coalesce(confirmed_flush_lsn::text, '0/0'), coalesce(active_pid, 0) FROM pg_replication_slots WHERE slot_name = ANY($1)`, slots)
		if err != nil {
			return res, fmt.Errorf("read slots: %w", err)
		}
		confirmed := map[string]pglogrepl.LSN{}
		active := map[string]int{}
		for rows.Next() {
			var name, lsn string
			var pid int
			if err := rows.Scan(&name, &lsn, &pid); err != nil {
				rows.Close()
				return res, err
			}
			l, _ := pglogrepl.ParseLSN(lsn)
			confirmed[name], active[name] = l, pid
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return res, err
		}
		now := time.Now()
		left := 0
		for i, p := range ps {
			if !done[i].IsZero() {
				continue
			}
			if pid := active[slots[i]]; pid != 0 && b.throwaway {
				if d, err := harness.ProcCPU(pid); err == nil {
					walCPU[i] = d
				}
			}
			select {
			case <-p.Done():
				if !untilExit || p.Err() != nil {
					return res, exitedUnexpectedly(p)
				}
				done[i] = p.ExitedAt()
				continue
			default:
			}
			if !untilExit && confirmed[slots[i]] >= end {
				done[i] = now
				continue
			}
			left++
		}
		if left == 0 {
			last := first
			for _, d := range done {
				if d.After(last) {
					last = d
				}
			}
			res.elapsed = last.Sub(first)
			res.walsenderCPU = 0
			for _, d := range walCPU {
				if d < 0 {
					res.walsenderCPU = -1
					break
				}
				res.walsenderCPU += d
			}
			return res, nil
		}
		b.prog.Detail("%d of %d consumers done", len(ps)-left, len(ps))
		if now.After(deadline) {
			return res, fmt.Errorf("%d consumers not done after %s", left, consumerTimeout)
		}
	}
}

// writeInstances writes the --instances tables of the report.
func writeInstances(b *strings.Builder, r *Report) error {
	if len(r.InstancesCatchUp) == 0 {
		return nil
	}
	n := r.InstancesCatchUp[0].Instances
	fmt.Fprintf(b, "\nBeyond one slot: %d engines, each on its own table, publication and slot (the rows split evenly), against one engine on "+
		"all %d tables and %d pg_recvlogical, over the same WAL; from the first start until the last confirmed (exited). Medians.\n", n, n, n)
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "workload\tchanges\t%d engines\tchanges/s\tone engine\tchanges/s\tspeedup\t%d pg_recvlogical\tchanges/s\tratio\t\n", n, n)
	for _, c := range r.InstancesCatchUp {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.2fx\t%s\t%s\t%.2fx\t\n", c.Description, thousands(int64(c.Changes)),
			seconds(c.EnginesSeconds), thousands(round(c.EnginesRate)), seconds(c.OneEngineSeconds), thousands(round(c.OneEngineRate)), c.Speedup,
			seconds(c.RecvsSeconds), thousands(round(c.RecvsRate)), c.RatioToRecvs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(b, "\nruns (CPU = sum over the processes; walsender = sum of the walsenders serving them):")
	tw = tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\trun\tengines\tCPU\twalsenders\tkeys left\tone engine\tCPU\twalsender\tkeys left\tpg_recvlogicals\twalsenders\t")
	for _, c := range r.InstancesCatchUp {
		for i, run := range c.Runs {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t\n", c.Workload, i+1,
				seconds(run.EnginesSeconds), cpu(run.EnginesCPUSeconds), cpu(run.EnginesWalsenderCPU), run.EnginesKeysLeft,
				seconds(run.OneEngineSeconds), cpu(run.OneEngineCPUSeconds), cpu(run.OneEngineWalsenderCPU), run.OneEngineKeysLeft,
				seconds(run.RecvsSeconds), cpu(run.RecvsWalsenderCPU))
		}
	}
	return tw.Flush()
}

// runInstances runs the --instances measurement for every workload and
// records it (and keys left behind, as problems) in rep.
func (b *bench) runInstances(ctx context.Context, rep *Report) error {
	if b.opts.Instances < 2 {
		return nil
	}
	// The two shapes, batched and single-row: the instances have rules of
	// their own (the delete rule), whatever catch-up variants run.
	seen := map[string]bool{}
	for _, w := range b.workloads() {
		if seen[w.shape] {
			continue
		}
		seen[w.shape] = true
		w.name, w.desc = w.shape, map[string]string{"batched": fmt.Sprintf("batched, %s rows/txn", thousands(int64(b.opts.Batch))), "single": "single-row txns"}[w.shape]
		c, err := b.instancesCatchUp(ctx, w)
		if c != nil && len(c.Runs) > 0 {
			rep.InstancesCatchUp = append(rep.InstancesCatchUp, *c)
			for _, run := range c.Runs {
				if run.EnginesKeysLeft > 0 || run.OneEngineKeysLeft > 0 {
					rep.Problems = append(rep.Problems, fmt.Sprintf("%d instances, catch-up %s: keys left undeleted: %d by the %d engines, %d by one engine",
						c.Instances, w.name, run.EnginesKeysLeft, c.Instances, run.OneEngineKeysLeft))
				}
				if run.Flushed {
					rep.Problems = append(rep.Problems, fmt.Sprintf("%d instances, catch-up %s: an engine deleted %s0, which no row maps to: "+
						"it flushed the managed keys, so the run did not measure deletes alone", c.Instances, w.name, keyPrefix))
				}
			}
		}
		if err != nil {
			return fmt.Errorf("%d instances, catch-up %s: %w", b.opts.Instances, w.name, err)
		}
	}
	return nil
}
