package replication

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/checkpoint"
	"github.com/cdcinvalidate/cdcinvalidate/config/defaults"
	"github.com/cdcinvalidate/cdcinvalidate/internal/failpoint"
	"github.com/cdcinvalidate/cdcinvalidate/internal/retry"
)

// Event is one unit of work for the sink, handed over in commit order.
type Event struct {
	// Keys to delete with the sink's command (UNLINK by default).
	Keys []string
	// Actions are the other things the changes ask of Redis, in change order.
	Actions []Action
	// LSN is the commit LSN of the transaction the keys, actions or
	// patterns belong to (the message's LSN for a non-transactional
	// message; 0 for an event without them, and for patterns a rules
	// reload or a flush asks for): the version that version keys and
	// events carry, and what a TRUNCATE is fenced with.
	LSN LSN
	// Globs are SCAN patterns covering every key of a truncated table.
	Globs []string
	// End, when non-zero, says that every change below End has been handed
	// over: once the sink applied this event and all before it, End may be
	// confirmed to PostgreSQL. It is a transaction's end LSN, or the server's
	// position from a keepalive while no transaction was open.
	End LSN
	// CommitTime is the commit time of the transaction that End closes.
	CommitTime time.Time
	// Size is about how many bytes of memory the event's keys and actions
	// hold (their text plus a fixed cost each, see EntryBytes); the sink
	// bounds a batch by it. The stream sets it; an event built elsewhere
	// may leave it 0.
	Size int
	// Restart says that a new replication session begins: the server sends
	// again everything after the confirmed position, so a transaction that
	// the last session handed over only in part starts over.
	Restart bool
	// Start, on a Restart event, is the slot's confirmed position when this
	// session acquired the slot: the position the history checks compare
	// with (another instance may have moved it since this process last
	// streamed).
	Start LSN
	// Ready, on a Restart event, is closed by the sink once the session's
	// start-up checks passed; the stream reports itself streaming only then.
	Ready chan struct{}
}

// Mapper turns changes into keys. The stream calls it from its one goroutine.
type Mapper interface {
	// Bind is called for every Relation message (the first one of a table
	// in a session, and again after ALTER TABLE). An error stops the engine:
	// the rules do not fit the table any more.
	Bind(rel *Relation) error
	// AppendChange appends the keys to delete and the other actions of a
	// row change.
	AppendChange(keys []string, acts []Action, ch *Change) ([]string, []Action, error)
	// AppendTruncate appends the SCAN patterns and the actions of a
	// truncated table.
	AppendTruncate(globs []string, acts []Action, rel *Relation) ([]string, []Action)
}

// Positions is where the stream learns what the sink has applied, and
// records what it handed over (for the lag).
type Positions interface {
	// Ack raises the applied position (never lowers it). The stream calls
	// it with the slot's confirmed position when a session acquires the
	// slot, so a status update never reports an older position than the
	// one another instance confirmed meanwhile.
	Ack(lsn LSN)
	Applied() LSN
	WaitApplied(lsn LSN, deadline time.Time) bool
	Handed(end LSN, commitTime time.Time)
}

// Observer receives the stream's measurements. Table is called once per
// Relation message; the returned counter is called for every change.
type Observer interface {
	Table(qualifiedName string) TableObserver
	State(state string)
	Reconnect(err error)
	// Stalled reports that reconnecting has failed for longer than
	// Config.EscalateAfter.
	Stalled(err error)
}

// TableObserver counts one table's changes and the keys they produced.
type TableObserver interface {
	Change(op Op, keys int)
}

// States reported to the Observer.
const (
	StateConnecting = "connecting"
	StateStreaming  = "streaming"
	StateBackingOff = "backing_off"
	StateStandby    = "standby"
	StateStopped    = "stopped"
)

type nopObserver struct{}

func (nopObserver) Table(string) TableObserver { return nopObserver{} }
func (nopObserver) State(string)               {}
func (nopObserver) Reconnect(error)            {}
func (nopObserver) Stalled(error)              {}
func (nopObserver) Change(Op, int)             {}

// Config configures a Stream.
type Config struct {
	// Conn is the connection configuration; the stream sets the
	// replication=database and application_name parameters itself.
	Conn        *pgconn.Config
	Slot        string
	Publication string
	// StatusInterval is the longest time between standby status updates.
	StatusInterval time.Duration
	// Streaming asks for in-progress transactions (protocol version 2, PostgreSQL 14+).
	Streaming bool
	// TxnMemoryBytes bounds the memory holding keys of streamed transactions
	// before they spill to files in SpillDir ("" = the system temp dir).
	TxnMemoryBytes int
	SpillDir       string
	// ChunkKeys is how many keys of one transaction go into one event.
	ChunkKeys int
	// ChunkBytes bounds the bytes (Event.Size) of one event of a large
	// transaction: wide refreshed rows fill it long before ChunkKeys.
	ChunkBytes int
	// QueueBytes bounds the bytes (Event.Size) of the events waiting in the
	// output channel: a deep channel lets many small transactions queue
	// while the sink is busy, without letting large events pile up.
	QueueBytes int
	// MinBackoff and MaxBackoff bound the wait between reconnects.
	MinBackoff, MaxBackoff time.Duration
	// ShutdownWait is how long to wait at shutdown for the sink to apply
	// what was handed over, before confirming the last applied position.
	ShutdownWait time.Duration
	// StandbyRetry is how often a standby (the slot is active for another
	// process) tries to take the slot over. Default 1s.
	StandbyRetry time.Duration
	// EscalateAfter is how long reconnecting may go on failing before it
	// is reported as an error and to Observer.Stalled (default 1m); the
	// stream goes on reconnecting.
	EscalateAfter time.Duration
	// WALSenderTimeout, when non-zero, sets wal_sender_timeout for this
	// connection (PostgreSQL 12+): how soon the server drops a consumer that
	// stopped answering, which bounds the takeover time after a freeze.
	WALSenderTimeout time.Duration
	Logger           *zap.Logger
	Observer         Observer
}

