package writebehind

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/internal/retry"
)

// Defaults of WriterOptions (and of the flusher's Stream).
const (
	DefaultStream      = "writebehind"
	DefaultMaxLen      = 1_000_000
	DefaultBlockMax    = 5 * time.Second
	DefaultWaitTimeout = time.Second
	// DefaultMaxBatch is also the upper limit: XADD gets two values per
	// op through Lua's unpack, which takes about 8000.
	DefaultMaxBatch = 1000
	// DefaultMaxInFlight is how many combined script calls one Writer
	// keeps in flight at once.
	DefaultMaxInFlight = 4
	// DefaultTokenTTL is how long Redis remembers a call's token.
	DefaultTokenTTL = time.Minute
)

const (
	blockPauseFirst    = time.Millisecond
	blockPauseMax      = 100 * time.Millisecond
	replyFull          = 0
	replyOK            = 1
	replyReplayed      = 2
	refusedReplyPrefix = "WBREFUSED "
	modeLetterAdd      = 'a'
	modeLetterSet      = 's'
)

// Errors of the write path. Match them with errors.Is.
var (
	// ErrBacklogFull: the stream holds MaxLen entries (the flusher is
	// behind or PostgreSQL is down); nothing was written. Retry later, or
	// raise MaxLen if Redis has the memory.
	ErrBacklogFull = errors.New("writebehind: backlog full: the stream holds MaxLen unflushed entries; nothing was written (is the flusher running and PostgreSQL up?)")
	// ErrUnmapped: no mapping's key template matches the key.
	ErrUnmapped = errors.New("writebehind: no mapping matches the key")
	// ErrWrongMode: Incr on a Set mapping, or Set on an Add mapping.
	ErrWrongMode = errors.New("writebehind: the key's mapping has the other mode")
	// ErrNotReplicated: the write is in Redis (and will be flushed), but
	// fewer than WaitReplicas replicas acknowledged it within WaitTimeout:
	// a failover now could lose it.
	ErrNotReplicated = errors.New("writebehind: written, but not acknowledged by WaitReplicas replicas in time")
	// ErrRefused: Redis refused the batch (e.g. the key holds a value that
	// is not an integer, or an increment would overflow); nothing was
	// written.
	ErrRefused = errors.New("writebehind: refused by Redis; nothing was written")
)

// FullPolicy says what a write does when the stream is at MaxLen.
type FullPolicy int

const (
	// FullError returns ErrBacklogFull at once.
	FullError FullPolicy = iota
	// FullBlock retries (1ms, doubling up to 100ms) until the stream has
	// room, the context ends, or BlockMax has passed (then ErrBacklogFull).
	FullBlock
)

// WriterOptions configures a Writer. A zero field takes the default its
// comment states.
type WriterOptions struct {
	// Stream is the Redis stream key the writes are appended to; the
	// flusher must read the same. Default "writebehind".
	Stream string
	// MaxLen caps the stream's length in entries (one entry per Incr, Set
	// or Apply call). At the cap a write does not happen: see OnFull.
	// Default 1,000,000. The flusher trims what it has applied, so the
	// stream holds only the backlog; size Redis for MaxLen entries of your
	// batch size.
	MaxLen int64
	// OnFull is FullError (default) or FullBlock.
	OnFull FullPolicy
	// BlockMax bounds the wait of FullBlock. Default 5s.
	BlockMax time.Duration
	// WaitReplicas, when positive, makes every write wait (Redis WAIT) for
	// that many replicas to acknowledge it; fewer within WaitTimeout gives
	// ErrNotReplicated. Default 0 (no waiting).
	WaitReplicas int
	// WaitTimeout bounds WAIT. Default 1s.
	WaitTimeout time.Duration
	// MaxBatch is the most operations one Apply may carry (one script call,
	// one stream entry). Default 1000, also the upper limit.
	MaxBatch int
	// NoCombine makes every Incr and Set its own script call and stream
	// entry. By default, concurrent Incr and Set calls are combined: the
	// calls queue, and up to MaxInFlight of them at a time (callers, not
	// background goroutines) send what is queued, up to MaxBatch
	// operations, as one script call. Each call still returns only after
	// Redis executed its own operation, with its own result or error. A
	// combined call is not atomic with the others in it: when Redis
	// refuses one operation, the others are sent again on their own.
	NoCombine bool
	// MaxInFlight bounds the combined script calls in flight at once.
	// Default 4.
	MaxInFlight int
	// TokenTTL is how long Redis remembers each script call's token
	// (a key next to the stream, holding the entry ID): a retry of the
	// call within it is not executed again. It must exceed the time the
	// client can spend retrying one command (go-redis: MaxRetries times
	// ReadTimeout plus backoff) and, with ApplyOnce, the caller's own
	// retries. Each token costs Redis about 100 bytes for that time: at
	// 2,000 script calls a second, 1 minute is some 12 MB. Default 1m.
	TokenTTL time.Duration
	// Logger receives nothing on the hot path; refusals are returned.
	// Default: no logging.
	Logger *zap.Logger
}

