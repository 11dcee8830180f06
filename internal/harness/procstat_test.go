package harness

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	tests := []struct {
		name, stat string
		want       time.Duration
		wantErr    bool
	}{
		{"plain", "1234 (postgres) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 0 0", 3 * time.Second, false},
		{"command with spaces and parens", "77 (walsender (x) y) R 1 77 77 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0", 100 * time.Millisecond, false},
		{"no command", "1234 postgres S", 0, true},
		{"too short", "1 (a) S 1 2 3", 0, true},
		{"not numbers", "1 (a) S 1 1 1 0 -1 0 0 0 0 0 x y", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatCPU([]byte(tt.stat))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseStatCPU = %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestStatusBytes(t *testing.T) {
	status := "Name:\tcdcinvalidate\nVmPeak:\t  800000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n"
	tests := []struct {
		text, name string
		want       int64
		wantErr    bool
	}{
		{status, "VmHWM", 51200 * 1024, false},
		{status, "VmRSS", 40960 * 1024, false},
		{status, "VmSwap", -1, true},
		{"VmHWM:\t12 MB\n", "VmHWM", -1, true},
	}
	for _, tt := range tests {
		got, err := statusBytes([]byte(tt.text), tt.name)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("statusBytes(%s) = %d, %v; want %d, error %v", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestProcOfThisProcess(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	hwm, rss, err := ProcMem(os.Getpid())
	if err != nil || hwm <= 0 || rss <= 0 || rss > hwm {
		t.Errorf("ProcMem = %d, %d, %v", hwm, rss, err)
	}
	if _, err := ProcCPU(os.Getpid()); err != nil {
		t.Errorf("ProcCPU: %v", err)
	}
}

func TestWithoutCDCEnv(t *testing.T) {
	t.Setenv("CDC_POSTGRES_DSN", "postgres://elsewhere")
	t.Setenv("CDC_REDIS_PASSWORD", "secret")
	t.Setenv("CDCBENCH_OTHER", "kept") // not CDC_
	env := strings.Join(WithoutCDCEnv([]string{"CDC_REDIS_PASSWORD"}, "CDC_EXTRA=1"), "\n")
	if strings.Contains(env, "CDC_POSTGRES_DSN") {
		t.Error("CDC_POSTGRES_DSN reaches the engine and would override its file")
	}
	if !strings.Contains(env, "CDC_REDIS_PASSWORD=secret") || !strings.Contains(env, "CDCBENCH_OTHER=kept") {
		t.Error("kept variables are missing")
	}
	if !strings.HasSuffix(env, "\nCDC_EXTRA=1") {
		t.Error("the extra variable is not last")
	}
}
