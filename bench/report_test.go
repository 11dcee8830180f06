package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestFormatters(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{thousands(0), "0"},
		{thousands(999), "999"},
		{thousands(1000), "1,000"},
		{thousands(200000), "200,000"},
		{thousands(2000000), "2,000,000"},
		{thousands(-1234567), "-1,234,567"},
		{seconds(0.0123), "0.012 s"},
		{seconds(1.234), "1.23 s"},
		{seconds(123.4), "123 s"},
		{seconds(-1), "-"},
		{millis(0.456), "0.46 ms"},
		{millis(12.34), "12.3 ms"},
		{megabytes(-1), "-"},
		{megabytes(1_500_000), "1.5 MB"},
		{megabytes(150_000_000), "150 MB"},
		{cpu(-1), "-"},
		{cpu(0.5), "0.50 s"},
		{verdict("<= 1.15x", nil), "<= 1.15x"},
		{verdict("<= 1.15x", ptr(true)), "<= 1.15x ok"},
		{verdict("<= 1.15x", ptr(false)), "<= 1.15x MISSED"},
		{trimFloat(5), "5"},
		{trimFloat(2.5), "2.5"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func sampleReport() *Report {
	return &Report{
		Started: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC),
		Environment: Environment{
			EngineBinary: "/tmp/cdcinvalidate", GoVersion: "go1.26", Platform: "linux/amd64", CPUs: 2,
			Postgres: "15.13", Redis: "7.0.15", Throwaway: true, PgRecvLogical: "/usr/bin/pg_recvlogical",
			PluginOptions: []string{"proto_version=2", "publication_names=cdcbench_pub"}, LoadAverage: [2]float64{0.5, 1.25},
		},
		Settings: Settings{Rows: 200000, Batch: 1000, Repeat: 1, Rates: []string{"500", "2000", "max"}, DurationSeconds: 10, MaxConns: 2, BigRows: 2000000},
		CatchUp: []CatchUp{{
			Workload: "batched", Description: "batched, 1,000 rows/txn", Changes: 200000, Transactions: 200, WALBytes: 24_000_000,
			EngineSeconds: 1.2, RecvSeconds: 1.0, EngineRate: 166666.7, RecvRate: 200000, Ratio: 1.2, EngineCPUPer100k: 0.35,
			TargetRatio: 1.15, Met: false, CPU: CPUPer100k{EngineWalsender: 0.45, Engine: 0.35, Redis: 0.05, RecvWalsender: 0.475, Recv: 0.125},
			Runs: []CatchUpRun{{EngineSeconds: 1.2, EngineStartupSeconds: 0.05, EngineCPUSeconds: 0.7, EngineWalsenderCPU: 0.9,
				RecvSeconds: 1.0, RecvStartupSeconds: 0.01, RecvWalsenderCPU: 0.95, Ratio: 1.2, EngineMaxRSSBytes: 30_000_000}},
		}},
		Latency: []Latency{
			{Rate: "500", TargetPerSecond: 500, Conns: 1, Writes: 5000, AchievedPerSecond: 499.9, P50Ms: 0.8, P99Ms: 2.1, P999Ms: 3.3, MaxMs: 4.4},
			{Rate: "2000", TargetPerSecond: 2000, Conns: 2, Writes: 20000, AchievedPerSecond: 1999, P50Ms: 0.9, P99Ms: 3.1, P999Ms: 6, MaxMs: 12.5, TargetP99Ms: 5, Met: ptr(true),
				RedisRTTP50Ms: 1.3, RedisRTTP99Ms: 2.6, TargetP99MeasuredRTTMs: 2.3, MetMeasuredRTT: ptr(false)},
			{Rate: "max", Conns: 2, Writes: 40000, AchievedPerSecond: 4000, P50Ms: 1.5, P99Ms: 7, P999Ms: 9, MaxMs: 20, Lost: 1},
		},
		Memory:   &Memory{Rows: 2000000, WALBytes: 250_000_000, InsertSeconds: 9.5, ConfirmedSeconds: 1.5, BaselineRSSBytes: 20_000_000, PeakRSSBytes: 95_000_000, TargetRSSBytes: TargetRSSBytes, Met: ptr(true)},
		Problems: []string{"latency at max: 1 of 40000 writes were not seen invalidated within 5s"},
	}
}

func TestWriteTable(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"PostgreSQL 15.13, Redis 7.0.15 (throwaway servers on 127.0.0.1)",
		"pgoutput options of both consumers: proto_version=2, publication_names=cdcbench_pub",
		"load average (1 min) 0.50 at the start, 1.25 at the end, on 2 CPUs",
		"Median of 1 run.",
		"batched, 1,000 rows/txn",
		"166,667", "200,000", "1.20x", "<= 1.15x MISSED", "0.35 s",
		"0.85 s", "0.60 s", "1.42x", // CPU paths: 0.45+0.35+0.05, 0.475+0.125, their ratio
		"500/s", "2000/s", "max", "p99 <= 5 ms ok", "12.5 ms",
		"Redis round trip through the delay proxy at 2000/s (a PING every 10 ms): p50 1.30 ms, p99 2.60 ms; target over it: p99 <= 2.30 ms MISSED.",
		"2,000,000", "95 MB", "<= 100 MB ok",
		"PROBLEMS:", "1 of 40000 writes",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// Columns line up: every row of the catch-up table has the header's width.
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "workload") && strings.Contains(l, "ratio") {
			if len(lines[i+1]) != len(l) {
				t.Errorf("misaligned table:\n%s\n%s", l, lines[i+1])
			}
			break
		}
	}
	// An interrupted run says so.
	r := sampleReport()
	r.Settings.Repeat = 2
	var partial bytes.Buffer
	if err := r.WriteTable(&partial); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(partial.String(), "Median of the runs that completed (2 requested).") {
		t.Errorf("partial report:\n%s", partial.String())
	}
	// Sections that were not measured are left out.
	var empty bytes.Buffer
	r = sampleReport()
	r.CatchUp, r.Latency, r.Memory, r.Problems = nil, nil, nil, nil
	if err := r.WriteTable(&empty); err != nil {
		t.Fatal(err)
	}
	for _, absent := range []string{"Catch-up", "latency", "Peak memory", "PROBLEMS"} {
		if strings.Contains(empty.String(), absent) {
			t.Errorf("empty report mentions %q:\n%s", absent, empty.String())
		}
	}
}

func TestWriteJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, buf.String())
	}
	cu := back["catch_up"].([]any)[0].(map[string]any)
	if cu["ratio"] != 1.2 || cu["target_met"] != false || cu["engine_changes_per_second"] != 166666.7 {
		t.Errorf("catch_up = %v", cu)
	}
	lat := back["latency"].([]any)
	if lat[1].(map[string]any)["target_met"] != true || lat[1].(map[string]any)["p99_ms"] != 3.1 {
		t.Errorf("latency[1] = %v", lat[1])
	}
	if _, has := lat[0].(map[string]any)["target_met"]; has {
		t.Error("a rate without a target has target_met")
	}
	if back["memory"].(map[string]any)["peak_rss_bytes"] != 9.5e7 {
		t.Errorf("memory = %v", back["memory"])
	}
}

func TestSummariseCatchUp(t *testing.T) {
	c := &CatchUp{Changes: 200000, TargetRatio: 1.15, Runs: []CatchUpRun{
		{EngineSeconds: 2.0, RecvSeconds: 1.0, Ratio: 2.0, EngineCPUSeconds: 1.0},
		{EngineSeconds: 1.1, RecvSeconds: 1.0, Ratio: 1.1, EngineCPUSeconds: 0.8},
		{EngineSeconds: 1.2, RecvSeconds: 1.1, Ratio: 1.2 / 1.1, EngineCPUSeconds: 0.9},
	}}
	summariseCatchUp(c)
	if c.EngineSeconds != 1.2 || c.RecvSeconds != 1.0 {
		t.Errorf("medians: engine %v, recv %v", c.EngineSeconds, c.RecvSeconds)
	}
	if c.Ratio != 1.1 || !c.Met {
		t.Errorf("ratio %v met %v: want the median of the runs' ratios, 1.1, met", c.Ratio, c.Met)
	}
	if math.Abs(c.EngineRate-166666.667) > 0.01 || c.RecvRate != 200000 {
		t.Errorf("rates %v %v", c.EngineRate, c.RecvRate)
	}
	if c.EngineCPUPer100k != 0.45 {
		t.Errorf("CPU per 100k = %v, want 0.45", c.EngineCPUPer100k)
	}
	if c.CPU.Engine != 0.45 || c.CPU.EngineWalsender != 0 || c.CPU.RecvTotal() != 0 {
		t.Errorf("CPU per 100k = %+v", c.CPU)
	}
	c.Runs[1].RedisCPUSeconds = -1
	summariseCatchUp(c)
	if c.CPU.Redis != -1 || c.CPU.EngineTotal() != -1 {
		t.Errorf("an unknown run does not make the median unknown: %+v", c.CPU)
	}
	c.Runs = c.Runs[:1]
	summariseCatchUp(c)
	if c.Met {
		t.Error("ratio 2.0 met the 1.15 target")
	}
}

// The memory phase's CPU line: engine, walsender, Redis, and pg_recvlogical
// over the same WAL (--wide); unknown figures say so.
func TestWriteTableMemoryCPU(t *testing.T) {
	r := sampleReport()
	r.Memory = &Memory{Rows: 100000, Wide: true, WALBytes: 131_000_000, InsertSeconds: 15, ConfirmedSeconds: 18,
		BaselineRSSBytes: 23_000_000, PeakRSSBytes: 90_000_000, EngineCPUSeconds: 7.94, WalsenderCPUSeconds: -1,
		RedisCommands: 301543, RedisCPUSeconds: 7.79, RecvSeconds: 4.03, RecvWalsenderCPUSeconds: 1.5, CPUProfile: "/p/engine-cpu-memory.pprof"}
	var buf bytes.Buffer
	if err := r.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	want := "CPU: engine 7.94 s, its walsender unknown, Redis 7.79 s (301,543 commands); pg_recvlogical read the same WAL in 4.03 s (walsender CPU 1.50 s)"
	if out := buf.String(); !strings.Contains(out, want) || !strings.Contains(out, "/p/engine-cpu-memory.pprof") {
		t.Errorf("table lacks %q or the CPU profile:\n%s", want, out)
	}
}
