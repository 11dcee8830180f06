package config

import (
	"fmt"
	"strings"
	"testing"
)

func TestVerifySection(t *testing.T) {
	t.Parallel()
	base := "postgres:\n  dsn: host=db\nredis:\n  addr: r:6379\nrules:\n  - table: users\n    keys: [\"user:{id}\"]\n"
	cfg, err := Parse("c.yaml", []byte(base+"verify:\n  enabled: true\n  sample_rate: 10\n  windows: [200ms, 2s]\n"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if v := cfg.Verify; !v.Enabled || v.SampleRate != 10 || fmt.Sprint(v.Windows) != "[200ms 2s]" || v.MaxPending != DefaultVerifyMaxPending {
		t.Errorf("verify = %+v", v)
	}
	cfg, err = Parse("c.yaml", []byte(base), mapEnv(map[string]string{"CDC_VERIFY_ENABLED": "true", "CDC_VERIFY_WINDOWS": "1s, 5m"}))
	if err != nil {
		t.Fatal(err)
	}
	if v := cfg.Verify; !v.Enabled || fmt.Sprint(v.Windows) != "[1s 5m0s]" || v.SampleRate != DefaultVerifySampleRate {
		t.Errorf("verify from the environment = %+v", v)
	}
	for _, c := range []struct{ yaml, want string }{
		{"verify:\n  sample_rate: -1\n", "sample_rate -1 must be at least 1"},
		{"verify:\n  windows: [1s, 1s]\n", "windows must grow: 1s follows 1s"},
		{"verify:\n  windows: [1ms]\n", "windows[0] 1ms is out of range"},
		{"verify:\n  windows: [1s, 2s, 3s, 4s, 5s, 6s, 7s, 8s, 9s]\n", "at most 8 windows"},
		{"verify:\n  max_pending: -5\n", "max_pending -5 must be at least 1"},
		{"verify:\n  report_interval: 1ms\n", "report_interval 1ms is out of range"},
		{"verify:\n  windows: [soon]\n", "c.yaml:9: cannot unmarshal !!str `soon` into time.Duration"},
	} {
		_, err := Parse("c.yaml", []byte(base+c.yaml), noEnv)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.yaml, err, c.want)
		}
	}
	_, err = Parse("c.yaml", []byte(base), mapEnv(map[string]string{"CDC_VERIFY_WINDOWS": "1s,later"}))
	if err == nil || !strings.Contains(err.Error(), "CDC_VERIFY_WINDOWS") || !strings.Contains(err.Error(), "item 2") {
		t.Errorf("bad CDC_VERIFY_WINDOWS: %v", err)
	}
}