// Stream reads the slot and hands events to the sink. One goroutine (Run)
// owns the replication connection: pgconn is not safe for concurrent use.
type Stream struct {
	cfg    Config
	mapper Mapper
	pos    Positions
	out    chan<- Event
	log    *zap.Logger
	obs    Observer

	received  atomic.Uint64 // highest position the server reported
	serverEnd atomic.Uint64 // the server's WAL end in its last message

	swap swapper // rules reloads (swap.go)

	// sent[n%len] is the total Size of the first n events sent on out
	// (n = count): the events still queued are the last len(out) sent.
	sent  []int
	count int

	// What the start-up flush covered (SetFlushed, unbound.go).
	coveredBelow              LSN
	coveredGlobs, coveredGens []string
}

// Received returns the highest WAL position received from the server.
func (s *Stream) Received() LSN { return LSN(s.received.Load()) }

// ServerWALEnd returns the server's WAL end as of its last message.
func (s *Stream) ServerWALEnd() LSN { return LSN(s.serverEnd.Load()) }

// New returns a stream that sends events to out and closes out when Run returns.
func New(cfg Config, m Mapper, pos Positions, out chan<- Event) *Stream {
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = defaults.StatusInterval
	}
	if cfg.ChunkKeys <= 0 {
		cfg.ChunkKeys = defaults.ChunkKeys
	}
	if cfg.ChunkBytes <= 0 {
		cfg.ChunkBytes = defaults.ChunkBytes
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = defaults.QueueBytes
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = defaults.MinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = defaults.PostgresBackoff
	}
	if cfg.ShutdownWait <= 0 {
		cfg.ShutdownWait = defaults.ShutdownWait
	}
	if cfg.EscalateAfter <= 0 {
		cfg.EscalateAfter = defaults.EscalateAfter
	}
	if cfg.StandbyRetry <= 0 {
		cfg.StandbyRetry = defaults.StandbyRetry
	}
	if cfg.TxnMemoryBytes <= 0 {
		cfg.TxnMemoryBytes = defaults.TxnBufferMB << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	return &Stream{cfg: cfg, mapper: m, pos: pos, out: out, log: cfg.Logger, obs: cfg.Observer, sent: make([]int, cap(out)+1)}
}

// queued returns the bytes (Event.Size) of the events waiting in out. The
// sink only takes events away meanwhile, so the answer is never too low.
func (s *Stream) queued() int {
	k := min(len(s.out), s.count)
	if k == 0 {
		return 0
	}
	n := len(s.sent)
	return s.sent[s.count%n] - s.sent[(s.count-k)%n]
}

// wasSent records an event of size bytes sent on out.
func (s *Stream) wasSent(size int) {
	n := len(s.sent)
	s.sent[(s.count+1)%n] = s.sent[s.count%n] + size
	s.count++
}

// Run streams until ctx is cancelled (then it returns nil after confirming
// what the sink applied) or a permanent error happens. Connection losses are
// retried with capped exponential backoff from the slot's confirmed
// position. Run closes the output channel when it returns.
func (s *Stream) Run(ctx context.Context) error {
	defer close(s.out)
	defer s.obs.State(StateStopped)
	backoff := retry.Backoff{Min: s.cfg.MinBackoff, Max: s.cfg.MaxBackoff}
	standby := false
	var failingSince time.Time // first failed session of a run of failures
	escalated := false
	for {
		started := time.Now()
		s.obs.State(StateConnecting)
		err := s.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("replication stream ended")
		}
		if retry.IsPermanent(err) {
			return err
		}
		if perm := Classify(err); perm != nil {
			return perm
		}
		var active *slotActiveError
		if errors.As(err, &active) || isSlotActive(err) {
			// Standby: another instance streams. Poll at a fixed pace, so a
			// takeover after its death takes about one StandbyRetry.
			if !standby {
				s.log.Info("slot in use by another process; waiting as standby", zap.Error(err), zap.Duration("poll", s.cfg.StandbyRetry))
				standby = true
			}
			s.obs.State(StateStandby)
			if retry.Sleep(ctx, s.cfg.StandbyRetry) != nil {
				return nil
			}
			backoff.Reset()
			failingSince, escalated = time.Time{}, false
			continue
		}
		standby = false
		if time.Since(started) > time.Minute {
			// The session streamed for a while: a new run of failures.
			backoff.Reset()
			failingSince, escalated = time.Time{}, false
		}
		if failingSince.IsZero() {
			failingSince = started
		}
		wait := backoff.Next()
		s.obs.Reconnect(err)
		s.obs.State(StateBackingOff)
		if failing := time.Since(failingSince); !escalated && failing >= s.cfg.EscalateAfter {
			escalated = true
			s.obs.Stalled(err)
			s.log.Error("replication has not streamed for a long time; still reconnecting from the slot's confirmed position. If the error is not a passing outage (server down or restarting), it needs an operator",
				zap.Duration("failing_for", failing.Round(time.Second)), zap.Error(err), zap.Duration("retry_in", wait))
		} else {
			s.log.Warn("replication connection lost; reconnecting from the slot's confirmed position",
				zap.Error(err), zap.Duration("retry_in", wait))
		}
		if retry.Sleep(ctx, wait) != nil {
			return nil
		}
	}
}

