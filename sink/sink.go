// Package sink applies invalidations to Redis in commit order.
//
// It reads events from the replication stream, groups as many as are queued
// into one batch (keys deduplicated, many transactions per round trip),
// deletes the keys with UNLINK (or DEL) in one pipeline, and only after Redis
// acknowledged the whole batch reports the batch's last transaction end to
// the checkpoint. A TRUNCATE pattern is applied on its own, in order, with
// SCAN + UNLINK (never KEYS); when the watermark in Redis is already past
// its commit (another instance applied it while this one was paused with
// it in hand) it is skipped, so it cannot undo newer work; for the same
// reason version raises and refresh writes of a transaction the watermark
// has passed are not made (see fencedByMark in order.go), so such a
// paused leader cannot undo a newer TRUNCATE either. The rules' other actions go in the same
// pipeline, in this order: version raises (one Lua script, never lowering),
// deletes, refreshed values (the last write to a key in the batch wins, as
// in commit order), generation bumps, then one message per transaction on
// each channel and stream (a transaction's message is kept across batches,
// so its parts, and the stream IDs derived from its commit LSN, come out the
// same after a replay).
//
// A key's effects end in commit and statement order: the events of a batch,
// and the actions of each event, are one ordered list, and the writes and
// deletes of one key are resolved along it (a delete after a refresh write
// turns the write into a delete; a write after a delete stays and is sent
// after it). Plain deletes travel as Event.Keys only when no rule refreshes
// (then their order does not matter); otherwise, and for explicit
// invalidations, as ActDelete actions at their place. On a cluster the
// deletes and writes of a key go to its slot's master in the same order.
//
// Guarantees: no event is skipped. Transient Redis errors (connection loss,
// timeouts, LOADING, READONLY, OOM, a stalled server) are retried with
// capped exponential backoff, forever, until the context ends; permanent
// errors (NOPERM, WRONGPASS, WRONGTYPE, unknown command) stop the sink with
// an error that says what to fix. Every action is idempotent, so a replay
// after a crash is harmless.
package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/config/defaults"
	"github.com/cdcinvalidate/cdcinvalidate/internal/failpoint"
	"github.com/cdcinvalidate/cdcinvalidate/internal/jsonstr"
	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
	"github.com/cdcinvalidate/cdcinvalidate/internal/retry"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
	"github.com/cdcinvalidate/cdcinvalidate/verifier"
)

// Acker receives the positions whose invalidations Redis acknowledged.
type Acker interface {
	Ack(lsn replication.LSN)
}

// Config configures a Sink.
type Config struct {
	Client redis.UniversalClient
	// MaxBatchKeys bounds the keys of one pipeline (default 10000).
	MaxBatchKeys int
	// MaxBatchBytes bounds the bytes (replication.Event.Size) of the
	// events one pipeline gathers (default defaults.MaxBatchBytes): wide
	// refreshed rows reach it long before MaxBatchKeys.
	MaxBatchBytes int
	// KeysPerCommand is how many keys one UNLINK carries (default 256).
	KeysPerCommand int
	// UseDel deletes with DEL instead of UNLINK.
	UseDel bool
	// ScanCount is the COUNT hint of SCAN for TRUNCATE patterns (default 1000).
	ScanCount int
	// MinBackoff and MaxBackoff bound the wait between retries (100ms, 5s).
	MinBackoff, MaxBackoff time.Duration
	// Companion, when set, names one more key to delete with every
	// invalidated key (the client library's lease key). With Cluster it
	// must name a key of the same hash slot (cacheaside.LeaseKey does).
	Companion func(key string) string
	// CompanionPatterns, when set with Companion, returns the SCAN patterns
	// of the companions of the keys a pattern matches (default: the
	// companion of the pattern itself).
	CompanionPatterns func(pattern string) []string
	// WaitReplicas, when above 0, ends every pipeline with WAIT
	// WaitReplicas WaitTimeout: a batch is acknowledged (to the checkpoint)
	// only when that many replicas have it; else it is sent again. On a
	// cluster every master gets a write and WAIT on one connection after
	// the batch (waitMasters).
	WaitReplicas int
	// MaxInFlight is how many batches of plain deletes may be in flight at
	// once, each on a connection of its own, when their keys differ (see
	// flight.go); 1 sends every batch after the one before was answered.
	// Default 1.
	MaxInFlight int
	WaitTimeout time.Duration
	// Cluster says Client is a Redis Cluster client: every multi-key
	// command and script then carries keys of one hash slot only (the
	// cluster pipeline sends each to its slot's master, masters in
	// parallel), and TRUNCATE patterns and flushes SCAN every master.
	Cluster bool
	// FenceValue and Fence, when Fence > 0, replace deleting the companion
	// with setting it to FenceValue for Fence, in the same script as the
	// key's delete (the client library's lease fence: readers that miss
	// during it load without filling). Every path fences: plain deletes,
	// deletes with the other command, refresh writes (before the SET, in
	// its script) and TRUNCATE patterns (the companions SCAN finds are
	// fenced, not deleted).
	FenceValue string
	Fence      time.Duration
	// PublishChannel, when set, receives one message per applied batch in
	// the same pipeline as the deletes: {"lsn":"0/16B3748","keys":[...]},
	// and one per TRUNCATE after its keys are gone:
	// {"lsn":...,"patterns":["user:*"]}, for in-process caches that must
	// drop the same keys.
	PublishChannel string
	// WatermarkKey, when set, is raised to the end LSN ("X/Y") of the last
	// applied transaction in the same pipeline as its deletes, so an
	// application can wait until its own commit has been invalidated.
	WatermarkKey string
	// FlushPatterns cover every key the rules manage (and their leases);
	// Flush deletes them. They are also used when Redis is seen losing
	// acknowledged writes: the watermark moved back.
	FlushPatterns []string
	// FlushGenerations are the rules' generation keys; Flush increments
	// them after deleting FlushPatterns.
	FlushGenerations []string
	// FlushOnHistoryLost, when Redis lost acknowledged writes, deletes
	// FlushPatterns and goes on (consistency.on_history_lost: flush); false
	// stops with a PermanentError (stop).
	FlushOnHistoryLost bool
	// MaxKeyBytes is the length beyond which a key is reported (default
	// 65536): a template over a huge value, where a digest filter is
	// better. Such a key is counted in Stats.KeysTooLong and still sent
	// (Redis takes keys up to 512 MB), unless StopOnLongKey.
	MaxKeyBytes int
	// StopOnLongKey refuses a key longer than MaxKeyBytes with a
	// PermanentError before its batch is sent (sink.on_long_key: stop).
	StopOnLongKey bool
	Logger        *zap.Logger
	Observer      Observer
	// CatchUpAge: when the last transaction seen committed longer ago than
	// this (the engine is catching up on a backlog), a batch waits up to
	// GatherWait (default 2ms) for more events before it is sent; fresh
	// transactions go at once. 0 turns the wait off. (pgoutput does not
	// tell a consumer how far the WAL goes, so the commit time says it.)
	CatchUpAge time.Duration
	GatherWait time.Duration
	// OrderTTL is how long the order key of a refreshed key (OrderKey)
	// outlives its last change, at least the value's TTL (default
	// DefaultOrderTTL): how long a late write of an older row is refused.
	OrderTTL time.Duration
	// OnSession, when set, runs the start-up consistency checks of a
	// replication session that just acquired the slot (the first of the
	// process, a reconnect, a standby taking over), in the sink's goroutine
	// after everything handed over before it was applied, with the slot's
	// confirmed position at that moment. It may use Flush, FlushSome and
	// SetWatermark. An error stops the sink. After it returned nil the
	// watermark in Redis is taken to be at least start.
	OnSession func(ctx context.Context, start replication.LSN) error
	// EscalateAfter is how long a Redis operation may keep failing before
	// it is reported as an error and to Observer.Stalled (default 1m); the
	// sink goes on retrying.
	EscalateAfter time.Duration
	// Verifier, when set, receives a sample of the invalidations of every
	// batch after Redis acknowledged it (the consistency verifier).
	Verifier Verifier
}

// Verifier checks a sample of what Redis acknowledged; see package
// verifier. Sampled must be cheap (it runs for every key); Sending and
// Offer must not block. Sending is called before a batch with samples is
// sent, Offer with its samples once Redis acknowledged it.
type Verifier interface {
	Sampled(key string) bool
	Sending()
	Offer(samples []verifier.Sample)
}

// Observer receives the sink's measurements; nil means none.
type Observer interface {
	// Batch reports one applied pipeline: keys sent, keys that existed, round trip.
	Batch(keys, deleted int, rtt time.Duration)
	// Truncate reports one applied TRUNCATE pattern.
	Truncate(deleted int, took time.Duration)
	// Applied reports the commit times of the transactions a batch completed.
	Applied(now time.Time, commitTimes []time.Time)
	// RedisError reports a failed attempt; permanent ones stop the sink.
	RedisError(err error, permanent bool)
	// Stalled reports that an operation has been failing for longer than
	// Config.EscalateAfter (reported once per operation; Batch or Truncate
	// report the recovery).
	Stalled(err error)
	// KeyTooLong reports a key longer than MaxKeyBytes.
	KeyTooLong()
	// Actions reports the actions of an applied batch, by kind.
	Actions(kind replication.ActionKind, n int)
	// Fenced reports late writes the watermark kept out: what is
	// "truncate" (a TRUNCATE or explicit pattern) or "action" (version
	// raises, refresh writes, deletes of refreshed keys). Only a leader
	// that lost the slot while it held them (paused or partitioned) sends
	// such writes; a restart's replay of what the watermark had passed
	// when its session began is not reported.
	Fenced(what string, n int)
	// Flight reports what a sink with MaxInFlight ≥ 2 did with a batch
	// of plain deletes (see FlightEvent).
	Flight(ev FlightEvent)
}

