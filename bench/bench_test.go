package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

type syncBuffer = harness.SyncBuffer

// TestBenchEndToEnd runs the whole bench at tiny sizes against throwaway
// servers and checks that the report is complete and sane.
func TestBenchEndToEnd(t *testing.T) {
	opts := DefaultOptions()
	opts.Engine = harness.BuildEngine(t)
	opts.Rows, opts.Repeat, opts.BigRows = 2000, 1, 20000
	opts.Rates, opts.Duration = Rates{{PerSecond: 200}}, time.Second
	opts.Progress = true // exercised, into the buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stderr syncBuffer
	start := time.Now()
	rep, err := Run(ctx, opts, &stderr)
	t.Logf("bench took %s", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, stderr.String())
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", table.String())
	if len(rep.Problems) > 0 {
		t.Errorf("problems: %q", rep.Problems)
	}
	if strings.Contains(stderr.String(), "warning") {
		t.Errorf("warnings on stderr:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "bench: catch-up batched, run 1/1") {
		t.Errorf("no progress on stderr:\n%s", stderr.String())
	}

	env := rep.Environment
	if !env.Throwaway || env.Postgres == "" || env.Redis == "?" || env.PgRecvLogical == "" || len(env.PluginOptions) < 2 {
		t.Errorf("environment: %+v", env)
	}

	if len(rep.CatchUp) != 2 || rep.CatchUp[0].Workload != "batched" || rep.CatchUp[1].Workload != "single" {
		t.Fatalf("catch-up workloads: %+v", rep.CatchUp)
	}
	for _, c := range rep.CatchUp {
		if len(c.Runs) != 1 {
			t.Errorf("%s: %d runs, want 1", c.Workload, len(c.Runs))
		}
		if c.Changes != 2000 || c.WALBytes == 0 {
			t.Errorf("%s: changes %d, WAL %d", c.Workload, c.Changes, c.WALBytes)
		}
		if c.EngineRate <= 0 || c.RecvRate <= 0 || c.Ratio <= 0 || c.EngineSeconds <= 0 || c.RecvSeconds <= 0 {
			t.Errorf("%s: rates %v, %v, ratio %v", c.Workload, c.EngineRate, c.RecvRate, c.Ratio)
		}
		if want := c.EngineSeconds / c.RecvSeconds; c.Ratio < want*0.999 || c.Ratio > want*1.001 {
			t.Errorf("%s: ratio %v, want engine/pg_recvlogical = %v", c.Workload, c.Ratio, want)
		}
		if c.EngineCPUPer100k <= 0 {
			t.Errorf("%s: engine CPU per 100k changes %v", c.Workload, c.EngineCPUPer100k)
		}
		run := c.Runs[0]
		if run.KeysLeft != 0 {
			t.Errorf("%s: %d keys left", c.Workload, run.KeysLeft)
		}
		if run.EngineStartupSeconds <= 0 || run.EngineStartupSeconds > run.EngineSeconds ||
			run.RecvStartupSeconds <= 0 || run.RecvStartupSeconds > run.RecvSeconds {
			t.Errorf("%s: startup times %+v", c.Workload, run)
		}
		// The walsender's CPU is read while the slot is seen active (polled
		// every 10 ms); a consumer done before the first poll saw it (its
		// startup is its whole run: 23 ms for 2 transactions on a quiet
		// machine) has none to read.
		if (run.EngineWalsenderCPU < 0 && run.EngineStartupSeconds < run.EngineSeconds) ||
			(run.RecvWalsenderCPU < 0 && run.RecvStartupSeconds < run.RecvSeconds) {
			t.Errorf("%s: walsender CPU unknown on throwaway servers: %+v", c.Workload, run)
		}
	}
	if got := rep.CatchUp[1].Transactions; got != 2000 {
		t.Errorf("single-row transactions = %d", got)
	}
	if got := rep.CatchUp[0].Transactions; got != 2 {
		t.Errorf("batched transactions = %d", got)
	}

	if len(rep.Latency) != 1 {
		t.Fatalf("latency: %+v", rep.Latency)
	}
	l := rep.Latency[0]
	if l.Lost != 0 {
		t.Errorf("lost invalidations: %d", l.Lost)
	}
	if l.Writes < 150 || l.Writes > 201 || l.AchievedPerSecond < 150 || l.AchievedPerSecond > 230 {
		t.Errorf("writes %d at %v/s, want about 200 at 200/s", l.Writes, l.AchievedPerSecond)
	}
	if l.P50Ms <= 0 || l.P50Ms > l.P99Ms || l.P99Ms > l.P999Ms || l.P999Ms > l.MaxMs || l.MaxMs > 5000 {
		t.Errorf("percentiles: %+v", l)
	}

	m := rep.Memory
	if m == nil {
		t.Fatal("no memory measurement")
	}
	if m.Rows != 20000 || m.PeakRSSBytes <= 0 || m.BaselineRSSBytes <= 0 || m.PeakRSSBytes < m.BaselineRSSBytes || m.WALBytes == 0 {
		t.Errorf("memory: %+v", m)
	}
	if m.Met != nil {
		t.Errorf("the 2,000,000-row target judged a %d-row run", m.Rows)
	}

	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil || !json.Valid(js.Bytes()) {
		t.Errorf("JSON: %v\n%s", err, js.String())
	}
}

func TestCommandWithoutPgRecvLogical(t *testing.T) {
	opts := DefaultOptions()
	opts.PgRecvLogical = "/nonexistent/pg_recvlogical"
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := Command(context.Background(), opts, &stdout, &stderr)
	if code != 2 {
		t.Errorf("exit status %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "pg_recvlogical not found") {
		t.Errorf("stderr: %q", stderr.String())
	}
	if stdout.Len() > 0 {
		t.Errorf("stdout: %q", stdout.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v: servers were started before the check", d)
	}
}

func TestCommandBadOptions(t *testing.T) {
	opts := DefaultOptions()
	opts.PostgresDSN = "postgres://localhost/x"
	var stdout, stderr bytes.Buffer
	if code := Command(context.Background(), opts, &stdout, &stderr); code != 2 {
		t.Errorf("exit status %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "--postgres-dsn and --redis-addr go together") {
		t.Errorf("stderr: %q", stderr.String())
	}
}

// TestBenchGivenServersCleansUp runs a tiny bench against servers it did
// not start and checks that it leaves them as it found them.
func TestBenchGivenServersCleansUp(t *testing.T) {
	pg := harness.PostgresT(t, harness.PostgresOptions{})
	rd := harness.RedisT(t, harness.RedisOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, `SELECT pg_create_logical_replication_slot('someone_elses', 'pgoutput')`); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	if err := rdb.ConfigSet(ctx, "notify-keyspace-events", "Ex").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "item:999999", "not the bench's", 0).Err(); err != nil {
		t.Fatal(err)
	}

	opts := DefaultOptions()
	opts.Engine = harness.BuildEngine(t)
	opts.PostgresDSN, opts.RedisAddr = pg.DSN("postgres"), rd.Addr()
	opts.Rows, opts.Repeat, opts.BigRows = 500, 1, 2000
	opts.Rates, opts.Duration = Rates{{Max: true}}, 300*time.Millisecond
	opts.Instances = 2 // its tables, publications, slots and keys go too
	var stderr syncBuffer
	rep, err := Run(ctx, opts, &stderr)
	if err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, stderr.String())
	}
	if rep.Environment.Throwaway || len(rep.CatchUp) != 2 || len(rep.InstancesCatchUp) != 2 || len(rep.Latency) != 1 || rep.Memory == nil || len(rep.Problems) > 0 {
		t.Errorf("report: %+v", rep)
	}
	if rep.CatchUp[0].Runs[0].EngineWalsenderCPU != -1 {
		t.Error("walsender CPU read from /proc for a server that may be remote")
	}
	if stderr.String() != "" {
		t.Errorf("stderr:\n%s", stderr.String())
	}

	db, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	var slots []string
	rows, _ := db.Query(ctx, `SELECT slot_name::text FROM pg_replication_slots ORDER BY 1`)
	if slots, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(slots) != 1 || slots[0] != "someone_elses" {
		t.Errorf("slots after the bench: %q, want only someone_elses", slots)
	}
	var pubs, tables int
	if err := db.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_publication), (SELECT count(*) FROM pg_class WHERE relname LIKE 'cdcbench%')`).Scan(&pubs, &tables); err != nil {
		t.Fatal(err)
	}
	if pubs != 0 || tables != 0 {
		t.Errorf("left behind: %d publications, %d cdcbench relations", pubs, tables)
	}
	if flags := rdb.ConfigGet(ctx, "notify-keyspace-events").Val()["notify-keyspace-events"]; flags != "xE" && flags != "Ex" {
		t.Errorf("notify-keyspace-events = %q, want Ex restored", flags)
	}
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "item:999999" {
		t.Errorf("Redis keys after the bench: %q, want only item:999999", keys)
	}
}