// session is the state of one replication connection.
type session struct {
	s      *Stream
	ctx    context.Context
	conn   *pgconn.PgConn
	rep    checkpoint.Reporter
	dec    decoder
	rels   map[uint32]*Relation
	tables map[uint32]TableObserver
	change Change

	inTxn      bool
	commitTime time.Time

	// cur is the transaction whose messages arrive: plain, or the
	// streamed one of the Stream Start..Stop block being read.
	cur      openTxn
	plain    memTxn
	inStream bool
	streams  map[uint32]*streamTxn // open streamed transactions
	budget   int                   // memory left for them (TxnMemoryBytes)
	// Reused by streamed transactions: a change's keys and actions, and
	// the encoding of an action.
	scratchKeys []string
	scratchActs []Action
	actBuf      []byte

	// lastRel is the relation of the message just handled, if it was a
	// Relation message (pgoutput describes a partition right before the
	// first change that goes through it to its root).
	lastRel *Relation
	// badRels are relations whose last Relation message, inside the
	// streamed transaction given, did not bind: that transaction's changes
	// of them cannot be mapped, and it fails if it commits.
	badRels map[uint32]*streamTxn

	lastEnd LSN // highest End handed to the sink
	timer   *time.Timer

	// lastRecv is when the last message arrived (or the loop last began
	// to listen again after waiting for the sink); no message for
	// deadAfter means the connection is dead (half-open) and is dropped.
	lastRecv  time.Time
	deadAfter time.Duration

	warnedNonTxn bool // logged the first non-transactional message
}

func (s *Stream) session(ctx context.Context) (err error) {
	ccfg := s.cfg.Conn.Copy()
	if ccfg.RuntimeParams == nil {
		ccfg.RuntimeParams = map[string]string{}
	}
	ccfg.RuntimeParams["replication"] = "database"
	if ccfg.RuntimeParams["application_name"] == "" {
		ccfg.RuntimeParams["application_name"] = "cdcinvalidate"
	}
	if s.cfg.WALSenderTimeout > 0 {
		ccfg.RuntimeParams["wal_sender_timeout"] = strconv.Itoa(int(s.cfg.WALSenderTimeout.Milliseconds()))
	}
	conn, err := pgconn.ConnectConfig(ctx, ccfg)
	if err != nil {
		return fmt.Errorf("connect for replication to %s:%d: %w", ccfg.Host, ccfg.Port, err)
	}
	defer conn.Close(context.Background())

	version, err := serverVersion(ctx, conn)
	if err != nil {
		return err
	}
	wst, err := walSenderTimeout(ctx, conn)
	if err != nil {
		return err
	}
	confirmed, active, err := slotState(ctx, conn, s.cfg.Slot)
	if err != nil {
		return err
	}
	if active != "" {
		return &slotActiveError{slot: s.cfg.Slot, pid: active}
	}

	args := []string{fmt.Sprintf("publication_names '%s'", s.cfg.Publication)}
	streaming := false
	if version >= 140000 {
		args = append([]string{"proto_version '2'"}, args...)
		args = append(args, "messages 'true'")
		if s.cfg.Streaming {
			args = append(args, "streaming 'on'")
			streaming = true
		}
	} else {
		args = append([]string{"proto_version '1'"}, args...)
	}
	// Start at 0/0: the server resumes at the slot's confirmed_flush_lsn,
	// never at a position this process remembers.
	if err := pglogrepl.StartReplication(ctx, conn, s.cfg.Slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: args}); err != nil {
		return fmt.Errorf("start replication from slot %q: %w", s.cfg.Slot, err)
	}
	// The slot is this session's now. Another instance may have streamed
	// since this process last did (a standby taking over): what it
	// confirmed is applied as far as this process is concerned, and no
	// status update may report less.
	s.pos.Ack(confirmed)

	ss := newSession(ctx, s)
	ss.conn = conn
	ss.rep = checkpoint.Reporter{Interval: s.cfg.StatusInterval, Prompt: 100 * time.Millisecond}
	ss.lastEnd = confirmed
	ss.deadAfter = deadAfter(wst, s.cfg.StatusInterval)
	ss.rep.Received(confirmed)
	defer ss.close()

	// Wake the receive call when ctx ends; it blocks with no context to keep
	// pgconn from starting a goroutine per message.
	stop := context.AfterFunc(ctx, func() { _ = conn.Conn().SetReadDeadline(time.Now()) })
	defer stop()

	// The sink runs the start-up consistency checks for this session (in
	// order with what earlier sessions handed over) before anything of
	// this one is applied; a failed check stops the engine.
	ready := make(chan struct{})
	if err := ss.emit(Event{Restart: true, Start: confirmed, Ready: ready}); err == nil {
		err = ss.await(ready)
	}
	if err != nil {
		if ctx.Err() != nil {
			ss.shutdown()
			return nil
		}
		return err
	}
	s.obs.State(StateStreaming)
	s.log.Info("streaming",
		zap.String("slot", s.cfg.Slot), zap.String("publication", s.cfg.Publication),
		zap.Stringer("confirmed_lsn", confirmed), zap.Int("server_version", version),
		zap.Bool("streaming_in_progress", streaming))
	ss.attachSwaps(conn.Conn())
	err = ss.loop()
	ss.detachSwaps()
	if ctx.Err() != nil {
		ss.shutdown()
		return nil
	}
	return err
}

