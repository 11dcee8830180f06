package config

import (
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/config/defaults"
)

// Verify configures the online consistency verifier (package verifier):
// it re-reads a deterministic sample of invalidated keys after each window
// and counts them consistent, stale or unverifiable.
type Verify struct {
	// Enabled turns the verifier on. Default false. Env: CDC_VERIFY_ENABLED.
	Enabled bool `yaml:"enabled"`
	// SampleRate checks 1 in SampleRate invalidated keys, chosen by a hash
	// of the key (so every change of a sampled key is checked). Default
	// 1000; 1 checks every key.
	SampleRate int `yaml:"sample_rate"`
	// Windows are the ages at which each sampled invalidation is checked.
	// Default [1s, 60s, 600s]; from the environment as "1s,60s".
	Windows []time.Duration `yaml:"windows"`
	// MaxPending bounds the checks waiting at once; further samples are
	// dropped and counted (cdcinvalidate_verify_samples_dropped_total),
	// never waited for. Default 10000.
	MaxPending int `yaml:"max_pending"`
	// ReportInterval is how often the engine stores the figures in Redis
	// (Config.VerifyKey) for `cdcinvalidate status`, and once more when it
	// stops. Default 10s.
	ReportInterval time.Duration `yaml:"report_interval"`
}

// Defaults of the verify section.
const (
	DefaultVerifySampleRate     = defaults.VerifySampleRate
	DefaultVerifyMaxPending     = defaults.VerifyMaxPending
	DefaultVerifyReportInterval = defaults.VerifyReportInterval
)

// DefaultVerifyWindows are the default check ages.
var DefaultVerifyWindows = []time.Duration{time.Second, time.Minute, 10 * time.Minute}

func (v *Verify) setDefaults() {
	if v.SampleRate == 0 {
		v.SampleRate = DefaultVerifySampleRate
	}
	if len(v.Windows) == 0 {
		v.Windows = append([]time.Duration(nil), DefaultVerifyWindows...)
	}
	if v.MaxPending == 0 {
		v.MaxPending = DefaultVerifyMaxPending
	}
	if v.ReportInterval == 0 {
		v.ReportInterval = DefaultVerifyReportInterval
	}
}

func (v *Verify) validate(add func(path, format string, args ...any)) {
	if v.SampleRate < 1 {
		add("verify.sample_rate", "sample_rate %d must be at least 1 "+
			"(1 checks every key, 1000 one key in a thousand)", v.SampleRate)
	}
	for i, w := range v.Windows {
		if w < 10*time.Millisecond || w > 24*time.Hour {
			add("verify.windows", "windows[%d] %s is out of range: use 10ms to 24h", i, w)
		}
		if i > 0 && w <= v.Windows[i-1] {
			add("verify.windows", "windows must grow: %s follows %s", w, v.Windows[i-1])
		}
	}
	if len(v.Windows) > 8 {
		add("verify.windows", "at most 8 windows (got %d)", len(v.Windows))
	}
	if v.MaxPending < 1 {
		add("verify.max_pending", "max_pending %d must be at least 1", v.MaxPending)
	}
	if v.ReportInterval < 10*time.Millisecond || v.ReportInterval > time.Hour {
		add("verify.report_interval", "report_interval %s is out of range: use 10ms to 1h", v.ReportInterval)
	}
}

// VerifyKey is where the engine keeps the verifier's latest figures for
// `cdcinvalidate status` (a JSON string, rewritten every verify.report_interval and when the
// engine stops).
func (c *Config) VerifyKey() string {
	return "cdcinvalidate:" + c.Postgres.Slot + ":verify"
}