// FlightEvent is what Observer.Flight reports: whether sink.max_in_flight
// helps shows in how often batches fly and how often the sink waits.
type FlightEvent uint8

const (
	// FlightSent: a batch went in a pipeline of its own while earlier
	// batches could still be in flight.
	FlightSent FlightEvent = iota
	// FlightSlotWait: every slot was taken, so the sink waited for the
	// oldest answer before gathering (a higher max_in_flight may help).
	FlightSlotWait
	// FlightDrain: the sink waited for every batch in flight: a batch
	// that may not fly (other actions, a key in flight), a TRUNCATE, a
	// new session or the end of the input.
	FlightDrain
)

// String is the event's metric label.
func (e FlightEvent) String() string {
	switch e {
	case FlightSent:
		return "sent"
	case FlightSlotWait:
		return "slots_full"
	case FlightDrain:
		return "drain"
	}
	return "unknown"
}

type nopObserver struct{}

func (nopObserver) Batch(int, int, time.Duration)       {}
func (nopObserver) Truncate(int, time.Duration)         {}
func (nopObserver) Applied(time.Time, []time.Time)      {}
func (nopObserver) RedisError(error, bool)              {}
func (nopObserver) Stalled(error)                       {}
func (nopObserver) KeyTooLong()                         {}
func (nopObserver) Actions(replication.ActionKind, int) {}
func (nopObserver) Fenced(string, int)                  {}
func (nopObserver) Flight(FlightEvent)                  {}

// Stats are running totals, safe to read at any time.
type Stats struct {
	Batches     atomic.Uint64
	Keys        atomic.Uint64 // keys sent for deletion (after deduplication)
	Deleted     atomic.Uint64 // keys that existed
	Globs       atomic.Uint64
	Retries     atomic.Uint64
	LastApplied atomic.Uint64
	// Waiting is true while Redis fails and the sink backs off.
	Waiting atomic.Bool
	// Escalations counts operations that kept failing beyond EscalateAfter.
	Escalations atomic.Uint64
	// Flushes counts flushes of every managed key after Redis lost writes.
	Flushes atomic.Uint64
	// KeysTooLong counts keys longer than MaxKeyBytes (sent unless
	// StopOnLongKey).
	KeysTooLong atomic.Uint64
	// Superseded counts TRUNCATEs skipped because the watermark was past
	// their commit: another instance had applied them (this one was a
	// paused leader that lost the slot).
	Superseded atomic.Uint64
	// Fenced counts version raises, refresh writes and deletes of
	// refreshed keys not made because the watermark was past their
	// commits: applied already, by another instance (this one was a
	// paused leader that lost the slot) or before a restart (a replay).
	Fenced atomic.Uint64
	// Flights counts batches sent while earlier ones could be in flight,
	// SlotWaits the waits for a free slot, and Drains the batches that
	// waited for every batch in flight (sink.max_in_flight ≥ 2).
	Flights, SlotWaits, Drains atomic.Uint64
}

// Sink applies events to Redis.
type Sink struct {
	cfg   Config
	ack   Acker
	log   *zap.Logger
	Stats Stats

	lsnArgOf   replication.LSN // see lsnArg
	lsnArgText any

	seen    map[string]struct{}
	batch   []string
	extra   []string    // with Companion: the batch as lease, key, lease, key, ...
	msg     []byte      // reused publish payload
	commits []time.Time // commit times of the transactions in the batch
	obs     Observer
	// lastMark is the highest watermark this sink set; Redis showing a lower
	// one later means it lost acknowledged writes.
	lastMark replication.LSN
	markCmd  *redis.Cmd
	// On a cluster, one watermark per master (shardMarks), named after a
	// slot the master serves, so a master that fails over to a replica
	// which missed acknowledged writes is caught even when the main
	// watermark lives on another master.
	shardKeys   []string
	shardKeysAt time.Time
	shardMarks  map[string]replication.LSN // the highest this sink set, by key
	shardCmds   []shardMark
	// waitKeys names, by master address, the key a cluster master's WAIT
	// writes before it (waitMasters); listed at most every shardKeysEvery.
	waitKeys   map[string]string
	waitKeysAt time.Time
	// clusterMark is, on a cluster, the watermark read before the batch
	// being sent (readClusterMark; 0: none, or nothing to fence).
	clusterMark replication.LSN
	// replayMark is the watermark in Redis when this session began, until
	// the session's batches passed it (0 then): transactions below it were
	// applied before (a restart replays from the slot's confirmed
	// position, which trails the watermark), so what the watermark fences
	// of them is a replay, not a paused leader's late writes.
	replayMark replication.LSN
	replayed   int // the batch being sent's raises and writes below replayMark
	// The version and refresh scripts of the batch being sent that read
	// the watermark, and on a cluster how many raises and writes the
	// watermark read before it left out (reportFenced).
	fenceCmds     []*redis.Cmd
	clusterFenced int
	mustFlush     string          // why a flush is owed ("" when none)
	held          replication.LSN // applied, not yet watermarked and reported
	markedAt      time.Time

	gatherTimer *time.Timer
	lastCommit  time.Time // commit time of the last transaction added
	// holdTimer, while holding, fires when a held position that came
	// without any work for Redis (a keepalive's) is to be watermarked.
	holdTimer *time.Timer
	holding   bool

	samples []verifier.Sample // the batch's sampled invalidations, for cfg.Verifier

	acts     actionBatch        // the batch's actions besides plain deletes
	accs     map[string]*msgAcc // open transaction messages by channel or stream
	accOrder []string

	flush atomic.Pointer[flushSet] // set by SetFlush; nil: the Config's

	// Batches of plain deletes in flight, oldest first (flight.go), their
	// keys, spare flights for reuse, and the goroutines sending them.
	flights    []*flight
	flightKeys int
	sent       int             // flights sent to Redis (not positions), answered or not
	flightMark replication.LSN // the highest watermark a flight carried
	spare      []*flight
	flying     sync.WaitGroup
}

type flushSet struct{ patterns, generations []string }

// SetFlush replaces Config.FlushPatterns and FlushGenerations (after a
// rules reload); safe to call while Run runs.
func (s *Sink) SetFlush(patterns, generations []string) {
	s.flush.Store(&flushSet{patterns, generations})
}

// Managed returns the patterns and generation keys a flush covers: the
// running rules'.
func (s *Sink) Managed() (patterns, generations []string) {
	return s.flushPatterns(), s.flushGenerations()
}

func (s *Sink) flushPatterns() []string {
	if f := s.flush.Load(); f != nil {
		return f.patterns
	}
	return s.cfg.FlushPatterns
}

func (s *Sink) flushGenerations() []string {
	if f := s.flush.Load(); f != nil {
		return f.generations
	}
	return s.cfg.FlushGenerations
}

