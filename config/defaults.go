package config

import (
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/config/defaults"
)

// DefaultChannel is the default publish channel and stream key of rules.
const DefaultChannel = defaults.Channel

// DefaultStreamMaxLen is the default stream_maxlen.
const DefaultStreamMaxLen = defaults.StreamMaxLen

// setDefaults fills every option left out (zero) with its value from the
// defaults package.
func (c *Config) setDefaults() {
	p := &c.Postgres
	setZero(&p.Slot, defaults.Slot)
	setZero(&p.Publication, defaults.Publication)
	setZero(&p.StatusInterval, defaults.StatusInterval)
	setZero(&p.TxnBufferMB, defaults.TxnBufferMB)
	setZero(&p.MaxBackoff, defaults.PostgresBackoff)
	setZero(&p.WarnRetainedWALMB, defaults.WarnRetainedWALMB)
	setZero(&p.StandbyRetry, defaults.StandbyRetry)
	setZero(&p.CatalogCheckInterval, defaults.CatalogCheckInterval)
	setZero(&c.Consistency.OnHistoryLost, defaults.OnHistoryLost)
	setZero(&c.Consistency.OnFirstStart, defaults.OnFirstStart)
	r := &c.Redis
	setZero(&r.WaitTimeout, defaults.WaitTimeout)
	setZero(&r.DialTimeout, defaults.DialTimeout)
	setZero(&r.ReadTimeout, defaults.ReadTimeout)
	setZero(&r.WriteTimeout, defaults.WriteTimeout)
	s := &c.Sink
	setZero(&s.DeleteCommand, defaults.DeleteCommand)
	setZero(&s.MaxBatchKeys, defaults.MaxBatchKeys)
	setZero(&s.ScanCount, defaults.ScanCount)
	setZero(&s.MaxKeyBytes, defaults.MaxKeyBytes)
	setZero(&s.MaxInFlight, defaults.MaxInFlight)
	setZero(&s.OnLongKey, defaults.OnLongKey)
	setZero(&s.MaxBackoff, defaults.SinkBackoff)
	setZero(&c.Metrics.ReadyMaxLag, defaults.ReadyMaxLag)
	setZero(&c.Metrics.SlotPollInterval, defaults.SlotPollInterval)
	c.Verify.setDefaults()
	setZero(&c.Log.Level, defaults.LogLevel)
	setZero(&c.Log.Format, defaults.LogFormat)
}

// setZero sets *p to def when it is the zero value (the option was left out).
func setZero[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// SoftMemoryLimit is the garbage collector's soft memory limit the command
// sets unless GOMEMLIMIT is given: the streamed-transaction buffer plus
// defaults.SoftMemoryHeadroom.
func (c *Config) SoftMemoryLimit() int64 {
	return int64(c.Postgres.TxnBufferMB)<<20 + defaults.SoftMemoryHeadroom
}

// LeaseFenceOrDefault returns client.lease_fence with its default.
func (c Client) LeaseFenceOrDefault() time.Duration {
	if c.LeaseFence == nil {
		return defaults.LeaseFence
	}
	return *c.LeaseFence
}