// newSession returns the state of a session of s, not yet connected.
func newSession(ctx context.Context, s *Stream) *session {
	ss := &session{
		s: s, ctx: ctx,
		rels:     map[uint32]*Relation{},
		tables:   map[uint32]TableObserver{},
		streams:  map[uint32]*streamTxn{},
		badRels:  map[uint32]*streamTxn{},
		budget:   s.cfg.TxnMemoryBytes,
		timer:    time.NewTimer(time.Hour),
		lastRecv: time.Now(),
	}
	ss.plain.ss = ss
	ss.cur = &ss.plain
	return ss
}

func (ss *session) close() {
	ss.timer.Stop()
	for _, t := range ss.streams {
		t.release()
	}
}

// shutdown waits briefly for the sink to apply what it was handed, confirms
// the applied position and ends the stream cleanly.
func (ss *session) shutdown() {
	applied := ss.s.pos.Applied()
	if ss.lastEnd > applied {
		ss.s.pos.WaitApplied(ss.lastEnd, time.Now().Add(ss.s.cfg.ShutdownWait))
		applied = ss.s.pos.Applied()
	}
	_ = ss.conn.Conn().SetDeadline(time.Now().Add(2 * time.Second))
	if err := ss.sendStatus(time.Now()); err != nil {
		ss.s.log.Warn("could not confirm the final position at shutdown; it will be replayed", zap.Error(err))
		return
	}
	// CopyDone and wait for the server's reply, so the confirmation was
	// processed before the connection closes.
	if _, err := pglogrepl.SendStandbyCopyDone(context.Background(), ss.conn); err != nil {
		ss.s.log.Debug("end of stream", zap.Error(err))
	}
	ss.s.log.Info("stopped", zap.Stringer("confirmed_lsn", applied))
}

func (ss *session) sendStatus(now time.Time) error {
	w, f, a := ss.rep.Status(ss.s.pos.Applied())
	if failpoint.Unsafe("confirm-received") {
		f, a = w, w // the bug a negative control must catch
	}
	// After a quiet spell the server is asked to answer at once: an
	// answer proves the connection alive even when nothing else flows
	// (the server's own keepalives stop while status updates come in).
	err := pglogrepl.SendStandbyStatusUpdate(ss.ctx, ss.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: w, WALFlushPosition: f, WALApplyPosition: a, ClientTime: now,
		ReplyRequested: now.Sub(ss.lastRecv) >= ss.s.cfg.StatusInterval,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	ss.rep.Sent(now, f)
	return nil
}

func (ss *session) loop() error {
	netConn := ss.conn.Conn()
	var deadline time.Time // the read deadline in force
	for {
		now := time.Now()
		applied := ss.s.pos.Applied()
		if ss.rep.Due(now, applied) {
			if err := ss.sendStatus(now); err != nil {
				return err
			}
		}
		wake := ss.rep.Next(ss.s.pos.Applied())
		if ss.lastEnd > applied {
			// Work is in flight: look at the applied position again soon.
			wake = minTime(wake, now.Add(50*time.Millisecond))
		}
		wake = minTime(wake, ss.lastRecv.Add(ss.deadAfter))
		// Moving the deadline costs a timer update per message; it only
		// has to move when the wake-up must come earlier (waking up early
		// just loops).
		if deadline.IsZero() || wake.Before(deadline) || !now.Before(deadline) {
			if err := netConn.SetReadDeadline(wake); err != nil {
				return fmt.Errorf("set read deadline: %w", err)
			}
			deadline = wake
		}
		if ss.ctx.Err() != nil {
			return ss.ctx.Err()
		}
		// After the deadline is set: a SetMapper that comes later wakes the receive.
		if err := ss.takeSwap(); err != nil {
			return err
		}
		msg, err := ss.conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) {
				// The deadline passed, or someone moved it to wake this
				// loop (shutdown, a rules swap): set it again next time.
				deadline = time.Time{}
				if quiet := time.Since(ss.lastRecv); quiet >= ss.deadAfter {
					return fmt.Errorf("%w: no message from the server for %s although status updates asked for an answer; reconnecting", ErrConnectionDead, quiet.Round(time.Millisecond))
				}
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		ss.lastRecv = time.Now()
		blocked := ss.lastRecv.Sub(now) > blockedRead
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := ss.handleCopyData(msg.Data); err != nil {
				return err
			}
			// Catching up on old transactions while reading faster than
			// the server sends: each message would cost a socket read and
			// a wake-up of its own. Pausing a moment lets the server's
			// messages gather in the socket, to be read many at a time.
			// Fresh transactions (and keepalives) are read at once.
			if blocked && len(msg.Data) > 0 && msg.Data[0] == pglogrepl.XLogDataByteID && ss.commitTime.Before(now.Add(-catchUpAge)) {
				time.Sleep(catchUpPause)
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.CopyDone:
			return errors.New("server ended the replication stream")
		default:
			// NoticeResponse, ParameterStatus and the like: nothing to do.
		}
	}
}

// Catch-up reading: when the last transaction committed more than
// catchUpAge ago and a read had to wait (took longer than blockedRead),
// the loop pauses catchUpPause before reading on.
const (
	catchUpAge   = time.Second
	blockedRead  = 50 * time.Microsecond
	catchUpPause = time.Millisecond
)

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (ss *session) handleCopyData(data []byte) error {
	if len(data) == 0 {
		return permanent(fmt.Errorf("%w: empty CopyData", ErrMalformed))
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return permanent(fmt.Errorf("%w: keepalive: %v", ErrMalformed, err))
		}
		ss.received(ka.ServerWALEnd, ka.ServerWALEnd)
		// Nothing open: every transaction that commits below ServerWALEnd was
		// sent, so the position may be confirmed once the sink caught up.
		if !ss.inTxn && len(ss.streams) == 0 && ka.ServerWALEnd > ss.lastEnd {
			if err := ss.emit(Event{End: ka.ServerWALEnd}); err != nil {
				return err
			}
		}
		if ka.ReplyRequested {
			return ss.sendStatus(time.Now())
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return permanent(fmt.Errorf("%w: XLogData: %v", ErrMalformed, err))
		}
		ss.received(xld.WALStart, xld.ServerWALEnd)
		if err := ss.handleMessage(xld.WALData); err != nil {
			return err
		}
		return nil
	}
	return nil
}