// New returns a sink.
func New(cfg Config, ack Acker) *Sink {
	if cfg.MaxBatchKeys <= 0 {
		cfg.MaxBatchKeys = defaults.MaxBatchKeys
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = defaults.MaxBatchBytes
	}
	if cfg.KeysPerCommand <= 0 {
		cfg.KeysPerCommand = defaults.KeysPerCommand
	}
	if cfg.ScanCount <= 0 {
		cfg.ScanCount = defaults.ScanCount
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = defaults.MinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = defaults.SinkBackoff
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.MaxKeyBytes <= 0 {
		cfg.MaxKeyBytes = defaults.MaxKeyBytes
	}
	if cfg.EscalateAfter <= 0 {
		cfg.EscalateAfter = defaults.EscalateAfter
	}
	if cfg.GatherWait <= 0 {
		cfg.GatherWait = defaults.GatherWait
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = defaults.MaxInFlight
	}
	t := time.NewTimer(time.Hour)
	t.Stop()
	h := time.NewTimer(time.Hour)
	h.Stop()
	return &Sink{cfg: cfg, ack: ack, log: cfg.Logger, seen: map[string]struct{}{}, obs: cfg.Observer, accs: map[string]*msgAcc{}, gatherTimer: t, holdTimer: h}
}

// PermanentError is an error that retrying cannot fix (the type shared
// with the replication stream).
type PermanentError = retry.PermanentError

// Run applies events from in until in is closed (it returns nil), ctx ends
// (it returns ctx's error) or a permanent Redis error happens.
func (s *Sink) Run(ctx context.Context, in <-chan replication.Event) error {
	// Batches in flight (flight.go) end with Run: what they did not finish
	// is replayed, since their positions were not reported.
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		s.flying.Wait()
		for _, f := range s.flights {
			s.recycle(f)
		}
		s.flights, s.flightKeys, s.sent = s.flights[:0], 0, 0
	}()
	var pending *replication.Event // a TRUNCATE event that ended the last batch
	for {
		var ev replication.Event
		if pending != nil {
			ev, pending = *pending, nil
		} else {
			var ok bool
			var hold <-chan time.Time
			if s.holding {
				hold = s.holdTimer.C
			}
			select {
			case ev, ok = <-in:
				if !ok {
					if err := s.drain(ctx); err != nil {
						return err
					}
					return s.markHeld(ctx)
				}
			case <-s.landed():
				if err := s.land(ctx); err != nil {
					return err
				}
				continue
			case <-hold:
				s.holding = false
				if len(s.flights) > 0 {
					// No stall behind the batches in flight: the watermark
					// goes in a pipeline of its own, as far as they allow.
					s.launchMark(ctx)
					continue
				}
				if err := s.markHeld(ctx); err != nil {
					return err
				}
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if ev.Restart || len(ev.Globs) > 0 {
			if err := s.drain(ctx); err != nil {
				return err
			}
		}
		if ev.Restart {
			if err := s.endHold(ctx); err != nil {
				return err
			}
			if err := s.restart(ctx, ev); err != nil {
				return err
			}
			continue
		}
		if len(ev.Globs) > 0 {
			// What was applied before the TRUNCATE is watermarked before
			// it deletes anything: a paused leader's version raises and
			// refresh writes of those transactions are then fenced by the
			// watermark (see fencedByMark) from the TRUNCATE's first page.
			if err := s.endHold(ctx); err != nil {
				return err
			}
			if err := s.markHeld(ctx); err != nil {
				return err
			}
			if err := s.applyGlobs(ctx, ev); err != nil {
				return err
			}
			continue
		}
		if err := s.waitSlot(ctx); err != nil {
			return err
		}
		// Gather what is queued behind this event into one batch.
		end := ev.End
		bytes := ev.Size
		s.startBatch()
		if err := s.addEvent(ev); err != nil {
			return err
		}
		closed := false
		// While the engine is far behind the server (catching up), waiting
		// a moment for more events makes far fewer, larger round trips;
		// otherwise the batch goes at once.
		var wait <-chan time.Time
		if s.cfg.CatchUpAge > 0 && !s.lastCommit.IsZero() && time.Since(s.lastCommit) > s.cfg.CatchUpAge {
			s.gatherTimer.Reset(s.cfg.GatherWait)
			wait = s.gatherTimer.C
		}
	gather:
		for len(s.batch)+s.acts.size() < s.cfg.MaxBatchKeys && bytes < s.cfg.MaxBatchBytes {
			var next replication.Event
			var ok bool
			select {
			case next, ok = <-in:
			default:
				if wait == nil {
					break gather
				}
				select {
				case next, ok = <-in:
				case <-wait:
					wait = nil
					break gather
				case <-ctx.Done():
					break gather
				}
			}
			if !ok {
				closed = true
				break gather
			}
			if next.Restart || len(next.Globs) > 0 {
				pending = &next
				break gather
			}
			if err := s.addEvent(next); err != nil {
				return err
			}
			bytes += next.Size
			if next.End > end {
				end = next.End
			}
			if wait != nil && s.fresh(next) {
				// A fresh transaction arrived: the backlog is done, and
				// it must not wait for the gathering window.
				s.gatherTimer.Stop()
				wait = nil
			}
		}
		if wait != nil {
			s.gatherTimer.Stop() // Go 1.23 timers: no stale tick to drain
		}
		// The watermark (an EVAL: a GET and a SET in Redis) goes with a
		// batch when nothing is queued behind it, or every markEvery while
		// catching up. Positions are confirmed only up to the watermark, so
		// it never falls below the slot's confirmed position.
		markNow := s.cfg.WatermarkKey == "" || closed || pending != nil || len(in) == 0 || time.Since(s.markedAt) >= markEvery
		if !closed && pending == nil && len(s.flights) > 0 && len(s.batch) == 0 && s.acts.size() == 0 {
			// Only positions, behind batches in flight: applied when they are.
			s.addPosition(end)
			continue
		}
		fly := false
		if !closed && pending == nil {
			var err error
			if fly, err = s.canFly(ctx); err != nil {
				return err
			}
		}
		if fly {
			// Plain deletes of keys no batch in flight holds: sent now,
			// without waiting for the answers of the batches ahead. The
			// watermark goes only as far as what was answered (flight.go).
			var mark replication.LSN
			if markNow && s.cfg.WatermarkKey != "" {
				if len(s.flights) == 0 {
					mark = max(end, s.held)
				} else if s.held > s.flightMark {
					mark = s.held // another flight may carry it already
				}
			}
			s.launch(ctx, end, mark)
			continue
		}
		if err := s.drain(ctx); err != nil {
			return err
		}
		held := max(end, s.held)
		if markNow && s.cfg.WatermarkKey != "" && !closed && pending == nil && len(s.batch) == 0 && s.acts.size() == 0 {
			// Only positions (keepalives, empty transactions): raising
			// the watermark now would cost a round trip that a fresh
			// commit arriving meanwhile waits behind. The position is
			// held; the next batch carries it, or the hold timer does
			// after holdPosition.
			s.held = held
			if len(s.commits) > 0 {
				s.obs.Applied(time.Now(), s.commits)
			}
			if !s.holding {
				s.holding = true
				s.holdTimer.Reset(holdPosition)
			}
			continue
		}
		var mark replication.LSN
		if markNow {
			mark = held
		}
		if err := s.applyKeys(ctx, s.batch, end, mark); err != nil {
			return err
		}
		if end == 0 {
			failpoint.Hit("sink-mid-txn")
		} else {
			failpoint.Hit("sink-after-ack")
			s.obs.Applied(time.Now(), s.commits)
		}
		s.held = held
		if markNow {
			s.ackHeld()
			if s.holding {
				s.holding = false
				s.holdTimer.Stop()
			}
		}
		if closed {
			return s.markHeld(ctx)
		}
	}
}

// restart begins a new replication session: what earlier sessions handed
// over is applied by now. The session's checks run (Config.OnSession), and
// the highest watermark this sink vouches for becomes at least the slot's
// confirmed position, so that Redis losing writes made by another instance
// before this one took over is seen as well.
func (s *Sink) restart(ctx context.Context, ev replication.Event) error {
	s.restartMessages()
	if s.cfg.OnSession != nil {
		if err := s.cfg.OnSession(ctx, ev.Start); err != nil {
			return err
		}
	}
	if s.cfg.OnSession != nil && s.cfg.WatermarkKey != "" && ev.Start > s.lastMark {
		s.lastMark = ev.Start
	}
	s.replayMark = 0
	if s.cfg.WatermarkKey != "" {
		// Only tells a replay from a paused leader in the log and the
		// metrics: without it every fenced write counts as late.
		if mark, err := s.readMark(ctx); err == nil && mark > ev.Start {
			s.replayMark = mark
		}
	}
	if ev.Ready != nil {
		close(ev.Ready)
	}
	return nil
}

// markEvery is how often the watermark is raised while batches queue up.
const markEvery = 50 * time.Millisecond

// holdPosition is how long a position that came without work for Redis
// (a keepalive's) waits for a batch to carry it: long enough that at 100
// commits/s and more the next commit nearly always does, short enough that
// the confirmation of an idle stream hardly trails.
const holdPosition = 10 * time.Millisecond

// fresh says ev ends a transaction that committed within CatchUpAge: the
// engine is not catching up.
func (s *Sink) fresh(ev replication.Event) bool {
	return !ev.CommitTime.IsZero() && time.Since(ev.CommitTime) <= s.cfg.CatchUpAge
}

// endHold watermarks and reports a held position now (before a new
// session's checks).
func (s *Sink) endHold(ctx context.Context) error {
	if !s.holding {
		return nil
	}
	s.holding = false
	s.holdTimer.Stop()
	return s.markHeld(ctx)
}

// ackHeld reports the applied position held back for the watermark.
func (s *Sink) ackHeld() {
	s.acknowledge(s.held)
	s.held = 0
}

// acknowledge is the one place through which the sink reports a position
// to the checkpoint (Acker): lsn is the end of a transaction (or a
// keepalive position) below which Redis acknowledged every effect, with
// the watermark raised to it in the same or an earlier pipeline when one
// is kept. Nothing else calls Acker.Ack.
func (s *Sink) acknowledge(lsn replication.LSN) {
	if lsn == 0 {
		return
	}
	s.ack.Ack(lsn)
	s.Stats.LastApplied.Store(uint64(lsn))
	s.markedAt = time.Now()
}

// markHeld raises the watermark to a held position and reports it (at the
// end of the input).
func (s *Sink) markHeld(ctx context.Context) error {
	if s.held == 0 {
		return nil
	}
	if err := s.applyKeys(ctx, nil, 0, s.held); err != nil {
		return err
	}
	s.ackHeld()
	return nil
}

func (s *Sink) startBatch() {
	clear(s.seen)
	s.batch = s.batch[:0]
	s.extra = s.extra[:0]
	s.commits = s.commits[:0]
	s.samples = s.samples[:0]
	s.acts.reset()
}

func (s *Sink) addEvent(ev replication.Event) error {
	if err := s.addKeys(ev.Keys, ev.LSN); err != nil {
		return err
	}
	if len(ev.Actions) > 0 {
		if err := s.addActions(ev.Actions, ev.LSN); err != nil {
			return err
		}
	}
	if s.cfg.Verifier != nil && ev.LSN != 0 {
		s.sample(ev)
	}
	if ev.End != 0 && ev.LSN != 0 && len(s.accs) > 0 {
		s.endTxn(ev.LSN)
	}
	if ev.End != 0 && !ev.CommitTime.IsZero() {
		s.commits = append(s.commits, ev.CommitTime)
		s.lastCommit = ev.CommitTime
	}
	return nil
}

// sample records the event's sampled invalidations in commit order. Floor
// is the watermark this sink had set before the batch: a value stamped
// below it was loaded before these invalidations were applied. Keys are
// copied: the mapper carves them from shared blocks that a retained key
// would keep alive.
func (s *Sink) sample(ev replication.Event) {
	v := s.cfg.Verifier
	// Every delete path fences (or deletes) the key's lease with Companion.
	leases := s.cfg.Companion != nil
	for _, k := range ev.Keys {
		if v.Sampled(k) {
			s.samples = append(s.samples, verifier.Sample{Key: strings.Clone(k), LSN: ev.LSN, Floor: s.lastMark, Kind: verifier.KindDelete, Leases: leases})
		}
	}
	for i := range ev.Actions {
		a := &ev.Actions[i]
		var kind verifier.Kind
		switch a.Kind {
		case replication.ActUnlink, replication.ActDel, replication.ActDelete:
			kind = verifier.KindDelete
		case replication.ActVersion:
			kind = verifier.KindVersion
		case replication.ActSet:
			kind = verifier.KindRefresh
		default:
			continue
		}
		if v.Sampled(a.Key) {
			smp := verifier.Sample{Key: strings.Clone(a.Key), LSN: ev.LSN, Floor: s.lastMark, Kind: kind, Value: strings.Clone(a.Value), Leases: leases && kind == verifier.KindDelete}
			if kind == verifier.KindRefresh {
				smp.OrderKey = OrderKey(a.Key)
			}
			s.samples = append(s.samples, smp)
		}
	}
}

// addKeys adds plain deletes of a transaction that committed at lsn.
func (s *Sink) addKeys(keys []string, lsn replication.LSN) error {
	for _, k := range keys {
		if err := s.checkLongKey(k); err != nil {
			return err
		}
		if j, ok := s.acts.setIdx[k]; ok {
			s.acts.drop(j, lsn) // deleted later in commit order
		}
		if _, dup := s.seen[k]; dup {
			continue
		}
		s.seen[k] = struct{}{}
		s.batch = append(s.batch, k)
		if s.cfg.Companion != nil {
			// The lease goes in the same UNLINK as its key, before it: a
			// fill that checks the lease can never land between the two.
			s.extra = append(s.extra, s.cfg.Companion(k), k)
		}
	}
	return nil
}

// checkLongKey applies longKey to a key longer than MaxKeyBytes.
func (s *Sink) checkLongKey(k string) error {
	if len(k) > s.cfg.MaxKeyBytes {
		return s.longKey(k)
	}
	return nil
}

// longKey counts a key longer than MaxKeyBytes and, with StopOnLongKey,
// refuses it. It is never dropped: a skipped invalidation leaves a stale
// value until its TTL, or forever.
func (s *Sink) longKey(k string) error {
	s.obs.KeyTooLong()
	n := s.Stats.KeysTooLong.Add(1)
	prefix := k[:min(len(k), 64)]
	if s.cfg.StopOnLongKey {
		return &PermanentError{Err: fmt.Errorf("a key of %d bytes (starting %q) is longer than sink.max_key_bytes %d, "+
			"and sink.on_long_key is stop: a template renders a huge value; use a digest filter such as "+
			"{col|sha1}, raise sink.max_key_bytes, or set sink.on_long_key: send "+
			"(Redis accepts keys up to 512 MB)",
			len(k), prefix, s.cfg.MaxKeyBytes)}
	}
	if n%1000 == 1 {
		s.log.Warn("key longer than sink.max_key_bytes; invalidated anyway, but a template renders a huge value: use a digest filter such as {col|sha1}",
			zap.Int("bytes", len(k)), zap.String("prefix", prefix), zap.Uint64("total", n))
	}
	return nil
}

// del queues the deletes of keys, KeysPerCommand (rounded to even, so a
// lease and its key stay in one command) keys per command, and returns how
// many commands it queued.
func (s *Sink) del(ctx context.Context, p redis.Pipeliner, keys []string) int {
	if failpoint.Unsafe("skip-deletes") {
		return 0 // a deliberately broken engine, for negative controls
	}
	return s.delWith(ctx, p, keys, s.cfg.UseDel)
}

// delWith is del with DEL (useDel) or UNLINK: the rules' own
// delete_command goes through it too, leases fenced the same way.
func (s *Sink) delWith(ctx context.Context, p redis.Pipeliner, keys []string, useDel bool) int {
	per := s.cfg.KeysPerCommand
	if s.cfg.Companion != nil {
		per = max(2, per&^1)
	}
	n := 0
	step := 1
	if s.cfg.Companion != nil {
		step = 2 // a lease and its key, of one slot, stay in one command
	}
	s.chunks(keys, step, per, func(chunk []string) {
		if s.cfg.Companion != nil && s.cfg.Fence > 0 {
			fenceScript.Eval(ctx, p, chunk, s.cfg.FenceValue, s.cfg.Fence.Milliseconds(), boolArg(useDel))
		} else if useDel {
			p.Del(ctx, chunk...)
		} else {
			p.Unlink(ctx, chunk...)
		}
		n++
	})
	return n
}

// chunks calls f with the keys in chunks of at most per keys, cut only
// between units of step keys (the last key of a unit names its slot). In
// cluster mode a chunk holds the keys of one hash slot: the keys are
// grouped by slot first (the order within a slot kept).
func (s *Sink) chunks(keys []string, step, per int, f func(chunk []string)) {
	if !s.cfg.Cluster {
		for i := 0; i < len(keys); i += per {
			f(keys[i:min(i+per, len(keys))])
		}
		return
	}
	for _, g := range keyslot.GroupBySlot(len(keys)/step, func(i int) string { return keys[i*step+step-1] }) {
		run := make([]string, 0, len(g)*step)
		for _, u := range g {
			run = append(run, keys[u*step:u*step+step]...)
		}
		for i := 0; i < len(run); i += per {
			f(run[i:min(i+per, len(run))])
		}
	}
}

// applyKeys deletes keys in one pipeline; end is the last transaction end
// the batch completes (0 inside a transaction), markAt the position to
// raise the watermark to in the same pipeline (0: not this time).
func (s *Sink) applyKeys(ctx context.Context, keys []string, end, markAt replication.LSN) error {
	mark := s.cfg.WatermarkKey != "" && markAt != 0
	if len(keys) == 0 && !mark && s.acts.size() == 0 {
		return nil
	}
	if s.cfg.PublishChannel != "" && len(keys) > 0 {
		s.msg = appendMessage(s.msg[:0], end, "keys", keys)
	}
	dels := keys
	if s.cfg.Companion != nil {
		dels = s.extra
	}
	if len(s.acts.sets) > 0 {
		failpoint.Hit("sink-before-refresh")
	}
	if len(s.samples) > 0 {
		// A reading of a sampled key from now on may hold this batch's
		// writes before its samples are offered.
		s.cfg.Verifier.Sending()
	}
	err := s.retry(ctx, "delete keys", func() error {
		if mark {
			s.refreshShardKeys(ctx)
		}
		if err := s.readClusterMark(ctx); err != nil {
			return err
		}
		start := time.Now()
		var nver, ndel int
		var wait *redis.Cmd
		versions := func(p redis.Pipeliner) { s.queueVersions(ctx, p) }
		deletes := func(p redis.Pipeliner) {
			ndel = s.del(ctx, p, dels)
			s.queueAfterDeletes(ctx, p)
		}
		announce := func(p redis.Pipeliner) {
			s.queueMessages(ctx, p)
			if s.cfg.PublishChannel != "" && len(keys) > 0 {
				p.Publish(ctx, s.cfg.PublishChannel, s.msg)
			}
			if mark {
				s.watermark(ctx, p, markAt)
			}
			wait = s.queueWait(ctx, p)
		}
		var cmds []redis.Cmder
		var err error
		if s.cfg.Cluster {
			// Masters apply their parts in parallel, so the order that one
			// server's pipeline gives is kept with round trips: versions
			// are raised everywhere before any key goes, and messages and
			// the watermark (which readers take as "invalidated") go out
			// only after every master deleted its keys.
			if cmds, err = s.stage(ctx, cmds, versions); err != nil {
				return err
			}
			nver = len(cmds)
			if cmds, err = s.stage(ctx, cmds, deletes); err != nil {
				return err
			}
			if cmds, err = s.stage(ctx, cmds, announce); err != nil {
				return err
			}
			if err := s.waitMasters(ctx); err != nil {
				return err
			}
		} else {
			cmds, err = s.stage(ctx, nil, func(p redis.Pipeliner) {
				versions(p)
				nver = p.Len()
				deletes(p)
				announce(p)
			})
			if err != nil {
				return err
			}
		}
		// WAIT first: a batch the replicas lack is sent again before this
		// sink counts its watermark as set (else a failover to such a
		// replica would look like lost history, and flush for nothing).
		if err := s.checkWait(wait); err != nil {
			return err
		}
		if mark {
			if err := s.checkMark(ctx, markAt); err != nil {
				return err
			}
		}
		n := deleted(cmds[nver : nver+ndel])
		s.Stats.Deleted.Add(n)
		s.obs.Batch(len(keys), int(n), time.Since(start))
		return nil
	})
	if err != nil {
		return err
	}
	s.reportFenced()
	if end >= s.replayMark {
		s.replayMark = 0
	}
	s.Stats.Batches.Add(1)
	s.Stats.Keys.Add(uint64(len(keys)))
	for kind, n := range s.acts.counts {
		if n > 0 {
			s.obs.Actions(replication.ActionKind(kind), n)
		}
	}
	s.acts.reset() // sent: a watermark-only pipeline after this must not repeat them
	if len(s.samples) > 0 {
		s.cfg.Verifier.Offer(s.samples)
		s.samples = s.samples[:0]
	}
	return nil
}

// stage sends what queue queues in one pipeline and appends its commands
// to cmds.
func (s *Sink) stage(ctx context.Context, cmds []redis.Cmder, queue func(redis.Pipeliner)) ([]redis.Cmder, error) {
	out, err := s.cfg.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
		queue(p)
		return nil
	})
	if err := pipelineErr(err, out); err != nil {
		return cmds, err
	}
	return append(cmds, out...), nil
}