func (o *WriterOptions) fill() error {
	var c optChecker
	if o.Stream == "" {
		o.Stream = DefaultStream
	}
	count(&c, "MaxLen", &o.MaxLen, DefaultMaxLen)
	if o.OnFull != FullError && o.OnFull != FullBlock {
		c.bad("OnFull must be FullError or FullBlock")
	}
	c.duration("BlockMax", &o.BlockMax, DefaultBlockMax)
	if o.WaitReplicas < 0 {
		c.bad("WaitReplicas must not be negative (got %d)", o.WaitReplicas)
	}
	c.duration("WaitTimeout", &o.WaitTimeout, DefaultWaitTimeout)
	if o.MaxBatch > DefaultMaxBatch {
		c.bad("MaxBatch must be at most %d (got %d)", DefaultMaxBatch, o.MaxBatch)
	}
	count(&c, "MaxBatch", &o.MaxBatch, DefaultMaxBatch)
	count(&c, "MaxInFlight", &o.MaxInFlight, DefaultMaxInFlight)
	c.duration("TokenTTL", &o.TokenTTL, DefaultTokenTTL)
	if o.TokenTTL > 0 && o.TokenTTL < time.Millisecond {
		c.bad("TokenTTL must be at least 1ms (got %s)", o.TokenTTL)
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return c.err("writer")
}

// Op is one operation of Apply: build it with IncrOp or SetOp.
type Op struct {
	key   string
	value string
	mode  Mode
}

// IncrOp adds delta to key (an Add mapping's key).
func IncrOp(key string, delta int64) Op {
	return Op{key: key, value: strconv.FormatInt(delta, 10), mode: Add}
}

// SetOp sets key (a Set mapping's key) to value.
func SetOp(key, value string) Op { return Op{key: key, value: value, mode: Set} }

// Writer writes to Redis and appends each write to the stream in one
// script; the flusher carries the writes to PostgreSQL. It is safe for
// concurrent use and holds no goroutines (combined calls are sent by their
// callers).
type Writer struct {
	rdb       redis.UniversalClient
	opt       WriterOptions
	mappings  []compiled
	tokPrefix string // the stream, the token infix, this Writer's random part
	tokSeq    atomic.Uint64
	tokenTTL  int64 // ms; 0 only in the unsafe test setting
	comb      combiner

	// Stats are the writer's running totals.
	Stats WriterStats
}

// WriterStats are running totals of a Writer.
type WriterStats struct {
	// Writes are acknowledged script calls (each one stream entry).
	Writes atomic.Uint64
	// Ops are acknowledged operations (Incr and Set count one each).
	Ops atomic.Uint64
	// Full are writes that found the stream at MaxLen (each attempt of a
	// blocked write counts).
	Full atomic.Uint64
	// NotReplicated are writes WAIT did not confirm in time.
	NotReplicated atomic.Uint64
	// Replayed are script calls Redis had already executed (a retry after
	// a lost reply, or ApplyOnce with a known id): not executed again.
	Replayed atomic.Uint64
}

// NewWriter returns a Writer for mappings (which the flusher must share).
func NewWriter(rdb redis.UniversalClient, mappings []Mapping, opt WriterOptions) (*Writer, error) {
	if rdb == nil {
		return nil, errors.New("writebehind: no redis client")
	}
	if err := opt.fill(); err != nil {
		return nil, err
	}
	ms, err := compileMappings(mappings)
	if err != nil {
		return nil, fmt.Errorf("writebehind: %w", err)
	}
	w := &Writer{rdb: rdb, opt: opt, mappings: ms, tokenTTL: opt.TokenTTL.Milliseconds()}
	w.tokPrefix = opt.Stream + tokenInfix + rand.Text()[:16] + ":"
	if unsafeNoToken.Load() {
		w.tokenTTL = 0
	}
	w.comb.w = w
	return w, nil
}

// Incr adds delta to the counter key and returns its new value in Redis.
// It returns once Redis has executed the write and appended it to the
// stream (and, with WaitReplicas, once replicas have it): from then on the
// flusher adds it to the column exactly once. An error other than
// ErrNotReplicated means nothing was written, except when the connection
// failed after sending (a timeout, a reset), when the write may or may not
// have happened, as with any remote call. Retries of the client (go-redis
// MaxRetries) are safe: each script call carries a token, and Redis
// executes a token once.
//
// Concurrent Incr and Set calls are combined into shared script calls (see
// WriterOptions.NoCombine); each returns when its own write is done, with
// its own result or error.
func (w *Writer) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	op := IncrOp(key, delta)
	if w.opt.NoCombine {
		res, err := w.Apply(ctx, op)
		if len(res) == 1 {
			return res[0], err
		}
		return 0, err
	}
	return w.combined(ctx, op)
}

