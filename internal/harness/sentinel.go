package harness

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelOptions configures StartSentinel.
type SentinelOptions struct {
	// Name is the monitored master's name (default "mymaster").
	Name string
	// Sentinels is the number of sentinels (default 3); the quorum is a
	// majority of them.
	Sentinels int
	// DownAfter is down-after-milliseconds (default 1s).
	DownAfter time.Duration
}

// Sentinel is a throwaway Sentinel deployment on loopback ports: one
// master, one replica of it and the sentinels monitoring it.
type Sentinel struct {
	Name      string
	Master    *Redis // the master at start; see CurrentMaster after a failover
	Replica   *Redis
	Sentinels []*Redis
	Quorum    int
}

const sentinelReadyTimeout = 60 * time.Second

// StartSentinel starts the master, its replica and the sentinels, and
// waits until every sentinel knows the replica and the other sentinels.
func StartSentinel(ctx context.Context, opts SentinelOptions) (_ *Sentinel, err error) {
	if opts.Name == "" {
		opts.Name = "mymaster"
	}
	if opts.Sentinels <= 0 {
		opts.Sentinels = 3
	}
	if opts.DownAfter <= 0 {
		opts.DownAfter = time.Second
	}
	s := &Sentinel{Name: opts.Name, Quorum: opts.Sentinels/2 + 1}
	defer func() {
		if err != nil {
			if cerr := s.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	if s.Master, err = StartRedis(ctx, RedisOptions{}); err != nil {
		return nil, fmt.Errorf("start sentinel master: %w", err)
	}
	if s.Replica, err = StartRedis(ctx, RedisOptions{Args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(s.Master.Port())}}); err != nil {
		return nil, fmt.Errorf("start sentinel replica: %w", err)
	}
	conf := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d %d\nsentinel down-after-milliseconds %s %d\nsentinel failover-timeout %s 10000\nsentinel parallel-syncs %s 1\n",
		opts.Name, s.Master.Port(), s.Quorum, opts.Name, opts.DownAfter.Milliseconds(), opts.Name, opts.Name)
	for i := 0; i < opts.Sentinels; i++ {
		r, err := StartRedis(ctx, RedisOptions{ConfigText: conf, Args: []string{"--sentinel"}})
		if err != nil {
			return nil, fmt.Errorf("start sentinel %d: %w", i, err)
		}
		s.Sentinels = append(s.Sentinels, r)
	}
	if err := s.WaitReady(ctx); err != nil {
		return nil, fmt.Errorf("start sentinel: %w", err)
	}
	return s, nil
}

// Addrs lists the sentinels' addresses.
func (s *Sentinel) Addrs() []string {
	out := make([]string, len(s.Sentinels))
	for i, r := range s.Sentinels {
		out[i] = r.Addr()
	}
	return out
}

// WaitReady waits until every sentinel sees the master up, with one
// replica and the other sentinels.
func (s *Sentinel) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, sentinelReadyTimeout)
	defer cancel()
	for _, r := range s.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
		var last string
		for {
			m, err := sc.Master(ctx, s.Name).Result()
			if err == nil {
				last = fmt.Sprint(m)
				if m["num-slaves"] == "1" && m["num-other-sentinels"] == strconv.Itoa(len(s.Sentinels)-1) && !strings.Contains(m["flags"], "down") {
					break
				}
			} else {
				last = err.Error()
			}
			select {
			case <-ctx.Done():
				sc.Close()
				return fmt.Errorf("sentinel %s not ready: %w; last SENTINEL MASTER %s: %s\nlast lines of its log:\n%s", r.Addr(), ctx.Err(), s.Name, last, r.LogTail())
			case <-time.After(100 * time.Millisecond):
			}
		}
		sc.Close()
	}
	return nil
}

// CurrentMaster asks the sentinels for the master's address.
func (s *Sentinel) CurrentMaster(ctx context.Context) (string, error) {
	var errs []error
	for _, r := range s.Sentinels {
		if !r.running() {
			continue
		}
		sc := redis.NewSentinelClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
		addr, err := sc.GetMasterAddrByName(ctx, s.Name).Result()
		sc.Close()
		if err == nil && len(addr) == 2 {
			return addr[0] + ":" + addr[1], nil
		}
		errs = append(errs, err)
	}
	return "", fmt.Errorf("no sentinel names the master %s: %w", s.Name, errors.Join(errs...))
}

// Failover asks a sentinel for a failover (SENTINEL FAILOVER) and waits
// until every sentinel names a master other than the old one.
func (s *Sentinel) Failover(ctx context.Context) (string, error) {
	old, err := s.CurrentMaster(ctx)
	if err != nil {
		return "", err
	}
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Sentinels[0].Addr(), MaxRetries: -1})
	defer sc.Close()
	if err := sc.Failover(ctx, s.Name).Err(); err != nil {
		return "", fmt.Errorf("SENTINEL FAILOVER %s: %w", s.Name, err)
	}
	return s.WaitNewMaster(ctx, old)
}

// WaitNewMaster waits until every running sentinel names a master other
// than old, and returns it.
func (s *Sentinel) WaitNewMaster(ctx context.Context, old string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, sentinelReadyTimeout)
	defer cancel()
	for {
		addr, agreed := "", true
		for _, r := range s.Sentinels {
			if !r.running() {
				continue
			}
			sc := redis.NewSentinelClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
			a, err := sc.GetMasterAddrByName(ctx, s.Name).Result()
			sc.Close()
			if err != nil || len(a) != 2 {
				agreed = false
				break
			}
			got := a[0] + ":" + a[1]
			if got == old || (addr != "" && got != addr) {
				agreed = false
				break
			}
			addr = got
		}
		if agreed && addr != "" {
			return addr, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("sentinels still name %s (or disagree) after the failover: %w", old, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Node returns the server (master or replica) listening at addr.
func (s *Sentinel) Node(addr string) *Redis {
	for _, r := range []*Redis{s.Master, s.Replica} {
		if r != nil && r.Addr() == addr {
			return r
		}
	}
	return nil
}

// Close stops every server. It is idempotent.
func (s *Sentinel) Close() error {
	var errs []error
	for _, r := range append(append([]*Redis(nil), s.Sentinels...), s.Master, s.Replica) {
		if r == nil {
			continue
		}
		if err := r.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