// pipelineErr returns the error of a pipeline that Pipelined returned as
// err, or nil when every command succeeded. The watermark script answers
// nil when there was no watermark (for checkMark to judge, not an error);
// a stream entry refused as already there was written before a crash.
// An error that no command carries (a hook that failed the pipeline, a
// connection lost in a way the client did not stamp on each command) is
// an error too: the batch was not (known to be) applied.
func pipelineErr(err error, cmds []redis.Cmder) error {
	if err == nil {
		return nil
	}
	excused := false
	for _, c := range cmds {
		e := c.Err()
		if e == nil {
			continue
		}
		if !errors.Is(e, redis.Nil) && !replayedEntry(c) && !droppedRedirect(e) {
			return e
		}
		if errors.Is(err, e) {
			excused = true // the error Pipelined returned is this command's
		}
	}
	if excused {
		return nil
	}
	return fmt.Errorf("redis pipeline of %d commands failed: %w", len(cmds), err)
}

func (s *Sink) applyGlobs(ctx context.Context, ev replication.Event) error {
	err := s.applyGlobsGuarded(ctx, ev)
	var sup *supersededError
	if !errors.As(err, &sup) {
		return err
	}
	s.Stats.Superseded.Add(1)
	if ev.LSN < s.replayMark {
		s.log.Info("skipping a TRUNCATE (or explicit pattern) of a transaction applied before this session began: "+
			"a replay from the slot's position, which trails the watermark",
			zap.Stringer("commit_lsn", ev.LSN), zap.String("watermark", sup.mark), zap.Strings("patterns", ev.Globs))
		return nil
	}
	// Another instance applied this TRUNCATE, and what followed it, while
	// this one was frozen with it in hand: deleting now would delete newer
	// values and version keys (which this instance's queued raises would
	// then set to older LSNs). Its effects are in Redis already.
	s.log.Warn("skipping a TRUNCATE (or explicit pattern) that another instance already applied: the watermark "+
		"in Redis is past its commit, so this instance lost the slot while it held the TRUNCATE (a paused or "+
		"partitioned leader); it steps back when its session ends",
		zap.Stringer("commit_lsn", ev.LSN), zap.String("watermark", sup.mark), zap.Strings("patterns", ev.Globs))
	s.obs.Fenced("truncate", 1)
	return nil
}

