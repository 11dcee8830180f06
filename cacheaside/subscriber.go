package cacheaside

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/internal/retry"
)

// Backoff between subscription attempts.
const (
	subMinBackoff = 50 * time.Millisecond
	subMaxBackoff = 5 * time.Second
)

// message is the engine's invalidation message (sink.PublishChannel): the
// keys of an applied batch, or the patterns of a TRUNCATE. LSN is absent
// when a batch holds only part of a large transaction.
type message struct {
	LSN      string   `json:"lsn"`
	Keys     []string `json:"keys"`
	Patterns []string `json:"patterns"`
}

// subscriber holds the invalidation subscription of one Client in one
// goroutine, which it owns: stop ends it and waits for it. While the
// subscription is confirmed the L1 is up; any receive error, missed health
// check or unsubscription clears it and takes it down until a new
// subscription is confirmed, because messages may have been missed.
type subscriber struct {
	rdb     redis.UniversalClient
	channel string
	health  time.Duration
	l1      *l1
	stats   *Stats
	log     *zap.Logger

	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	ps     *redis.PubSub // the current subscription, closed by stop to end a blocked receive
	closed bool
}

func startSubscriber(rdb redis.UniversalClient, channel string, health time.Duration, c *l1, stats *Stats, log *zap.Logger) *subscriber {
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscriber{rdb: rdb, channel: channel, health: health, l1: c, stats: stats,
		log: log.With(zap.String("channel", channel)), cancel: cancel, done: make(chan struct{})}
	go s.run(ctx)
	return s
}

// stop ends the goroutine and waits for it. The L1 is left down and empty.
func (s *subscriber) stop() {
	s.cancel()
	s.mu.Lock()
	s.closed = true
	if s.ps != nil {
		_ = s.ps.Close() // interrupts a receive that waits for the health interval
	}
	s.mu.Unlock()
	<-s.done
}

func (s *subscriber) run(ctx context.Context) {
	defer close(s.done)
	defer s.l1.setUp(false)
	backoff := retry.Backoff{Min: subMinBackoff, Max: subMaxBackoff}
	for attempt := 1; ; attempt++ {
		wasUp, err := s.once(ctx)
		s.l1.setUp(false)
		if ctx.Err() != nil {
			return
		}
		s.stats.SubscriptionDrops.Add(1)
		reloadSlots(s.rdb) // on a cluster, the channel's node may have failed over
		if wasUp {
			backoff.Reset()
			attempt = 1
		}
		wait := backoff.Next()
		if attempt == 1 || attempt%10 == 0 {
			s.log.Warn("invalidation subscription lost; L1 cleared and off until it is back",
				zap.Error(err), zap.Int("attempt", attempt), zap.Duration("retry_in", wait))
		}
		if retry.Sleep(ctx, wait) != nil {
			return
		}
	}
}

var errNoPong = errors.New("no answer to PING within the health interval")

// once holds one subscription until it fails or ctx ends. wasUp reports
// that it had been confirmed.
func (s *subscriber) once(ctx context.Context) (wasUp bool, err error) {
	ps := s.rdb.Subscribe(ctx, s.channel)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = ps.Close()
		return false, ctx.Err()
	}
	s.ps = ps
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.ps = nil
		s.mu.Unlock()
		_ = ps.Close()
	}()

	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, s.health)
		if ctx.Err() != nil {
			return wasUp, ctx.Err()
		}
		if err != nil {
			if !isTimeout(err) {
				return wasUp, fmt.Errorf("receive: %w", err)
			}
			if pinged {
				return wasUp, errNoPong
			}
			if err := ps.Ping(ctx); err != nil {
				return wasUp, fmt.Errorf("ping: %w", err)
			}
			pinged = true
			continue
		}
		pinged = false // any traffic shows the connection is alive
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" || m.Channel != s.channel {
				return wasUp, fmt.Errorf("unexpected %s of %q", m.Kind, m.Channel)
			}
			s.l1.setUp(true)
			if !wasUp {
				s.log.Info("invalidation subscription confirmed; L1 on")
			}
			wasUp = true
		case *redis.Message:
			s.handle(m.Payload)
		case *redis.Pong:
		default:
			return wasUp, fmt.Errorf("unexpected %T on the subscription", msg)
		}
	}
}

// handle drops the keys a message names. A TRUNCATE's patterns, or a
// message it cannot read, may cover any key, so those clear the whole L1.
func (s *subscriber) handle(payload string) {
	var m message
	err := json.Unmarshal([]byte(payload), &m)
	switch {
	case err != nil:
		s.l1.flush()
		s.log.Warn("undecodable invalidation message; L1 cleared", zap.Error(err), zap.Int("bytes", len(payload)))
	case len(m.Patterns) > 0:
		s.l1.flush()
		s.log.Debug("TRUNCATE invalidation; L1 cleared", zap.Strings("patterns", m.Patterns))
	case m.Keys == nil:
		s.l1.flush()
		s.log.Warn("invalidation message without keys or patterns; L1 cleared", zap.Int("bytes", len(payload)))
	default:
		s.l1.invalidate(m.Keys)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