func (ss *session) received(lsn, serverEnd LSN) {
	ss.rep.Received(lsn)
	if uint64(lsn) > ss.s.received.Load() {
		ss.s.received.Store(uint64(lsn))
	}
	ss.s.serverEnd.Store(uint64(serverEnd))
}

func (ss *session) handleMessage(data []byte) error {
	m, err := ss.dec.decode(data, ss.inStream)
	if err != nil {
		return permanent(err)
	}
	described := ss.lastRel
	ss.lastRel = nil
	switch m.kind {
	case msgBegin:
		ss.inTxn = true
		ss.commitTime = m.time
		ss.plain.begin(m.lsn)
	case msgCommit:
		ss.inTxn = false
		return ss.plain.commit(m.lsn, m.endLSN, m.time)
	case msgRelation:
		return ss.handleRelation(m)
	case msgInsert, msgUpdate, msgDelete:
		return ss.handleChange(m, described)
	case msgTruncate:
		var globs []string
		var acts []Action
		for _, id := range m.truncRelIDs {
			rel := ss.rels[id]
			if rel == nil {
				return permanent(fmt.Errorf("%w: TRUNCATE of unknown relation %d", ErrMalformed, id))
			}
			globs, acts = ss.s.mapper.AppendTruncate(globs, acts, rel)
		}
		// Keys and actions before the patterns go first; the TRUNCATE's
		// own actions (a generation bump, its event for publish and
		// stream) follow the patterns.
		if err := ss.cur.addGlobs(m.xid, globs); err != nil {
			return err
		}
		if len(acts) == 0 {
			return nil
		}
		return addActions(ss.cur, m.xid, acts)
	case msgStreamStart:
		ss.inStream = true
		ss.cur = ss.stream(m.xid)
	case msgStreamStop:
		ss.inStream = false
		ss.cur = &ss.plain
		failpoint.Hit("stream-after-stop")
	case msgStreamCommit:
		t := ss.streams[m.xid]
		if t == nil {
			return ss.emit(Event{End: m.endLSN, CommitTime: m.time})
		}
		return t.commit(m.lsn, m.endLSN, m.time)
	case msgStreamAbort:
		if t := ss.streams[m.xid]; t != nil { // else tolerated: an abort of a transaction never started here
			t.abort(m.subXid)
		}
	case msgMessage:
		return ss.handleInvalidation(m)
	case msgOrigin, msgType:
		// Origins and types need no invalidation.
	}
	return nil
}

