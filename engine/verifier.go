package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/mapping"
	"github.com/cdcinvalidate/cdcinvalidate/verifier"
)

// The online consistency verifier's wiring (config section verify:).

// newVerifier returns the verifier of the configuration, or nil when it is
// off. It reads keys with rdb and keeps its figures in Redis for `status`.
func (e *Engine) newVerifier(rdb redis.UniversalClient) *verifier.Verifier {
	c := e.cfg.Verify
	if !c.Enabled {
		return nil
	}
	key := e.cfg.VerifyKey()
	started, pid := time.Now().UTC(), os.Getpid()
	staleLogs := &logLimit{every: time.Second, burst: 10}
	return verifier.New(redisReader{rdb}, verifier.Options{
		Rate: uint64(c.SampleRate), Windows: c.Windows, MaxPending: c.MaxPending,
		Observer: e.Metrics.Verifier(), Labeler: labelerOf(e.mapper), ReportEvery: c.ReportInterval,
		// The key names what to look at; its value is never logged (it is
		// application data).
		OnStale: func(s verifier.Sample, window, age time.Duration) {
			if staleLogs.Allow() {
				e.log.Warn("verifier: a sampled key holds a stale value",
					zap.String("key", s.Key), zap.Stringer("kind", s.Kind), zap.Stringer("invalidation_lsn", s.LSN),
					zap.Stringer("floor_lsn", s.Floor), zap.Duration("window", window), zap.Duration("age", age))
			}
		},
		Report: func(ctx context.Context, f []verifier.WindowFigures) {
			b, _ := json.Marshal(verifyRecord{At: time.Now().UTC(), Started: started, PID: pid, Windows: f})
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := rdb.Set(rctx, key, b, 0).Err(); err != nil && ctx.Err() == nil {
				e.log.Warn("could not store the verifier's figures for cdcinvalidate status", zap.String("key", key), zap.Error(err))
			}
		},
	})
}

// verifyRecord is what the engine stores under Config.VerifyKey. Every
// engine process counts from zero and overwrites the record of the one
// before; Started and PID tell the processes apart (a test that sums the
// figures of several runs, or a leader and its standby, keeps one record
// per process).
type verifyRecord struct {
	At      time.Time                `json:"at"`
	Started time.Time                `json:"started"`
	PID     int                      `json:"pid"`
	Windows []verifier.WindowFigures `json:"windows"`
}

// labelerOf names the table and rule of keys by the rules' templates.
func labelerOf(m *mapping.Mapper) *verifier.RuleLabeler {
	l := &verifier.RuleLabeler{}
	for _, r := range m.AllRules() {
		rule := fmt.Sprintf("rules[%d]", r.Index())
		for _, t := range r.Templates {
			l.Add(t.Glob(), r.QualifiedTable(), rule)
			if r.Actions.Version {
				tpl := r.Actions.VersionKey
				if tpl == "" {
					tpl = mapping.DefaultVersionKey
				}
				l.Add(strings.Replace(tpl, "{key}", t.Glob(), 1), r.QualifiedTable(), rule)
			}
		}
	}
	return l
}

// redisReader reads keys for the verifier in one pipeline.
type redisReader struct{ rdb redis.UniversalClient }

func (r redisReader) GetMany(ctx context.Context, keys []string) ([]*string, error) {
	cmds := make([]*redis.StringCmd, len(keys))
	_, _ = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Get(ctx, k)
		}
		return nil
	})
	out := make([]*string, len(keys))
	for i, c := range cmds {
		v, err := c.Result()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE"):
			empty := "" // another type than a string: present, unverifiable
			out[i] = &empty
		case err != nil:
			return nil, err
		default:
			out[i] = &v
		}
	}
	return out, nil
}

// logLimit allows burst log lines, then one per every: a flood of stale
// checks must not flood the log. Used from one goroutine.
type logLimit struct {
	every  time.Duration
	burst  int
	tokens int
	last   time.Time
}

func (l *logLimit) Allow() bool {
	now := time.Now()
	if l.last.IsZero() {
		l.tokens, l.last = l.burst, now
	}
	if add := int(now.Sub(l.last) / l.every); add > 0 {
		l.tokens, l.last = min(l.burst, l.tokens+add), l.last.Add(time.Duration(add)*l.every)
	}
	if l.tokens == 0 {
		return false
	}
	l.tokens--
	return true
}
