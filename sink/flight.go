package sink

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/failpoint"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// Batches in flight.
//
// A batch sent in one pipeline waits for that pipeline's answer before the
// next batch goes. With Redis a millisecond away and commits every half
// millisecond, a fresh commit then waits for the round trip of the batch
// ahead of it before its own is sent: up to two round trips from commit to
// invalidation (issue 15). So a batch of plain deletes may go on another
// connection while earlier batches are still in flight, when that cannot
// change what Redis ends with:
//
//   - it holds plain deletes only: no version raises, refresh writes,
//     generations, messages, leases, publish channel, verifier samples or
//     WAIT, on one Redis server (those keep the one-pipeline order);
//   - none of its keys is in a batch still in flight (deletes of different
//     keys commute; a key deleted twice is deleted);
//   - fewer than MaxInFlight batches are out, and with it they hold at
//     most MaxBatchKeys keys (the memory bound stays that of one batch).
//
// Any other batch, a TRUNCATE, a new session or the end of the input first
// waits until every batch in flight was acknowledged (drain), and then
// goes as before. Answers are taken in order: a position is reported to
// the checkpoint only when every batch before it was acknowledged, so a
// crash replays what any batch in flight held. The watermark a batch in
// flight raises is the position acknowledged when it was sent (its own end
// only when nothing was in flight before it): it never claims a change
// that another connection has yet to apply, so an application waiting for
// its commit's watermark reads after that commit's invalidation.

// flight is a batch of plain deletes sent in a pipeline of its own.
type flight struct {
	done    chan struct{} // closed when the pipeline was answered (or failed for good)
	keys    []string
	seen    map[string]struct{} // keys, for the disjointness check
	commits []time.Time
	end     replication.LSN // the last transaction end it completes (0: inside one)
	mark    replication.LSN // the watermark raised with it (0: none)
	mine    replication.LSN // the highest watermark this sink had set when it was sent
	markCmd *redis.Cmd

	err     error
	deleted uint64
	took    time.Duration
}

// waitSlot takes the oldest flight's answer while every slot is taken. Run
// calls it before it gathers a batch, not after: what arrives meanwhile
// then goes in that batch (gathered first, the batch waited for a slot
// with only the keys it had, and the commits behind it for another slot:
// with max_in_flight 2 the median was worse than with 1).
func (s *Sink) waitSlot(ctx context.Context) error {
	if s.sent < s.cfg.MaxInFlight {
		return nil
	}
	s.flew(FlightSlotWait)
	for s.sent >= s.cfg.MaxInFlight {
		if err := s.land(ctx); err != nil {
			return err
		}
	}
	return nil
}

// canFly says whether the gathered batch may be sent while earlier ones are
// in flight (see above); a slot is free (waitSlot came before gathering).
func (s *Sink) canFly(ctx context.Context) (bool, error) {
	if s.cfg.MaxInFlight < 2 || s.cfg.Cluster || s.cfg.Companion != nil || s.cfg.PublishChannel != "" ||
		s.cfg.WaitReplicas > 0 || s.mustFlush != "" || len(s.batch) == 0 || s.acts.size() > 0 || len(s.samples) > 0 {
		return false, nil
	}
	// Answers already in are taken first (the batch was being gathered).
	for len(s.flights) > 0 && isClosed(s.flights[0].done) {
		if err := s.land(ctx); err != nil {
			return false, err
		}
	}
	if len(s.batch) > s.cfg.MaxBatchKeys-s.flightKeys {
		return false, nil
	}
	return s.disjoint(), nil
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// disjoint says whether no key of the gathered batch is in a batch in
// flight.
func (s *Sink) disjoint() bool {
	for _, f := range s.flights {
		if len(f.seen) == 0 {
			continue
		}
		for _, k := range s.batch {
			if _, ok := f.seen[k]; ok {
				return false
			}
		}
	}
	return true
}

// newFlight takes a flight from the spares, or makes one.
func (s *Sink) newFlight() *flight {
	if n := len(s.spare); n > 0 {
		f := s.spare[n-1]
		s.spare = s.spare[:n-1]
		return f
	}
	return &flight{seen: map[string]struct{}{}}
}

// launch sends the gathered batch in a pipeline of its own, with the
// watermark raised to mark in it when mark is not 0. The batch's buffers go
// with the flight; the sink gathers the next batch in the flight's old ones.
func (s *Sink) launch(ctx context.Context, end, mark replication.LSN) {
	f := s.newFlight()
	f.keys, s.batch = s.batch, f.keys[:0]
	f.seen, s.seen = s.seen, f.seen
	f.commits = append(f.commits[:0], s.commits...)
	s.send(ctx, f, end, mark)
	s.flew(FlightSent)
}

// flew counts a flight event and reports it.
func (s *Sink) flew(ev FlightEvent) {
	switch ev {
	case FlightSent:
		s.Stats.Flights.Add(1)
	case FlightSlotWait:
		s.Stats.SlotWaits.Add(1)
	case FlightDrain:
		s.Stats.Drains.Add(1)
	}
	s.obs.Flight(ev)
}

// launchMark raises the watermark to the position held (applied, every
// batch before it answered) in a pipeline of its own, behind the batches
// in flight, when no flight carries it already.
func (s *Sink) launchMark(ctx context.Context) {
	if s.held == 0 || s.held <= s.flightMark || s.cfg.WatermarkKey == "" {
		return
	}
	s.send(ctx, s.newFlight(), 0, s.held)
}

// send puts f in flight.
func (s *Sink) send(ctx context.Context, f *flight, end, mark replication.LSN) {
	f.end, f.mark, f.mine = end, mark, s.lastMark
	s.flightMark = max(s.flightMark, mark)
	f.done = make(chan struct{})
	s.flights = append(s.flights, f)
	s.flightKeys += len(f.keys)
	s.sent++
	s.flying.Add(1)
	go func() {
		defer s.flying.Done()
		defer close(f.done)
		start := time.Now()
		f.err = s.retry(ctx, "delete keys", func() error { return s.fly(ctx, f) })
		f.took = time.Since(start)
	}()
}

// fly sends one flight's pipeline (one attempt).
func (s *Sink) fly(ctx context.Context, f *flight) error {
	var ndel int
	cmds, err := s.cfg.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
		ndel = s.del(ctx, p, f.keys)
		if f.mark != 0 {
			f.markCmd = queueMark(ctx, p, s.cfg.WatermarkKey, f.mark, f.mine)
		}
		return nil
	})
	if err := pipelineErr(err, cmds); err != nil {
		return err
	}
	f.deleted = deleted(cmds[:ndel])
	return nil
}