// handleInvalidation applies a logical decoding message of explicit
// invalidations: pg_logical_emit_message(true, 'cdcinvalidate', ...).
func (ss *session) handleInvalidation(m *message) error {
	if m.prefix != explicitPrefix {
		return nil // other applications' messages
	}
	keys, globs, gens, err := parseExplicit(m.content)
	if err != nil {
		txn := ""
		switch {
		case !m.transactional:
			txn = " (non-transactional)"
		case ss.inStream:
			txn = fmt.Sprintf(" of streamed transaction %d", ss.cur.(*streamTxn).xid)
		}
		return permanent(fmt.Errorf("invalidation message (prefix %q) at LSN %s%s is malformed: %v; nothing of its "+
			"transaction is skipped, so the engine stops: fix the application that emits it, and to get past "+
			"this transaction flush the keys the rules manage and advance the slot beyond its commit "+
			"(pg_replication_slot_advance)",
			explicitPrefix, m.lsn, txn, err))
	}
	// The keys go as actions, in their place among the transaction's
	// refresh writes (a refresh of a key before the message must not
	// survive it).
	acts := make([]Action, 0, len(keys)+len(gens))
	for _, k := range keys {
		acts = append(acts, Action{Kind: ActDelete, Key: k})
	}
	for _, g := range gens {
		acts = append(acts, Action{Kind: ActIncr, Key: g})
	}
	if !m.transactional {
		return ss.applyNonTransactional(m.lsn, globs, acts)
	}
	// As for TRUNCATE: what came before the patterns goes first.
	if err := addActions(ss.cur, m.xid, acts); err != nil {
		return err
	}
	return ss.cur.addGlobs(m.xid, globs)
}

// applyNonTransactional hands over the invalidations of a non-transactional
// message at once, at its place in the stream: it belongs to no
// transaction, and the server sends it when it decodes it, between
// transactions (an open transaction's part gathered so far goes first). It
// moves no position itself: the next keepalive or commit confirms past it,
// and only after the sink applied it, as for everything handed over before
// them; until then a restart receives it again.
func (ss *session) applyNonTransactional(lsn LSN, globs []string, acts []Action) error {
	if !ss.warnedNonTxn {
		ss.warnedNonTxn = true
		ss.s.log.Info("applying a non-transactional invalidation message at its WAL position; inside a transaction, "+
			"emit it with pg_logical_emit_message(true, 'cdcinvalidate', ...) so that it is applied at the "+
			"commit, after the data changed",
			zap.Stringer("lsn", lsn))
	}
	if err := ss.plain.end(0, time.Time{}); err != nil {
		return err
	}
	if len(acts) > 0 {
		if err := ss.emit(Event{Actions: acts, LSN: lsn}); err != nil {
			return err
		}
	}
	if len(globs) > 0 {
		return ss.emit(Event{Globs: globs, LSN: lsn})
	}
	return nil
}

// explicitPrefix is the prefix of logical decoding messages that carry
// explicit invalidations.
const explicitPrefix = "cdcinvalidate"

// parseExplicit reads the content of an explicit invalidation message:
// JSON when it starts with '[' or '{' (["k1","k2"] or
// {"keys":[...],"patterns":[...],"generations":[...]}), else one key per line (each line
// trimmed of surrounding white space, blank lines ignored; JSON keeps a
// key's spaces). A pattern must start with a literal character, as a
// template's TRUNCATE pattern does.
func parseExplicit(content []byte) (keys, globs, gens []string, err error) {
	text := strings.TrimLeft(string(content), " \t\r\n")
	if text == "" || (text[0] != '[' && text[0] != '{') {
		for _, line := range strings.Split(string(content), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				keys = append(keys, line)
			}
		}
		return keys, nil, nil, nil
	}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	if text[0] == '[' {
		err = dec.Decode(&keys)
	} else {
		var o struct {
			Keys        []string `json:"keys"`
			Patterns    []string `json:"patterns"`
			Generations []string `json:"generations"`
		}
		err = dec.Decode(&o)
		keys, globs, gens = o.Keys, o.Patterns, o.Generations
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf(`not valid JSON for ["key", ...] or {"keys": [...], "patterns": [...], "generations": [...]}: %v`, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, nil, errors.New("text after the JSON value")
	}
	for i, k := range keys {
		if k == "" {
			return nil, nil, nil, fmt.Errorf("key %d is empty", i)
		}
	}
	for i, g := range gens {
		if g == "" {
			return nil, nil, nil, fmt.Errorf("generation key %d is empty", i)
		}
	}
	for i, g := range globs {
		if g == "" || strings.ContainsRune("*?[", rune(g[0])) {
			return nil, nil, nil, fmt.Errorf("pattern %d %q does not start with literal text (such as \"user:\"); a pattern without a prefix would match keys of other rules and applications", i, g)
		}
	}
	return keys, globs, gens, nil
}

// stream returns the open streamed transaction xid, opening it.
func (ss *session) stream(xid uint32) *streamTxn {
	t := ss.streams[xid]
	if t == nil {
		t = &streamTxn{ss: ss, xid: xid, buf: txnBuffer{xid: xid}}
		ss.streams[xid] = t
	}
	return t
}

// handleRelation binds the rules to a table the server describes. Outside
// a streamed transaction a table the rules do not fit stops the stream at
// once: nothing after this point of the transaction is confirmed. Inside
// one (a DDL in a transaction not yet committed) the verdict waits for its
// commit: if it aborts, the table never changed.
func (ss *session) handleRelation(m *message) error {
	rel := m.relation
	ss.lastRel = rel
	ss.rels[rel.ID] = rel
	ss.tables[rel.ID] = ss.s.obs.Table(rel.QualifiedName())
	delete(ss.badRels, rel.ID)
	return ss.cur.described(m.xid, rel, ss.s.mapper.Bind(rel))
}