// Set sets key to value in Redis; the flusher writes the last value of
// each window to the column. See Incr for when it returns.
func (w *Writer) Set(ctx context.Context, key, value string) error {
	op := SetOp(key, value)
	if w.opt.NoCombine {
		_, err := w.Apply(ctx, op)
		return err
	}
	_, err := w.combined(ctx, op)
	return err
}

// Apply performs ops atomically (all or none) as one script and one stream
// entry, and returns one result per op: the new value of an increment, 0
// for a set. Batching many ops in one Apply is how one process absorbs
// hundreds of thousands of increments a second.
func (w *Writer) Apply(ctx context.Context, ops ...Op) ([]int64, error) {
	return w.apply(ctx, w.nextToken(), ops)
}

// ApplyOnce is Apply with the caller's own idempotency id: of all calls
// with the same id within WriterOptions.TokenTTL, only the first writes.
// A later one changes nothing and returns the keys' current values (an
// increment's value as it is now, not as the first call left it) and a
// nil error. Use it to retry a call whose outcome is unknown (a timeout):
// retry with the same id until it returns nil. id must be unique per
// logical write across every writer of the stream (a UUID, or a request
// id).
func (w *Writer) ApplyOnce(ctx context.Context, id string, ops ...Op) ([]int64, error) {
	if id == "" {
		return nil, errors.New("writebehind: ApplyOnce needs a non-empty id")
	}
	return w.apply(ctx, w.opt.Stream+tokenInfix+"u:"+id, ops)
}

const tokenInfix = ":wbtok:"

// nextToken is a token key no other call uses: a random prefix per Writer
// and a counter.
func (w *Writer) nextToken() string {
	var b [64]byte
	t := append(b[:0], w.tokPrefix...)
	t = strconv.AppendUint(t, w.tokSeq.Add(1), 36)
	return string(t)
}

// check validates op against the mappings and returns its mode letter.
func (w *Writer) check(op Op) (byte, error) {
	m, err := lookup(w.mappings, op.key)
	if err != nil {
		return 0, err
	}
	if m.Mode != op.mode {
		return 0, fmt.Errorf("%w: %q is declared %s by %s, the call was %s", ErrWrongMode, op.key, m.Mode, m.Key, op.mode)
	}
	if op.mode == Add {
		if op.value == minInt64 {
			return 0, fmt.Errorf("writebehind: delta %s cannot be undone and is refused", op.value)
		}
		return modeLetterAdd, nil
	}
	return modeLetterSet, nil
}

var minInt64 = strconv.FormatInt(math.MinInt64, 10)

func (w *Writer) apply(ctx context.Context, token string, ops []Op) ([]int64, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	if len(ops) > w.opt.MaxBatch {
		return nil, fmt.Errorf("writebehind: %d operations in one Apply, more than MaxBatch (%d): split the batch", len(ops), w.opt.MaxBatch)
	}
	b := w.newBatch(token, len(ops))
	for _, op := range ops {
		letter, err := w.check(op)
		if err != nil {
			return nil, err
		}
		b.add(op.key, op.value, letter)
	}
	out := make([]int64, len(ops))
	if err := w.exec(ctx, b, out); err != nil {
		if errors.Is(err, ErrNotReplicated) {
			return out, err
		}
		return nil, err
	}
	return out, nil
}

// batch is the arguments of one script call.
type batch struct {
	keys  []string
	args  []any
	modes []byte
}

func (w *Writer) newBatch(token string, n int) *batch {
	b := &batch{keys: make([]string, 2, 2+n), args: make([]any, 3, 3+n), modes: make([]byte, 0, n)}
	b.keys[0], b.keys[1] = w.opt.Stream, token
	b.args[0], b.args[1] = w.opt.MaxLen, w.tokenTTL
	if w.tokenTTL == 0 {
		b.keys[1] = w.opt.Stream // no token (the unsafe test setting): any key of the stream's slot
	}
	return b
}