// addPosition queues a position that came without work for Redis (a
// keepalive's, an empty transaction's) behind the batches in flight: it is
// applied once they are.
func (s *Sink) addPosition(end replication.LSN) {
	f := s.newFlight()
	f.keys = f.keys[:0]
	f.commits = append(f.commits[:0], s.commits...)
	f.end, f.mark, f.err, f.deleted, f.took = end, 0, nil, 0, 0
	f.done = closedChan
	s.flights = append(s.flights, f)
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// landed returns what is closed when the oldest flight was answered (nil
// when none is in flight).
func (s *Sink) landed() <-chan struct{} {
	if len(s.flights) == 0 {
		return nil
	}
	return s.flights[0].done
}

// land waits for the oldest flight's answer and takes it: the watermark it
// raised is checked, and what it completes is reported, as a batch sent in
// turn would have been.
func (s *Sink) land(ctx context.Context) error {
	f := s.flights[0]
	<-f.done
	copy(s.flights, s.flights[1:])
	s.flights[len(s.flights)-1] = nil
	s.flights = s.flights[:len(s.flights)-1]
	s.flightKeys -= len(f.keys)
	if f.done != closedChan {
		s.sent-- // not a position's
	}
	defer s.recycle(f)
	if f.err != nil {
		return f.err
	}
	if len(f.keys) > 0 {
		s.Stats.Deleted.Add(f.deleted)
		s.obs.Batch(len(f.keys), int(f.deleted), f.took)
		s.Stats.Batches.Add(1)
		s.Stats.Keys.Add(uint64(len(f.keys)))
	}
	if f.mark != 0 {
		s.markCmd, s.shardCmds = f.markCmd, s.shardCmds[:0]
		if err := s.retry(ctx, "check the watermark", func() error { return s.checkMarkFrom(ctx, f.mark, f.mine) }); err != nil {
			return err
		}
	}
	if f.end >= s.replayMark {
		s.replayMark = 0
	}
	if f.end == 0 {
		if len(f.keys) > 0 { // not a watermark of its own (launchMark)
			failpoint.Hit("sink-mid-txn")
		}
	} else {
		if len(f.keys) > 0 {
			failpoint.Hit("sink-after-ack")
		}
		if len(f.commits) > 0 {
			s.obs.Applied(time.Now(), f.commits)
		}
	}
	s.held = max(s.held, f.end)
	switch {
	case s.cfg.WatermarkKey == "":
		s.ackHeld()
	case f.mark != 0:
		s.acknowledge(f.mark)
		if s.held <= f.mark {
			s.held = 0
		}
	}
	if s.held > s.flightMark && !s.holding {
		// Watermarked by the next batch, or after holdPosition.
		s.holding = true
		s.holdTimer.Reset(holdPosition)
	} else if s.held == 0 && s.holding {
		s.holding = false
		s.holdTimer.Stop()
	}
	return nil
}

func (s *Sink) recycle(f *flight) {
	clear(f.seen)
	f.keys = f.keys[:0]
	f.commits = f.commits[:0]
	f.markCmd, f.err = nil, nil
	s.spare = append(s.spare, f)
}

// drain takes the answers of every flight in order.
func (s *Sink) drain(ctx context.Context) error {
	if s.sent > 0 {
		s.flew(FlightDrain) // positions alone are not a wait
	}
	for len(s.flights) > 0 {
		if err := s.land(ctx); err != nil {
			return err
		}
	}
	return nil
}
