package config

import "time"

// DefaultChannel is the default publish channel and stream key of rules.
const DefaultChannel = "cdcinvalidate:changes"

// DefaultStreamMaxLen is the default stream_maxlen.
const DefaultStreamMaxLen = 100000

func (c *Config) setDefaults() {
	p := &c.Postgres
	if p.Slot == "" {
		p.Slot = "cdcinvalidate"
	}
	if p.Publication == "" {
		p.Publication = "cdcinvalidate"
	}
	if p.StatusInterval == 0 {
		p.StatusInterval = 10 * time.Second
	}
	if p.TxnBufferMB == 0 {
		p.TxnBufferMB = 64
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = 10 * time.Second
	}
	if p.WarnRetainedWALMB == 0 {
		p.WarnRetainedWALMB = 4096
	}
	if p.StandbyRetry == 0 {
		p.StandbyRetry = time.Second
	}
	if c.Consistency.OnHistoryLost == "" {
		c.Consistency.OnHistoryLost = "flush"
	}
	if c.Consistency.OnFirstStart == "" {
		c.Consistency.OnFirstStart = "flush"
	}
	r := &c.Redis
	if r.WaitTimeout == 0 {
		r.WaitTimeout = time.Second
	}
	if r.DialTimeout == 0 {
		r.DialTimeout = 5 * time.Second
	}
	if r.ReadTimeout == 0 {
		r.ReadTimeout = 10 * time.Second
	}
	if r.WriteTimeout == 0 {
		r.WriteTimeout = 10 * time.Second
	}
	s := &c.Sink
	if s.DeleteCommand == "" {
		s.DeleteCommand = "unlink"
	}
	if s.MaxBatchKeys == 0 {
		s.MaxBatchKeys = 10000
	}
	if s.ScanCount == 0 {
		s.ScanCount = 1000
	}
	if s.MaxKeyBytes == 0 {
		s.MaxKeyBytes = 64 << 10
	}
	if s.MaxBackoff == 0 {
		s.MaxBackoff = 5 * time.Second
	}
	if c.Metrics.ReadyMaxLag == 0 {
		c.Metrics.ReadyMaxLag = 30 * time.Second
	}
	if c.Metrics.SlotPollInterval == 0 {
		c.Metrics.SlotPollInterval = 15 * time.Second
	}
	c.Verify.setDefaults()
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
}

// LeaseFenceOrDefault returns client.lease_fence with its default.
func (c Client) LeaseFenceOrDefault() time.Duration {
	if c.LeaseFence == nil {
		return 50 * time.Millisecond
	}
	return *c.LeaseFence
}