// supersededError says that the watermark passed a TRUNCATE's commit.
type supersededError struct{ mark string }

func (e *supersededError) Error() string {
	return "the watermark " + e.mark + " is past the TRUNCATE's commit"
}

// guard returns what fences the patterns of ev: its commit LSN when the
// watermark can tell whether another instance applied it.
func (s *Sink) guard(ev replication.Event) replication.LSN {
	if s.cfg.WatermarkKey == "" || failpoint.Unsafe("unfenced-truncate") {
		return 0
	}
	return ev.LSN
}

// checkGuard returns a supersededError when the watermark is past lsn
// (another instance applied everything up to it, this TRUNCATE included).
func (s *Sink) checkGuard(ctx context.Context, lsn replication.LSN) error {
	if lsn == 0 {
		return nil
	}
	mark, err := s.readMark(ctx)
	if err != nil {
		return err
	}
	if mark > lsn {
		return &supersededError{mark: mark.String()}
	}
	return nil
}

// readMark reads the watermark in Redis: 0 when there is none (or it is
// not an LSN).
func (s *Sink) readMark(ctx context.Context) (replication.LSN, error) {
	v, err := s.cfg.Client.Get(ctx, s.cfg.WatermarkKey).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	mark, _ := pglogrepl.ParseLSN(v)
	return mark, nil
}

func (s *Sink) applyGlobsGuarded(ctx context.Context, ev replication.Event) error {
	if ev.LSN != 0 {
		failpoint.Hit("sink-before-truncate")
	}
	guard := s.guard(ev)
	if guard != 0 {
		var sup *supersededError
		if err := s.retry(ctx, "read the watermark before a TRUNCATE", func() error {
			err := s.checkGuard(ctx, guard)
			if errors.As(err, &sup) {
				return nil // not an error to retry; applyGlobs skips
			}
			return err
		}); err != nil {
			return err
		}
		if sup != nil {
			return sup
		}
	}
	globs := ev.Globs
	if s.cfg.Companion != nil {
		// LeaseKey wraps the key without glob characters of its own, so the
		// lease keys of a pattern's keys match the wrapped pattern.
		// Leases first: a fill that still finds its lease writes before the
		// key pattern is scanned, and that scan deletes it.
		// With a lease fence the leases found are fenced, not deleted (as
		// with a key's delete): a fill under one is refused, and no reader
		// takes it again for a moment.
		var leases []string
		for _, g := range ev.Globs {
			if s.cfg.CompanionPatterns != nil {
				leases = append(leases, s.cfg.CompanionPatterns(g)...)
			} else {
				leases = append(leases, s.cfg.Companion(g))
			}
		}
		if s.cfg.Fence > 0 {
			for _, g := range leases {
				if err := s.retry(ctx, "fence leases matching "+g, func() error {
					_, err := s.scanAll(ctx, g, scanOp{fence: true})
					return err
				}); err != nil {
					return err
				}
			}
			leases = nil
		}
		globs = append(leases, ev.Globs...)
	}
	for _, g := range globs {
		start := time.Now()
		deleted, err := s.deleteMatchingOp(ctx, g, scanOp{guard: guard})
		if err != nil {
			return err
		}
		s.obs.Truncate(deleted, time.Since(start))
		s.Stats.Globs.Add(1)
	}
	if s.cfg.PublishChannel != "" {
		s.msg = appendMessage(s.msg[:0], ev.End, "patterns", ev.Globs)
		err := s.retry(ctx, "publish TRUNCATE patterns", func() error {
			return s.cfg.Client.Publish(ctx, s.cfg.PublishChannel, s.msg).Err()
		})
		if err != nil {
			return err
		}
	}
	if ev.End != 0 {
		if s.cfg.WatermarkKey != "" {
			err := s.retry(ctx, "set watermark", func() error {
				s.refreshShardKeys(ctx)
				var wait *redis.Cmd
				cmds, err := s.cfg.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
					s.watermark(ctx, p, ev.End)
					wait = s.queueWait(ctx, p)
					return nil
				})
				if err := pipelineErr(err, cmds); err != nil {
					return err
				}
				if err := s.checkWait(wait); err != nil {
					return err
				}
				return s.checkMark(ctx, ev.End)
			})
			if err != nil {
				return err
			}
		}
		s.acknowledge(ev.End)
	}
	return nil
}

// scanDelete deletes the keys matching pattern (SCAN + UNLINK, never
// KEYS) and returns how many existed. On a cluster every master is
// scanned, in parallel; when the masters or the slots they serve changed
// during the scan (a failover, a master added, a slot migrated), keys may
// have moved to a master already scanned, so the scan is repeated.
func (s *Sink) scanDelete(ctx context.Context, pattern string) (int, error) {
	return s.scanAll(ctx, pattern, scanOp{})
}

// scanOp says what scanAll does with the keys it finds.
type scanOp struct {
	// fence sets them (leases) to the lease fence for Config.Fence
	// instead of deleting them.
	fence bool
	// guard, when set, is a TRUNCATE's commit LSN: each page is deleted
	// only while the watermark is not past it (atomically, in one script
	// with the watermark, on a single server; checked before each page on
	// a cluster), else scanAll returns a supersededError.
	guard replication.LSN
}

