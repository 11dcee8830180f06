package main

import (
	"runtime/debug"
	"testing"

	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/config"
)

// Unless GOMEMLIMIT is set, the engine sets the collector's soft limit to
// txn_buffer_mb + 32 MiB; GOGC stays the runtime's (GOGC=200 was measured,
// docs/configuration.md "Performance and memory", and not made the default:
// peak RSS 94-99 MB against the 100 MB goal).
func TestSetMemoryLimitKeepsWhatTheUserSet(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	cfg := &config.Config{}
	cfg.Postgres.TxnBufferMB = 10
	for _, tc := range []struct {
		memlimit  string
		wantLimit int64
	}{
		{"", (10 + 32) << 20},
		{"1GiB", 1 << 40}, // the runtime read GOMEMLIMIT at start: left as it is
	} {
		t.Setenv("GOMEMLIMIT", tc.memlimit)
		debug.SetMemoryLimit(1 << 40)
		setMemoryLimit(cfg, zap.NewNop())
		if got := debug.SetMemoryLimit(-1); got != tc.wantLimit {
			t.Errorf("GOMEMLIMIT=%q: soft limit %d, want %d", tc.memlimit, got, tc.wantLimit)
		}
		if got := debug.SetGCPercent(100); got != 100 {
			t.Errorf("GOMEMLIMIT=%q: GC percent %d, want the runtime's 100", tc.memlimit, got)
		}
	}
}