func (b *batch) add(key, value string, letter byte) {
	b.keys = append(b.keys, key)
	b.args = append(b.args, value)
	b.modes = append(b.modes, letter)
}

func (b *batch) len() int { return len(b.modes) }

// exec runs b (blocking while the stream is full, with FullBlock) and puts
// one result per op into out. With ErrNotReplicated, out is filled too.
func (w *Writer) exec(ctx context.Context, b *batch, out []int64) error {
	b.args[2] = string(b.modes)
	n := b.len()
	pause := blockPauseFirst
	var deadline time.Time
	for {
		res, wait, err := w.run(ctx, b.keys, b.args)
		if err != nil {
			return err
		}
		if len(res) == 2 && asInt(res[0]) == replyFull {
			w.Stats.Full.Add(1)
			if w.opt.OnFull == FullError {
				return fmt.Errorf("%w (stream %s, length %d, MaxLen %d)", ErrBacklogFull, w.opt.Stream, asInt(res[1]), w.opt.MaxLen)
			}
			if deadline.IsZero() {
				deadline = time.Now().Add(w.opt.BlockMax)
			}
			if time.Now().Add(pause).After(deadline) {
				return fmt.Errorf("%w (stream %s, waited %s)", ErrBacklogFull, w.opt.Stream, w.opt.BlockMax)
			}
			if err := retry.Sleep(ctx, pause); err != nil {
				return err
			}
			pause = min(2*pause, blockPauseMax)
			continue
		}
		status := int64(-1)
		if len(res) == 2+n {
			status = asInt(res[0])
		}
		if status != replyOK && status != replyReplayed {
			return fmt.Errorf("writebehind: unexpected reply from the write script: %v", res)
		}
		for i := range n {
			out[i] = asInt(res[2+i])
		}
		if status == replyReplayed {
			w.Stats.Replayed.Add(1)
		} else {
			w.Stats.Writes.Add(1)
			w.Stats.Ops.Add(uint64(n))
		}
		if wait != nil {
			return w.checkWait(wait)
		}
		return nil
	}
}

// run runs the write script; with WaitReplicas, WAIT follows it in one
// pipeline (one connection, as WAIT requires) and its answer is returned.
func (w *Writer) run(ctx context.Context, keys []string, args []any) ([]any, *waitResult, error) {
	if w.opt.WaitReplicas == 0 {
		res, err := writeScript.Run(ctx, w.rdb, keys, args...).Slice()
		return res, nil, classify(err)
	}
	for attempt := 0; ; attempt++ {
		var eval *redis.Cmd
		var wait *redis.IntCmd
		_, err := w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			eval = writeScript.EvalSha(ctx, p, keys, args...)
			wait = redis.NewIntCmd(ctx, "wait", w.opt.WaitReplicas, w.opt.WaitTimeout.Milliseconds())
			_ = p.Process(ctx, wait)
			return nil
		})
		if err != nil && redis.HasErrorPrefix(eval.Err(), "NOSCRIPT") && attempt == 0 {
			if lerr := writeScript.Load(ctx, w.rdb).Err(); lerr != nil {
				return nil, nil, fmt.Errorf("writebehind: load write script: %w", lerr)
			}
			continue
		}
		res, err := eval.Slice()
		if err != nil {
			return nil, nil, classify(err)
		}
		n, werr := wait.Result()
		return res, &waitResult{n: n, err: werr}, nil
	}
}

type waitResult struct {
	n   int64
	err error
}

func (w *Writer) checkWait(r *waitResult) error {
	if r.err != nil {
		w.Stats.NotReplicated.Add(1)
		return fmt.Errorf("%w: WAIT: %v", ErrNotReplicated, r.err)
	}
	if r.n < int64(w.opt.WaitReplicas) {
		w.Stats.NotReplicated.Add(1)
		return fmt.Errorf("%w: %d of %d replicas within %s", ErrNotReplicated, r.n, w.opt.WaitReplicas, w.opt.WaitTimeout)
	}
	return nil
}

// classify turns the script's refusal into ErrRefused and wraps the rest.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if msg := err.Error(); strings.Contains(msg, refusedReplyPrefix) {
		_, detail, _ := strings.Cut(msg, refusedReplyPrefix)
		return fmt.Errorf("%w: %s", ErrRefused, detail)
	}
	return fmt.Errorf("writebehind: write: %w", err)
}

func asInt(v any) int64 {
	switch n := v.(type) {
	case int64:
		return n
	case int:
		return int64(n)
	case string: // a replayed call's current value
		if i, err := strconv.ParseInt(n, 10, 64); err == nil {
			return i
		}
	}
	return -1
}