// LeafChecker is implemented by a Mapper that checks the partition a
// change went through, when pgoutput described it right before the change
// it publishes as its root's: a partition's replica identity is its own,
// so its old rows may lack columns the root's rules need.
type LeafChecker interface {
	CheckLeaf(root, leaf *Relation) error
}

// handleChange maps a row change. described is the relation of a Relation
// message that came right before it, or nil.
func (ss *session) handleChange(m *message, described *Relation) error {
	rel := ss.rels[m.relID]
	if rel == nil {
		return permanent(fmt.Errorf("%w: change of relation %d before its Relation message", ErrMalformed, m.relID))
	}
	t := ss.cur
	if lc, ok := ss.s.mapper.(LeafChecker); ok && described != nil && described.ID != rel.ID {
		if err := lc.CheckLeaf(rel, described); err != nil {
			return t.drop(m.xid, err)
		}
	}
	if owner := ss.badRels[m.relID]; owner != nil {
		if owner != t {
			return permanent(fmt.Errorf("a change of table %s arrived without a new description of the table after "+
				"streamed transaction %d changed it so that the rules no longer fit; the engine stops rather than "+
				"map it with a definition that may not be its own; restart cdcinvalidate", rel.QualifiedName(), owner.xid))
		}
		// Its commit fails, unless the subtransaction aborts.
		if f, ok := owner.buf.binds[m.relID]; ok {
			return t.drop(m.xid, f.err)
		}
		return nil
	}
	ch := &ss.change
	ch.Rel = rel
	ch.Op = Op(m.kind)
	ch.HasOld = m.oldKind != 0 && m.kind != msgInsert
	ch.OldKind = m.oldKind
	ch.Old = m.old
	ch.New = m.new
	if m.kind == msgDelete {
		ch.New = Tuple{}
	}
	keys, acts := t.appendTo()
	before := len(keys) + len(acts)
	keys, acts, err := ss.s.mapper.AppendChange(keys, acts, ch)
	if err != nil {
		var ue *UnboundError
		if errors.As(err, &ue) {
			return t.drop(m.xid, err)
		}
		return permanent(err)
	}
	ss.tables[m.relID].Change(ch.Op, len(keys)+len(acts)-before)
	return t.add(m.xid, keys, acts)
}

// Fixed costs of an event's entries besides their text, in EntryBytes: a
// string header, and an Action (whose strings' headers it holds).
const (
	keyOverhead    = int(unsafe.Sizeof(""))
	actionOverhead = int(unsafe.Sizeof(Action{}))
)

// EntryBytes is the memory that keys and acts hold, about: their text
// plus a fixed cost each. It is what Event.Size counts.
func EntryBytes(keys []string, acts []Action) int {
	n := len(keys)*keyOverhead + len(acts)*actionOverhead
	for _, k := range keys {
		n += len(k)
	}
	for i := range acts {
		a := &acts[i]
		n += len(a.Key) + len(a.Target) + len(a.Table) + len(a.Value)
	}
	return n
}

// emit hands an event to the sink. While the sink is busy (Redis slow or
// down) it keeps sending standby status updates, so the server does not
// time the connection out, and it never drops the event.
func (ss *session) emit(ev Event) error {
	if ev.End > ss.lastEnd {
		ss.s.pos.Handed(ev.End, ev.CommitTime)
	}
	if ev.Size > 0 && ss.s.queued()+ev.Size > ss.s.cfg.QueueBytes {
		if err := ss.waitQueue(ev.Size); err != nil {
			return err
		}
	}
	select {
	case ss.s.out <- ev:
	default:
		for {
			if err := ss.statusWhileWaiting(); err != nil {
				return err
			}
			select {
			case ss.s.out <- ev:
			case <-ss.ctx.Done():
				return ss.ctx.Err()
			case <-ss.timer.C:
				continue
			}
			break
		}
		// The loop did not listen while it waited for the sink: the
		// silence of the connection counts from now.
		ss.lastRecv = time.Now()
	}
	ss.s.wasSent(ev.Size)
	if ev.End > ss.lastEnd {
		ss.lastEnd = ev.End
	}
	return nil
}

