package bench

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

func TestKeyspaceFlags(t *testing.T) {
	tests := []struct{ old, want string }{
		{"", "Kg"},
		{"Ex", "ExKg"},
		{"KEA", "KEA"}, // A covers g
		{"Kg", "Kg"},
		{"Elg", "ElgK"},
	}
	for _, tt := range tests {
		if got := keyspaceFlags(tt.old); got != tt.want {
			t.Errorf("keyspaceFlags(%q) = %q, want %q", tt.old, got, tt.want)
		}
	}
}

func TestWriterConns(t *testing.T) {
	tests := []struct {
		r    Rate
		want int
	}{
		{Rate{PerSecond: 1}, 1},
		{Rate{PerSecond: 500}, 1},
		{Rate{PerSecond: 1000}, 1},
		{Rate{PerSecond: 2000}, 2},
		{Rate{PerSecond: 2001}, 3},
		{Rate{PerSecond: 100000}, 4},
		{Rate{Max: true}, 3},
	}
	for _, tt := range tests {
		if got := writerConns(tt.r, 3); got != tt.want {
			t.Errorf("writerConns(%v) = %d, want %d", tt.r, got, tt.want)
		}
	}
}

func TestWorkloadSQL(t *testing.T) {
	tests := []struct {
		rows, batch int
		want        []string
	}{
		{200000, 1000, []string{"FOR i IN 0..199 LOOP", "i::bigint * 1000", "least((i::bigint + 1) * 1000, 200000)", "COMMIT;"}},
		{2500, 1000, []string{"FOR i IN 0..2 LOOP", "least((i::bigint + 1) * 1000, 2500)"}}, // a last partial batch
		{5, 1, []string{"FOR i IN 0..4 LOOP", "i::bigint * 1 AND"}},
	}
	for _, tt := range tests {
		sql := workloadSQL(tt.rows, tt.batch)
		for _, w := range tt.want {
			if !strings.Contains(sql, w) {
				t.Errorf("workloadSQL(%d, %d) lacks %q:\n%s", tt.rows, tt.batch, w, sql)
			}
		}
	}
	if got := (workload{batch: 1000}).transactions(2500); got != 3 {
		t.Errorf("transactions = %d, want 3", got)
	}
}

func TestTracker(t *testing.T) {
	t0 := time.Now().Add(-time.Minute)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tr := newTracker()
	if !tr.begin("item:1") || !tr.begin("item:2") || !tr.begin("item:3") || !tr.begin("item:4") {
		t.Fatal("begin refused a free key")
	}
	if tr.begin("item:1") {
		t.Error("begin accepted a key still awaited")
	}
	tr.committed("item:1", at(0))
	tr.deleted("item:1", at(3)) // 3 ms
	tr.deleted("item:2", at(9)) // seen before the commit returned
	tr.committed("item:2", at(10))
	tr.deleted("item:2", at(11)) // a second event: ignored
	tr.deleted("other:7", at(1)) // not awaited: ignored
	tr.committed("item:3", at(0))
	// item:3 is never deleted: lost (its commit is a minute old).
	// item:4 never committed (a failed write): forgotten, not lost.
	if !tr.begin("item:1") {
		t.Error("a key is still awaited after its deletion")
	}
	tr.committed("item:1", at(20))
	tr.deleted("item:1", at(21))
	lost, lat := tr.drain(context.Background(), 5*time.Second)
	if lost != 1 {
		t.Errorf("lost = %d, want 1", lost)
	}
	want := []time.Duration{3 * time.Millisecond, 0, time.Millisecond}
	if len(lat) != len(want) {
		t.Fatalf("latencies = %v, want %v", lat, want)
	}
	for i := range want {
		if lat[i] != want[i] {
			t.Errorf("latencies = %v, want %v", lat, want)
			break
		}
	}
	if n := tr.pendingCount(); n != 0 {
		t.Errorf("%d still pending after drain", n)
	}
	if lost, lat := tr.drain(context.Background(), time.Second); lost != 0 || len(lat) != 0 {
		t.Errorf("second drain = %d, %v", lost, lat)
	}
}

func TestTrackerDrainWaits(t *testing.T) {
	tr := newTracker()
	tr.begin("item:1")
	tr.committed("item:1", time.Now())
	go func() {
		time.Sleep(30 * time.Millisecond)
		tr.deleted("item:1", time.Now())
	}()
	start := time.Now()
	lost, lat := tr.drain(context.Background(), 5*time.Second)
	if lost != 0 || len(lat) != 1 {
		t.Errorf("drain = %d lost, %v", lost, lat)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("drain took %v", d)
	}
}

func TestFindPgRecvLogical(t *testing.T) {
	if _, err := findPgRecvLogical("/nonexistent/pg_recvlogical"); err == nil || !strings.Contains(err.Error(), "--pg-recvlogical") {
		t.Errorf("explicit missing binary: %v", err)
	}
	dir := t.TempDir()
	fake := dir + "/pg_recvlogical"
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := findPgRecvLogical("", dir); err != nil || got != fake {
		t.Errorf("preferred dir: %q, %v", got, err)
	}
	t.Setenv("PATH", t.TempDir())
	if got, err := findPgRecvLogical(""); err == nil {
		// Only /usr/lib/postgresql/*/bin can have it now.
		if !strings.HasPrefix(got, "/usr/lib/postgresql/") {
			t.Errorf("found %q with an empty PATH", got)
		}
	} else if !strings.Contains(err.Error(), "pg_recvlogical not found") || !strings.Contains(err.Error(), "--pg-recvlogical") {
		t.Errorf("message: %v", err)
	}
}

func TestRedisCounters(t *testing.T) {
	info := "# Stats\r\ntotal_connections_received:5\r\ntotal_commands_processed:1200\r\n# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\n"
	before := parseRedisCounters(info)
	if !before.ok || before.commands != 1200 || before.cpu != 3.75 {
		t.Fatalf("parsed %+v", before)
	}
	after := parseRedisCounters(strings.NewReplacer("1200", "1301", "2.250000", "2.750000").Replace(info))
	if n, c := after.since(before); n != 100 || c != 0.5 {
		t.Errorf("since = %d, %v; want 100 (less the INFO), 0.5", n, c)
	}
	if n, c := parseRedisCounters("garbage").since(before); n != -1 || c != -1 {
		t.Errorf("unknown = %d, %v", n, c)
	}
}
