package replication

import (
	"testing"
	"time"
)

func TestParsePGDuration(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1min", time.Minute, true},
		{"60s", time.Minute, true},
		{"2s", 2 * time.Second, true},
		{"500ms", 500 * time.Millisecond, true},
		{"0", 0, true},
		{"1500", 1500 * time.Millisecond, true},
		{"1h", time.Hour, true},
		{"2d", 48 * time.Hour, true},
		{"250us", 250 * time.Microsecond, true},
		{"", 0, false},
		{"-1", 0, false},
		{"1 fortnight", 0, false},
		{"min", 0, false},
		{"999999999999d", 0, false},
	} {
		got, err := parsePGDuration(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parsePGDuration(%q) = %s, %v; want %s, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func FuzzParsePGDuration(f *testing.F) {
	for _, s := range []string{"1min", "60s", "0", "500ms", "2d", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parsePGDuration(s)
		if err == nil && d < 0 {
			t.Fatalf("parsePGDuration(%q) = %s, negative", s, d)
		}
	})
}

// A connection silent for about twice wal_sender_timeout is dead; with the
// server's timeout off, two minutes; never sooner than three status
// intervals.
func TestDeadAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		wst, status, want time.Duration
	}{
		{time.Minute, 10 * time.Second, 2 * time.Minute},
		{2 * time.Second, time.Second, 4 * time.Second},
		{0, 10 * time.Second, 2 * time.Minute},
		{time.Second, 10 * time.Second, 30 * time.Second},
	} {
		if got := deadAfter(tc.wst, tc.status); got != tc.want {
			t.Errorf("deadAfter(%s, %s) = %s, want %s", tc.wst, tc.status, got, tc.want)
		}
	}
}