// waitQueue waits until an event of size bytes fits in the queue's
// QueueBytes (or nothing is queued), sending status updates meanwhile. It
// looks again every millisecond: it waits only while the sink is busy with
// large events.
func (ss *session) waitQueue(size int) error {
	for len(ss.s.out) > 0 && ss.s.queued()+size > ss.s.cfg.QueueBytes {
		now := time.Now()
		if ss.rep.Due(now, ss.s.pos.Applied()) {
			if err := ss.sendStatus(now); err != nil {
				return err
			}
		}
		select {
		case <-ss.ctx.Done():
			return ss.ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	ss.lastRecv = time.Now() // the connection was not read meanwhile
	return nil
}

// statusWhileWaiting sends a standby status update if one is due and sets
// the timer to when the next one is, for a loop that waits on the sink.
func (ss *session) statusWhileWaiting() error {
	now := time.Now()
	if ss.rep.Due(now, ss.s.pos.Applied()) {
		if err := ss.sendStatus(now); err != nil {
			return err
		}
	}
	ss.timer.Reset(time.Until(ss.rep.Next(ss.s.pos.Applied())) + time.Millisecond)
	return nil
}

// await waits until ready is closed, sending standby status updates
// meanwhile (the server must not time the session out while the sink runs
// its checks, which may flush many keys).
func (ss *session) await(ready <-chan struct{}) error {
	for {
		if err := ss.statusWhileWaiting(); err != nil {
			return err
		}
		select {
		case <-ready:
			return nil
		case <-ss.ctx.Done():
			return ss.ctx.Err()
		case <-ss.timer.C:
		}
	}
}

// ErrConnectionDead is wrapped when the replication connection stayed
// silent for longer than deadAfter: the peer is gone but no FIN or RST
// came (a half-open TCP connection), which the kernel would notice only
// after many minutes.
var ErrConnectionDead = errors.New("replication connection is dead (half-open)")

// deadAfter is how long a connection may stay silent before it is taken
// for dead: twice wal_sender_timeout (the server sends keepalives at half
// of it, and answers a status update that asks for it at once), 2 minutes
// when the server's timeout is off, and never less than three status
// intervals.
func deadAfter(walSenderTimeout, statusInterval time.Duration) time.Duration {
	if walSenderTimeout <= 0 {
		walSenderTimeout = time.Minute
	}
	return max(2*walSenderTimeout, 3*statusInterval)
}

// walSenderTimeout reads the connection's wal_sender_timeout (0: off).
func walSenderTimeout(ctx context.Context, conn *pgconn.PgConn) (time.Duration, error) {
	res, err := conn.Exec(ctx, "SHOW wal_sender_timeout").ReadAll()
	if err != nil {
		return 0, fmt.Errorf("read wal_sender_timeout: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return 0, errors.New("read wal_sender_timeout: unexpected result")
	}
	d, err := parsePGDuration(string(res[0].Rows[0][0]))
	if err != nil {
		return 0, fmt.Errorf("read wal_sender_timeout: %w", err)
	}
	return d, nil
}

// parsePGDuration parses a time setting as SHOW prints it: an integer with
// a unit (us, ms, s, min, h, d), or without one (milliseconds, the unit of
// wal_sender_timeout). A negative value is an error.
func parsePGDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 || i > 12 {
		return 0, fmt.Errorf("%q is not a duration PostgreSQL prints", s)
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration PostgreSQL prints", s)
	}
	units := map[string]time.Duration{"": time.Millisecond, "us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "min": time.Minute, "h": time.Hour, "d": 24 * time.Hour}
	unit, ok := units[strings.TrimSpace(s[i:])]
	if !ok {
		return 0, fmt.Errorf("%q has a unit PostgreSQL does not print", s)
	}
	if n > int64(1<<62)/int64(unit) {
		return 0, fmt.Errorf("%q is too long", s)
	}
	return time.Duration(n) * unit, nil
}

func serverVersion(ctx context.Context, conn *pgconn.PgConn) (int, error) {
	res, err := conn.Exec(ctx, "SHOW server_version_num").ReadAll()
	if err != nil {
		return 0, fmt.Errorf("read server_version_num: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return 0, errors.New("read server_version_num: unexpected result")
	}
	v, err := strconv.Atoi(string(res[0].Rows[0][0]))
	if err != nil {
		return 0, fmt.Errorf("read server_version_num: %w", err)
	}
	return v, nil
}

// slotActiveError says another process streams from the slot: this engine
// waits as a standby and takes over when the slot is free.
type slotActiveError struct{ slot, pid string }

func (e *slotActiveError) Error() string {
	return fmt.Sprintf("replication slot %q is active for PID %s (another cdcinvalidate or consumer streams from it)", e.slot, e.pid)
}

// ErrSlotMissing says the replication slot does not exist (any more).
var ErrSlotMissing = errors.New("replication slot does not exist")

// slotState reads the slot's confirmed position and the PID streaming from it.
// The slot name was validated as an identifier, so it can be quoted literally.
func slotState(ctx context.Context, conn *pgconn.PgConn, slot string) (LSN, string, error) {
	q := "SELECT confirmed_flush_lsn, coalesce(active_pid::text, '') FROM pg_replication_slots WHERE slot_name = '" + strings.ReplaceAll(slot, "'", "''") + "'"
	res, err := conn.Exec(ctx, q).ReadAll()
	if err != nil {
		return 0, "", fmt.Errorf("read state of slot %q: %w", slot, err)
	}
	if len(res) != 1 || len(res[0].Rows) == 0 {
		return 0, "", permanent(fmt.Errorf("%w: slot %q is gone (dropped by someone else?). Changes since it was "+
			"dropped are lost to it, so cached keys may be stale: flush the managed keys in Redis, then restart "+
			"cdcinvalidate to create the slot again", ErrSlotMissing, slot))
	}
	row := res[0].Rows[0]
	if row[0] == nil {
		return 0, "", permanent(fmt.Errorf("slot %q has no confirmed position: is it a physical slot? use a logical slot with plugin pgoutput", slot))
	}
	lsn, err := pglogrepl.ParseLSN(string(row[0]))
	if err != nil {
		return 0, "", fmt.Errorf("parse confirmed position of slot %q: %w", slot, err)
	}
	return lsn, string(row[1]), nil
}