// scanAll is scanDelete with op.
func (s *Sink) scanAll(ctx context.Context, pattern string, op scanOp) (int, error) {
	cc, ok := s.cfg.Client.(*redis.ClusterClient)
	if !s.cfg.Cluster || !ok {
		return s.scanNode(ctx, s.cfg.Client, pattern, op)
	}
	total := 0
	for {
		before, err := clusterShape(ctx, cc)
		if err != nil {
			return total, err
		}
		var deleted atomic.Int64
		err = cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			n, err := s.scanNode(ctx, m, pattern, op)
			deleted.Add(int64(n))
			return err
		})
		total += int(deleted.Load())
		if err != nil {
			return total, err
		}
		after, err := clusterShape(ctx, cc)
		if err != nil {
			return total, err
		}
		if after == before {
			return total, nil
		}
		s.log.Info("the cluster changed during a SCAN of every master; scanning again", zap.String("pattern", pattern))
		cc.ReloadState(ctx)
	}
}

// scanNode SCANs one server for pattern and deletes what it finds through
// the sink's client (on a cluster: one command per hash slot, each sent to
// the slot's master).
func (s *Sink) scanNode(ctx context.Context, node redis.Cmdable, pattern string, op scanOp) (int, error) {
	deleted := 0
	var cursor uint64
	for {
		keys, next, err := node.Scan(ctx, cursor, pattern, int64(s.cfg.ScanCount)).Result()
		if err != nil {
			return deleted, err
		}
		if len(keys) > 0 && op.guard != 0 && !s.cfg.Cluster {
			n, err := guardedDeleteScript.Eval(ctx, s.cfg.Client, append([]string{s.cfg.WatermarkKey}, keys...),
				op.guard.String(), boolArg(s.cfg.UseDel)).Int()
			if err != nil {
				return deleted, err
			}
			if n < 0 {
				return deleted, &supersededError{mark: s.cfg.Client.Get(ctx, s.cfg.WatermarkKey).Val()}
			}
			s.Stats.Deleted.Add(uint64(n))
			deleted += n
		} else if len(keys) > 0 && op.guard != 0 {
			if err := s.checkGuard(ctx, op.guard); err != nil {
				return deleted, err
			}
		}
		if len(keys) > 0 && op.fence {
			cmds, err := s.cfg.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range keys {
					p.Set(ctx, k, s.cfg.FenceValue, s.cfg.Fence)
				}
				return nil
			})
			if err := pipelineErr(err, cmds); err != nil {
				return deleted, err
			}
		} else if len(keys) > 0 && (op.guard == 0 || s.cfg.Cluster) {
			var cmds []*redis.IntCmd
			_, err := s.cfg.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
				s.chunks(keys, 1, len(keys), func(chunk []string) {
					if s.cfg.UseDel {
						cmds = append(cmds, p.Del(ctx, chunk...))
					} else {
						cmds = append(cmds, p.Unlink(ctx, chunk...))
					}
				})
				return nil
			})
			if err != nil {
				return deleted, err
			}
			for _, c := range cmds {
				n := int(c.Val())
				s.Stats.Deleted.Add(uint64(n))
				deleted += n
			}
		}
		if next == 0 {
			return deleted, nil
		}
		cursor = next
	}
}

// clusterShape describes which master serves which slots, to notice a
// change during a scan.
func clusterShape(ctx context.Context, cc *redis.ClusterClient) (string, error) {
	slots, err := cc.ClusterSlots(ctx).Result()
	if err != nil {
		return "", err
	}
	parts := make([]string, 0, len(slots))
	for _, sl := range slots {
		master := ""
		if len(sl.Nodes) > 0 {
			master = sl.Nodes[0].ID + "@" + sl.Nodes[0].Addr
		}
		parts = append(parts, fmt.Sprintf("%d-%d:%s", sl.Start, sl.End, master))
	}
	slices.Sort(parts)
	return strings.Join(parts, ","), nil
}

// queueWait ends a pipeline with WAIT when WaitReplicas is set: on the
// connection that sent the batch's writes, so it waits for them (and for
// everything the master had before them).
func (s *Sink) queueWait(ctx context.Context, p redis.Pipeliner) *redis.Cmd {
	if s.cfg.WaitReplicas <= 0 || s.cfg.Cluster {
		return nil // a cluster waits master by master: waitMasters
	}
	return p.Do(ctx, "wait", s.cfg.WaitReplicas, max(s.cfg.WaitTimeout, time.Millisecond).Milliseconds())
}

// waitMasters, on a cluster with WaitReplicas, sends every master a write
// and WAIT WaitReplicas on one connection, in parallel, and fails unless
// each answers that many replicas. A WAIT counts what the master had when
// the connection's last write was applied, so the write makes it cover
// everything the batch sent that master on any connection. Every master,
// not only those the batch's keys hash to: each holds a watermark of this
// sink, raised with every transaction.
func (s *Sink) waitMasters(ctx context.Context) error {
	if s.cfg.WaitReplicas <= 0 {
		return nil
	}
	cc, ok := s.cfg.Client.(*redis.ClusterClient)
	if !ok {
		return &PermanentError{Err: errors.New("redis.wait_replicas on a cluster needs the cluster client (redis.cluster: true with redis.addrs)")}
	}
	if s.waitKeys == nil || time.Since(s.waitKeysAt) >= shardKeysEvery {
		keys, err := waitKeys(ctx, cc, s.cfg.WatermarkKey)
		if err != nil {
			return fmt.Errorf("list the cluster's masters for WAIT: %w", err)
		}
		s.waitKeys, s.waitKeysAt = keys, time.Now()
	}
	keys := s.waitKeys
	timeout := max(s.cfg.WaitTimeout, time.Millisecond)
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		addr := c.Options().Addr
		key, ok := keys[addr]
		if !ok {
			return nil // serves no slot: holds nothing of this sink
		}
		var set *redis.StatusCmd
		var wait *redis.Cmd
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			set = p.Set(ctx, key, "1", 0)
			wait = p.Do(ctx, "wait", s.cfg.WaitReplicas, timeout.Milliseconds())
			return nil
		})
		if err := set.Err(); err != nil {
			return fmt.Errorf("master %s: %w", addr, err) // MOVED: the slot map changed, listed again
		}
		if err != nil {
			return fmt.Errorf("master %s: %w", addr, err)
		}
		if err := s.checkWait(wait); err != nil {
			return fmt.Errorf("master %s: %w", addr, err)
		}
		return nil
	})
	if err != nil {
		s.waitKeys = nil
	}
	return err
}

// waitKeys names, for every master of the cluster that serves a slot, a
// key in the lowest slot it serves, next to the watermark keys.
func waitKeys(ctx context.Context, cc *redis.ClusterClient, main string) (map[string]string, error) {
	slots, err := cc.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, err
	}
	if main == "" {
		main = "cdcinvalidate"
	}
	lowest := lowestSlotByMaster(slots)
	keys := make(map[string]string, len(lowest))
	for m, slot := range lowest {
		keys[m] = main + ":wait:" + strconv.Itoa(slot) + ":{" + keyslot.SlotTag(slot) + "}"
	}
	return keys, nil
}

// ErrReplicasBehind is wrapped when fewer replicas than WaitReplicas
// acknowledged a batch in time; the batch is sent again.
var ErrReplicasBehind = errors.New("too few redis replicas acknowledged the batch")

func (s *Sink) checkWait(wait *redis.Cmd) error {
	if wait == nil {
		return nil
	}
	n, err := wait.Int64()
	if err != nil {
		return err
	}
	if n < int64(s.cfg.WaitReplicas) {
		return fmt.Errorf("%w: WAIT %d answered %d within %s (redis.wait_replicas); the position waits until they catch up", ErrReplicasBehind, s.cfg.WaitReplicas, n, s.cfg.WaitTimeout)
	}
	return nil
}

// deleteMatching deletes the keys matching the SCAN pattern g (on every
// master of a cluster), retrying transient errors, and returns how many
// existed.
func (s *Sink) deleteMatching(ctx context.Context, g string) (int, error) {
	return s.deleteMatchingOp(ctx, g, scanOp{})
}

// deleteMatchingOp is deleteMatching with op; a supersededError is
// returned at once, not retried.
func (s *Sink) deleteMatchingOp(ctx context.Context, g string, op scanOp) (int, error) {
	deleted := 0
	var sup *supersededError
	err := s.retry(ctx, "delete keys matching "+g, func() error {
		n, err := s.scanAll(ctx, g, op)
		deleted += n
		if errors.As(err, &sup) {
			return nil // not an error to retry; the caller skips
		}
		return err
	})
	if sup != nil {
		return deleted, sup
	}
	return deleted, err
}

// guardedDeleteScript deletes KEYS[2..] (UNLINK, or DEL when ARGV[2] is
// "1") unless the watermark KEYS[1] is past ARGV[1], a TRUNCATE's commit
// LSN: then another instance applied the TRUNCATE and what followed it,
// and the script returns -1. Else it returns how many keys existed.
var guardedDeleteScript = redis.NewScript(lsnLua + `
if num(redis.call('GET', KEYS[1])) > num(ARGV[1]) then
  return -1
end
local del = 'UNLINK'
if ARGV[2] == '1' then del = 'DEL' end
local n = 0
for i = 2, #KEYS do
  n = n + redis.call(del, KEYS[i])
end
return n`)

// fenceScript sets each lease KEYS[2i-1] to the fence ARGV[1] for ARGV[2]
// milliseconds and deletes its key KEYS[2i] (UNLINK, or DEL when ARGV[3] is
// "1"), lease first, atomically; it returns how many keys existed.
var fenceScript = redis.NewScript(`
local n = 0
local del = 'UNLINK'
if ARGV[3] == '1' then del = 'DEL' end
for i = 1, #KEYS, 2 do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
  n = n + redis.call(del, KEYS[i+1])
end
return n`)

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// lsnLua defines num(s) in a Lua script: an LSN "X/Y" as a number (exact
// below 2^53 bytes of WAL), -1 for nil or anything else. It keeps the two
// texts it parsed last (Lua strings are interned: a comparison is one
// pointer): the items of a script mostly carry the same commit LSN, in
// turn with what a key held, and the pattern match cost Redis more CPU
// than a GET (issue 15).
const lsnLua = `
local numA, valA, numB, valB
local function num(s)
  if not s then return -1 end
  if s == numA then return valA end
  if s == numB then
    numA, valA, numB, valB = numB, valB, numA, valA
    return valA
  end
  local hi, lo = string.match(s, '^(%x+)/(%x+)$')
  local v = -1
  if hi then v = tonumber(hi, 16) * 4294967296 + tonumber(lo, 16) end
  numA, valA, numB, valB = s, v, numA, valA
  return v
end
`

// watermarkScript raises the watermark key to ARGV[1] ("X/Y") and never
// lowers it, so a replay after a restart does not move it back. It returns
// the value it found. When that value is below ARGV[2], the highest this
// engine set before (Redis lost acknowledged writes), it leaves the key
// alone: the watermark must not claim a position before the flush that the
// loss calls for is done.
var watermarkScript = redis.NewScript(lsnLua + `
local cur = redis.call('GET', KEYS[1])
local have = num(cur)
local mine = num(ARGV[2])
if mine > 0 and have < mine then
  return cur
end
if have < num(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return cur`)

func (s *Sink) watermark(ctx context.Context, p redis.Pipeliner, end replication.LSN) {
	s.markCmd = queueMark(ctx, p, s.cfg.WatermarkKey, end, s.lastMark)
	s.shardCmds = s.shardCmds[:0]
	for _, k := range s.shardKeys {
		mine := s.shardMarks[k]
		s.shardCmds = append(s.shardCmds, shardMark{key: k, mine: mine, cmd: queueMark(ctx, p, k, end, mine)})
	}
}

// queueMark queues the raise of the watermark key to end, mine being the
// highest this sink had set there (see watermarkScript).
func queueMark(ctx context.Context, p redis.Pipeliner, key string, end, mine replication.LSN) *redis.Cmd {
	// EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT, and a
	// Redis restarted empty has no scripts.
	return watermarkScript.Eval(ctx, p, []string{key}, end.String(), mine.String())
}

// deleted sums what the delete commands cmds (UNLINK, DEL or the lease
// fence script) answered: how many keys existed.
func deleted(cmds []redis.Cmder) uint64 {
	var n uint64
	for _, c := range cmds {
		switch c := c.(type) {
		case *redis.IntCmd:
			n += uint64(c.Val())
		case *redis.Cmd:
			v, _ := c.Int64()
			n += uint64(v)
		}
	}
	return n
}

// shardMark is one master's watermark raise in a pipeline.
type shardMark struct {
	key  string
	mine replication.LSN // the highest this sink had set; 0: none yet
	cmd  *redis.Cmd
}

// shardKeysEvery is how often the masters of a cluster are listed again
// for their watermarks.
const shardKeysEvery = time.Second

// ShardWatermarkKey names the watermark of the master that serves slot:
// the main watermark key, ":", the slot and a hash tag of that slot.
func ShardWatermarkKey(main string, slot int) string {
	return main + ":" + strconv.Itoa(slot) + ":{" + keyslot.SlotTag(slot) + "}"
}

// ShardWatermarkKeys lists the per-master watermark keys of a cluster: one
// per master, in the lowest slot it serves.
func ShardWatermarkKeys(ctx context.Context, c redis.UniversalClient, main string) ([]string, error) {
	slots, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, err
	}
	lowest := lowestSlotByMaster(slots)
	keys := make([]string, 0, len(lowest))
	for _, slot := range lowest {
		keys = append(keys, ShardWatermarkKey(main, slot))
	}
	slices.Sort(keys)
	return keys, nil
}

// refreshShardKeys lists, on a cluster, one watermark key per master (in
// the lowest slot it serves), at most every shardKeysEvery. A slot that
// moves to another master takes its key along (MIGRATE), so it still
// holds what this sink set; a master's new lowest slot starts a new key.
func (s *Sink) refreshShardKeys(ctx context.Context) {
	if !s.cfg.Cluster || s.cfg.WatermarkKey == "" || time.Since(s.shardKeysAt) < shardKeysEvery {
		return
	}
	keys, err := ShardWatermarkKeys(ctx, s.cfg.Client, s.cfg.WatermarkKey)
	if err != nil {
		return // the pipeline that follows reports what is wrong
	}
	s.shardKeys = keys
	if s.shardMarks == nil {
		s.shardMarks = map[string]replication.LSN{}
	}
	s.shardKeysAt = time.Now()
}

// ErrHistoryLost is wrapped when Redis lost writes it had acknowledged.
var ErrHistoryLost = errors.New("redis lost acknowledged invalidations")

// markFound reads the answer of the watermark script: the value it found
// ("" and 0 when there was none).
func markFound(c *redis.Cmd) (string, replication.LSN, error) {
	prev, err := c.Text()
	switch {
	case errors.Is(err, redis.Nil):
		return "", 0, nil
	case err != nil:
		return "", 0, err
	}
	had, _ := pglogrepl.ParseLSN(prev)
	return prev, had, nil
}

// checkMark compares the watermark Redis had before this batch with the
// highest one this sink set. Lower (or gone) means Redis went back in time
// (a restart without persistence, a failover to a lagging replica, a
// restore): keys this engine deleted may be back with old values.
func (s *Sink) checkMark(ctx context.Context, end replication.LSN) error {
	return s.checkMarkFrom(ctx, end, s.lastMark)
}

// checkMarkFrom is checkMark for a watermark script sent when the highest
// watermark this sink had set was mine: a batch in flight (flight.go) may
// run in Redis before one sent ahead of it, and then finds the watermark
// below what that one raised it to, which is no loss.
func (s *Sink) checkMarkFrom(ctx context.Context, end, mine replication.LSN) error {
	prev, had, err := markFound(s.markCmd)
	if err != nil {
		return err
	}
	if mine != 0 && had < mine && s.mustFlush == "" {
		// The script left the watermark where it was; remembered until the
		// flush succeeded, then the watermark is raised explicitly.
		s.mustFlush = fmt.Sprintf("the watermark %s in Redis was %s, below %s which this engine had set: Redis lost "+
			"writes it had acknowledged (restart without persistence, failover to a lagging replica, restore "+
			"from a backup, FLUSHALL), so deleted keys may be back with old values",
			s.cfg.WatermarkKey, orMissing(prev), mine)
	}
	if end > s.lastMark {
		s.lastMark = end
	}
	for _, sm := range s.shardCmds {
		prev, had, err := markFound(sm.cmd)
		if err != nil {
			return err
		}
		if sm.mine != 0 && had < sm.mine && s.mustFlush == "" {
			s.mustFlush = fmt.Sprintf("the watermark %s of a cluster master was %s, below %s which this engine had "+
				"set: that master lost writes it had acknowledged (a failover to a replica that had not received "+
				"them, a restart without persistence), so deleted keys may be back with old values",
				sm.key, orMissing(prev), sm.mine)
		}
		if end > sm.mine {
			s.shardMarks[sm.key] = end
		}
	}
	if s.mustFlush == "" {
		return nil
	}
	if !s.cfg.FlushOnHistoryLost {
		return &PermanentError{Err: fmt.Errorf("%w: %s; flush the managed keys and restart, "+
			"or set consistency.on_history_lost: flush", ErrHistoryLost, s.mustFlush)}
	}
	s.log.Error("redis went back in time; flushing every managed key", zap.String("reason", s.mustFlush), zap.Strings("patterns", s.flushPatterns()))
	if err := s.Flush(ctx); err != nil {
		return err
	}
	// Only now may the watermark say that everything up to here is applied.
	if err := s.cfg.Client.Set(ctx, s.cfg.WatermarkKey, s.lastMark.String(), 0).Err(); err != nil {
		return err
	}
	for _, sm := range s.shardCmds {
		if err := s.cfg.Client.Set(ctx, sm.key, s.shardMarks[sm.key].String(), 0).Err(); err != nil {
			return err
		}
	}
	s.mustFlush = ""
	s.Stats.Flushes.Add(1)
	return nil
}

func orMissing(v string) string {
	if v == "" {
		return "missing"
	}
	return v
}

// Flush deletes every key FlushPatterns cover (SCAN + UNLINK), retrying
// transient errors, and announces the patterns on the publish channel.
func (s *Sink) Flush(ctx context.Context) error {
	return s.FlushSome(ctx, s.flushPatterns(), s.flushGenerations())
}

// FlushSome deletes the keys matching patterns (SCAN + UNLINK, leases
// first) and increments the generation keys gens, before Run starts.
func (s *Sink) FlushSome(ctx context.Context, patterns, gens []string) error {
	if len(patterns) > 0 {
		if err := s.applyGlobs(ctx, replication.Event{Globs: patterns}); err != nil {
			return err
		}
		if err := s.flushOrderKeys(ctx, patterns); err != nil {
			return err
		}
	}
	return s.IncrGenerations(ctx, gens)
}

// IncrGenerations increments generation keys, retrying transient errors
// (before Run starts; a reload's go through the stream as actions).
func (s *Sink) IncrGenerations(ctx context.Context, keys []string) error {
	for _, g := range keys {
		err := s.retry(ctx, "increment generation "+g, func() error {
			return s.cfg.Client.Incr(ctx, g).Err()
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// SetWatermark sets the watermark to lsn unconditionally (after a flush at
// start-up, so that it matches the slot's position again).
func (s *Sink) SetWatermark(ctx context.Context, lsn replication.LSN) error {
	if s.cfg.WatermarkKey == "" {
		return nil
	}
	return s.retry(ctx, "set watermark", func() error {
		if err := s.cfg.Client.Set(ctx, s.cfg.WatermarkKey, lsn.String(), 0).Err(); err != nil {
			return err
		}
		if !s.cfg.Cluster {
			return nil
		}
		keys, err := ShardWatermarkKeys(ctx, s.cfg.Client, s.cfg.WatermarkKey)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := s.cfg.Client.Set(ctx, k, lsn.String(), 0).Err(); err != nil {
				return err
			}
		}
		return nil
	})
}

// retry runs op until it succeeds, ctx ends or the error is permanent
// (Classify). Failures that go on longer than EscalateAfter are reported
// once as an error, and counted.
func (s *Sink) retry(ctx context.Context, what string, op func() error) error {
	defer s.Stats.Waiting.Store(false)
	classify := Classify
	if s.cfg.Cluster {
		classify = classifyCluster
	}
	p := retry.Policy{Min: s.cfg.MinBackoff, Max: s.cfg.MaxBackoff, Classify: classify, EscalateAfter: s.cfg.EscalateAfter,
		OnFailure: func(f retry.Failure) {
			if cc, ok := s.cfg.Client.(*redis.ClusterClient); ok && s.cfg.Cluster {
				// A master killed, a slot moved: the next attempt goes
				// by a fresh slot map (go-redis does not reload it on a
				// network error).
				cc.ReloadState(ctx)
			}
			s.obs.RedisError(f.Err, false)
			s.Stats.Waiting.Store(true)
			s.Stats.Retries.Add(1)
			switch {
			case f.Escalate:
				s.Stats.Escalations.Add(1)
				s.obs.Stalled(f.Err)
				s.log.Error("redis has refused or failed this for a long time; still retrying, nothing is skipped and "+
					"the position waits. If the error is not a passing outage (Redis down, loading, read-only, "+
					"out of memory), it needs an operator",
					zap.String("action", what), zap.Duration("failing_for", f.Failing.Round(time.Second)), zap.Int("attempt", f.Attempt), zap.Error(f.Err))
			case f.Attempt == 1 || f.Attempt%10 == 0:
				s.log.Warn("redis unavailable; retrying, nothing is skipped and the position waits",
					zap.String("action", what), zap.Int("attempt", f.Attempt), zap.Duration("retry_in", f.Wait), zap.Error(f.Err))
			}
		}}
	attempts, err := p.Do(ctx, op)
	switch {
	case err == nil && attempts > 1:
		s.log.Info("redis recovered", zap.String("action", what), zap.Int("attempts", attempts))
	case err != nil && ctx.Err() == nil:
		s.obs.RedisError(err, true)
	}
	return err
}

// aclRefusal is the PermanentError of a command, key or channel the ACL
// user may not use, with what to grant.
func aclRefusal(err error) error {
	return &PermanentError{Err: fmt.Errorf("redis refused a command: %w (grant the ACL user the command, key or "+
		"channel it names: cdcinvalidate needs +ping +unlink or +del +scan +eval +evalsha +get +set +sadd "+
		"+smembers, and +incr +publish +xadd for those actions, +cluster|slots on a Redis Cluster, +wait with "+
		"redis.wait_replicas, on the managed key patterns, ~cdcinvalidate:* and the publish channels; on a "+
		"cluster, on every node; see Redis permissions in docs/operations.md)", err)}
}

// droppedRedirect is true for a redirection error when the engine is
// deliberately broken with CDC_UNSAFE=drop-redirects (failpoints builds
// only): the command counts as done, and its deletes are lost.
func droppedRedirect(err error) bool {
	if !failpoint.Unsafe("drop-redirects") {
		return false
	}
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	prefix, _, _ := strings.Cut(rerr.Error(), " ")
	return prefix == "MOVED" || prefix == "ASK" || prefix == "TRYAGAIN"
}

// classifyCluster is Classify for a cluster client: a redirection (MOVED,
// ASK) that outlasted the client's own following of it, and TRYAGAIN,
// happen while slots migrate and pass; they are retried.
func classifyCluster(err error) error {
	var rerr redis.Error
	if errors.As(err, &rerr) {
		switch prefix, _, _ := strings.Cut(rerr.Error(), " "); prefix {
		case "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN":
			return nil
		}
	}
	return Classify(err)
}

// Classify returns a PermanentError, with what to fix, for Redis errors
// that retrying cannot fix, and nil for the others.
func Classify(err error) error {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return nil
	}
	msg := rerr.Error()
	prefix, _, _ := strings.Cut(msg, " ")
	switch prefix {
	case "CROSSSLOT", "MOVED", "ASK":
		return &PermanentError{Err: fmt.Errorf("redis: %w (redis.addr is a Redis Cluster node, or a command spans hash slots: for a Redis Cluster list its nodes in redis.addrs and set redis.cluster: true)", err)}
	case "NOPERM":
		return aclRefusal(err)
	case "WRONGPASS", "NOAUTH":
		return &PermanentError{Err: fmt.Errorf("redis authentication failed: %w (check redis.username and redis.password / CDC_REDIS_PASSWORD)", err)}
	case "WRONGTYPE":
		return &PermanentError{Err: fmt.Errorf("redis: %w", err)}
	case "ERR":
		if strings.Contains(msg, "can't run this command") || strings.Contains(msg, "no permissions") {
			// An ACL refusal inside a script (Redis 7.0 answers ERR there).
			return aclRefusal(err)
		}
		if strings.Contains(msg, "increment or decrement would overflow") {
			return &PermanentError{Err: fmt.Errorf("redis: %w (a generation key reached the largest integer: choose another generation_key, or delete the key together with every cached key of its rule)", err)}
		}
		if strings.Contains(msg, "proto-max-bulk-len") || strings.Contains(msg, "invalid bulk length") {
			return &PermanentError{Err: fmt.Errorf("redis: %w (a key or value is larger than Redis accepts: raise "+
				"proto-max-bulk-len in Redis, or use a digest filter such as {col|sha1} in the template and "+
				"leave large rows out of refresh)", err)}
		}
		if strings.Contains(msg, "user_script") || strings.Contains(msg, "Error running script") || strings.Contains(msg, "Error compiling script") {
			return &PermanentError{Err: fmt.Errorf("redis: a cdcinvalidate script failed: %w (a managed key holds a "+
				"value of another kind than the script expects, or Redis does not run the script: delete the key "+
				"it names, or report the error as a bug)", err)}
		}
		if strings.Contains(msg, "value is not an integer") {
			return &PermanentError{Err: fmt.Errorf("redis: %w (a generation key holds something other than an integer: delete it or choose another generation_key)", err)}
		}
		if strings.Contains(msg, "unknown command") {
			return &PermanentError{Err: fmt.Errorf("redis does not support a command cdcinvalidate needs: %w (Redis older than 4.0 has no UNLINK: set sink.delete_command: del)", err)}
		}
	}
	return nil
}

// appendMessage appends the publish payload {"lsn":"X/Y","keys":[...]}
// (field "patterns" for TRUNCATE). "lsn" is the end of the last transaction
// the batch completes; it is left out when the batch holds only part of a
// large transaction.
func appendMessage(dst []byte, end replication.LSN, field string, keys []string) []byte {
	dst = append(dst, '{')
	if end != 0 {
		dst = append(dst, `"lsn":"`...)
		dst = appendLSN(dst, end)
		dst = append(dst, `",`...)
	}
	dst = append(dst, '"')
	dst = append(dst, field...)
	dst = append(dst, `":[`...)
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = jsonstr.Append(dst, k)
	}
	return append(dst, "]}"...)
}

// lowestSlotByMaster maps each master's address to the lowest hash slot it
// serves (a stable name for the master's shard, whatever its address).
func lowestSlotByMaster(slots []redis.ClusterSlot) map[string]int {
	lowest := map[string]int{}
	for _, sl := range slots {
		if len(sl.Nodes) == 0 {
			continue
		}
		m := sl.Nodes[0].Addr
		if cur, ok := lowest[m]; !ok || int(sl.Start) < cur {
			lowest[m] = int(sl.Start)
		}
	}
	return lowest
}
