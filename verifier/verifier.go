// Package verifier measures, while the engine runs, that Redis agrees with
// the invalidations the engine applied: the online half of issue 14's
// consistency verifier (`cdcinvalidate verify` is the offline audit).
//
// The sink offers a deterministic sample of what Redis acknowledged (keys
// whose hash falls in 1 of Rate, so every change of a sampled key is seen).
// After each window (default 1 s, 60 s and 600 s) the verifier reads the key
// again and classifies it against the newest thing the engine did to it:
//
//   - absent: consistent (the next reader loads the row);
//   - newer: consistent and provably so (a version key at or above the
//     commit LSN, a refreshed value equal to the newest row the engine
//     wrote, a value the cacheaside library stamped with a watermark at or
//     above the invalidation: its load began after the delete);
//   - stale: provably not (a lower version, another refreshed value, a
//     fill the library stamped under a lease taken before a delete that
//     fenced it, a fill whose stamp bounds its snapshot before the
//     commit: the stale-set race); a suspect is read again
//     ConfirmAfter later and counted stale only if it still is, so a write
//     in flight is not reported;
//
// A reading is judged only against the writes it can contain: a stale
// one waits until the sink offered every batch it had begun to send when
// the read returned (Sending), since such a batch may have written the key
// already (a later part of a large transaction, at the same commit LSN,
// whose sample was not offered yet), and is read again if the key was
// written after it. A confirmation judges against the same invalidation as
// the first reading; when the key was invalidated again in between, the
// new reading is a new first sighting.
//   - unverifiable: present, and nothing in it tells (a value filled by code
//     that does not stamp, a fill stamped before the delete that may have
//     read the new row: its load began after the commit). Never counted
//     as consistent.
//
// Guarantees: Offer never blocks and never fails the sink; at most
// MaxPending checks wait (the rest are dropped and counted); reads are
// pipelined; nothing here is on the confirmation path.
package verifier

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// String names the kind for logs.
func (k Kind) String() string {
	switch k {
	case KindDelete:
		return "delete"
	case KindVersion:
		return "version"
	case KindRefresh:
		return "refresh"
	}
	return "unknown"
}

// Kind is what the engine did to a sampled key.
type Kind uint8

// Kinds of sampled invalidations.
const (
	// KindDelete: the key was deleted (UNLINK, DEL, or fenced).
	KindDelete Kind = iota + 1
	// KindVersion: the key is a version key raised to the commit LSN.
	KindVersion
	// KindRefresh: the key was set to Value (the row as JSON).
	KindRefresh
)

// Sample is one acknowledged invalidation of a sampled key.
type Sample struct {
	Key  string
	LSN  replication.LSN // commit LSN of its transaction
	Kind Kind
	// Floor is the highest watermark the engine had set before applying
	// this invalidation: a fill stamped below it began its load before.
	Floor replication.LSN
	Value string // KindRefresh: the value written
	// Leases (KindDelete): the delete fenced or deleted the key's lease
	// (client.leases), so no fill under a lease taken before it survives.
	Leases bool
	// OrderKey (KindRefresh) holds the commit LSN of the newest refresh
	// write any engine instance applied to Key (sink.OrderKey): a value
	// other than Value under an order LSN above LSN is a later row, not
	// an older one.
	OrderKey string
}

// Result is how a check ended.
type Result string

// Results of a check.
const (
	Absent       Result = "absent"
	Newer        Result = "newer"
	Stale        Result = "stale"
	Unverifiable Result = "unverifiable"
)

// Consistent reports whether r counts as consistent.
func (r Result) Consistent() bool { return r == Absent || r == Newer }

// Classify judges the value read from Redis (nil: absent) against the
// newest invalidation the engine applied to the key.
func Classify(latest Sample, val *string) Result { return ClassifyOrdered(latest, val, nil) }

// ClassifyOrdered is Classify with the value of the sample's OrderKey
// (nil: absent or not read). A refreshed value other than the one the
// engine wrote is newer, not stale, when the order key records a later
// commit: another engine instance (a standby that took over, while this
// one was frozen) or a later transaction wrote it.
func ClassifyOrdered(latest Sample, val, order *string) Result {
	if val == nil {
		return Absent
	}
	switch latest.Kind {
	case KindVersion:
		v, err := pglogrepl.ParseLSN(*val)
		if err != nil {
			return Unverifiable
		}
		if v >= latest.LSN {
			return Newer
		}
		return Stale
	case KindRefresh:
		if *val == latest.Value {
			return Newer
		}
		if order != nil {
			if o, err := pglogrepl.ParseLSN(*order); err == nil && o > latest.LSN {
				return Newer
			}
		}
		return Stale
	}
	// A deleted key that holds a value again: only a stamp tells when its
	// load began. The watermark reaches the commit LSN only after the
	// delete was acknowledged, and was at Floor before the delete was sent.
	// A load that began before the delete was sent may still have begun
	// after the commit and read the new row: it is stale only when its
	// lease was taken before the delete and the delete fenced it (the fill
	// survived an invalidation that should have refused it), or when its
	// snapshot provably preceded the commit.
	st, _, ok := cacheaside.ParseStampInfo([]byte(*val))
	switch {
	case !ok:
		return Unverifiable
	case st.Watermark >= uint64(latest.LSN):
		return Newer
	case st.LoadedBefore != 0 && st.LoadedBefore <= uint64(latest.LSN):
		// The WAL insert position after the snapshot had not passed the
		// commit record's start: the commit is not in the value.
		return Stale
	case st.Leased && latest.Leases && st.Watermark < uint64(latest.Floor):
		return Stale
	}
	return Unverifiable
}

// Reader reads keys from Redis in one round trip; nil is absent.
type Reader interface {
	GetMany(ctx context.Context, keys []string) ([]*string, error)
}

// Observer receives the checks' outcomes; the metrics implement it.
type Observer interface {
	// Checked reports one finished check of a sample taken window ago;
	// table and rule say where its key comes from ("" when unknown).
	Checked(window time.Duration, table, rule string, r Result)
	// Ratio reports the consistent share of the checks of a window so far.
	Ratio(window time.Duration, ratio float64)
	// StaleAge reports how old an invalidation was when its key was found stale.
	StaleAge(age time.Duration)
	// Dropped reports samples dropped because MaxPending checks waited.
	Dropped(n int)
}

// Labeler names the table and rule a key comes from.
type Labeler interface {
	Label(key string) (table, rule string)
}

// Options configure a Verifier.
type Options struct {
	// Rate samples 1 in Rate keys (default 1000; 1 samples every key).
	Rate uint64
	// Windows are the ages at which a sample is checked (default 1s, 60s, 600s).
	Windows []time.Duration
	// MaxPending bounds the checks that wait (default 10,000).
	MaxPending int
	// ConfirmAfter is when a suspected stale key is read again (default 1s).
	ConfirmAfter time.Duration
	Observer     Observer
	Labeler      Labeler
	// Report, when set, receives the figures every ReportEvery (default
	// 10s) from Run's goroutine (the engine stores them for `status`), and
	// once more when Run's context ends (with a context that is not
	// cancelled), so a stopped engine leaves its last figures.
	Report      func(ctx context.Context, figures []WindowFigures)
	ReportEvery time.Duration
	// OnStale, when set, is called from Run's goroutine for every check
	// counted stale: the key's newest sample (its key, kind and commit
	// LSN), the window and how long ago the checked invalidation was
	// applied. It must not block.
	OnStale func(s Sample, window, age time.Duration)
	// Now is the clock (default time.Now), for tests.
	Now func() time.Time
}

// Defaults of Options.
const (
	DefaultRate         = 1000
	DefaultMaxPending   = 10000
	DefaultConfirmAfter = time.Second
	DefaultReportEvery  = 10 * time.Second
)

// DefaultWindows are the default check ages.
var DefaultWindows = []time.Duration{time.Second, time.Minute, 10 * time.Minute}

// Verifier checks sampled invalidations. Create it with New; Run owns its
// goroutine's work, Offer and Sampled may be called from any goroutine.
type Verifier struct {
	opt Options
	rd  Reader
	in  chan offered

	// drops counts drop events; a batch carries the count it saw when
	// offered (see latestEntry.drops).
	drops atomic.Uint64
	// sending counts the sink's batches with samples that began to be
	// sent (Sending); an offer carries the count when it was made, so a
	// batch's offer carries its own number.
	sending atomic.Uint64

	labeler atomic.Pointer[Labeler]

	// Owned by Run.
	queues  []fifo // one per window, then the confirmations
	latest  map[string]*latestEntry
	pending int
	// accepted is the highest batch number (sending) among the accepted
	// offers: every batch up to it that succeeded was offered.
	accepted uint64
	// settling holds stale readings that a batch not yet offered may
	// have written (see settle).
	settling []settling

	mu      sync.Mutex
	figures []WindowFigures
}

type latestEntry struct {
	s    Sample
	refs int
	// drops is Verifier.drops when s was offered. If samples were dropped
	// since, a newer invalidation of the key may be among them, and s may
	// not be the newest thing the engine did to it: a stale reading is
	// then counted unverifiable (a large transaction that refreshes a key
	// twice, in two chunks, whose second sample was dropped, reads as
	// "another value at the same commit").
	drops uint64
	// seq is the batch number of s's offer (Verifier.sending), gen counts
	// the samples that became the key's newest.
	seq, gen uint64
}

// offered is a batch of samples, the drop count when it was offered and
// the sink's batch number (Verifier.sending) then.
type offered struct {
	samples []Sample
	drops   uint64
	seq     uint64
}

type check struct {
	s         Sample
	offer     time.Time
	due       time.Time
	window    int  // index into Windows
	confirmed bool // a stale reading was seen once already
	// gen is the key's latestEntry.gen at the first stale reading: the
	// confirmation must find the key stale against the same invalidation.
	gen uint64
	// sightings counts first stale readings against different
	// invalidations (the key was invalidated again before the
	// confirmation), rereads the readings that could not be judged.
	sightings, rereads int
}

// settling is a stale reading taken while batches up to seq had begun to
// be sent: it is judged once their offers arrived.
type settling struct {
	c          check
	val, order *string
	seq        uint64
	at         time.Time
}

// maxSightings bounds the first stale readings of one check against ever
// newer invalidations of a key that is invalidated again every
// ConfirmAfter: the last one is then counted as it reads.
const maxSightings = 4

// maxRereads bounds the readings of one check that could not be judged
// (the key written after the read, or a batch that was never offered);
// the check is then unverifiable.
const maxRereads = 8

// fifo is a queue of checks in due order.
type fifo struct{ items []check }

func (q *fifo) push(c check) { q.items = append(q.items, c) }
func (q *fifo) head() (check, bool) {
	if len(q.items) == 0 {
		return check{}, false
	}
	return q.items[0], true
}
func (q *fifo) pop() {
	q.items[0] = check{}
	q.items = q.items[1:]
	if len(q.items) == 0 {
		q.items = nil
	}
}

// WindowFigures are the totals of one window.
type WindowFigures struct {
	Window                             time.Duration
	Absent, Newer, Stale, Unverifiable uint64
	Dropped                            uint64 `json:",omitempty"`
}

// Checks is the number of finished checks.
func (f WindowFigures) Checks() uint64 { return f.Absent + f.Newer + f.Stale + f.Unverifiable }

// Ratio is the consistent share of the judged checks (1 with none).
func (f WindowFigures) Ratio() float64 {
	judged := f.Absent + f.Newer + f.Stale
	if judged == 0 {
		return 1
	}
	return float64(f.Absent+f.Newer) / float64(judged)
}

// New creates a verifier reading keys with rd.
func New(rd Reader, opt Options) *Verifier {
	if opt.Rate == 0 {
		opt.Rate = DefaultRate
	}
	if len(opt.Windows) == 0 {
		opt.Windows = DefaultWindows
	}
	if opt.MaxPending <= 0 {
		opt.MaxPending = DefaultMaxPending
	}
	if opt.ConfirmAfter <= 0 {
		opt.ConfirmAfter = DefaultConfirmAfter
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.ReportEvery <= 0 {
		opt.ReportEvery = DefaultReportEvery
	}
	v := &Verifier{opt: opt, rd: rd, in: make(chan offered, 256), latest: map[string]*latestEntry{},
		queues: make([]fifo, len(opt.Windows)+1)}
	for _, w := range opt.Windows {
		v.figures = append(v.figures, WindowFigures{Window: w})
	}
	if opt.Labeler != nil {
		v.SetLabeler(opt.Labeler)
	}
	return v
}

// SetLabeler replaces the labeler (after a rules reload); safe at any time.
func (v *Verifier) SetLabeler(l Labeler) { v.labeler.Store(&l) }

// Sampled reports whether key is in the sample: FNV-1a of the key, 1 in
// Rate. It allocates nothing.
func (v *Verifier) Sampled(key string) bool {
	if v.opt.Rate == 1 {
		return true
	}
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return h%v.opt.Rate == 0
}

// Sending tells the verifier that the sink begins to send a batch whose
// samples it will Offer once Redis acknowledged it (before the offer; one
// goroutine calls both). A reading taken meanwhile may hold the batch's
// writes without the verifier knowing them: it is judged only after the
// offer came. Sinks that never call it leave every reading judged at once.
func (v *Verifier) Sending() { v.sending.Add(1) }

// Offer hands over acknowledged samples, in commit order. It never blocks:
// when the verifier is behind, the samples are dropped and counted.
func (v *Verifier) Offer(samples []Sample) {
	if len(samples) == 0 {
		return
	}
	cp := make([]Sample, len(samples))
	copy(cp, samples)
	select {
	case v.in <- offered{cp, v.drops.Load(), v.sending.Load()}:
	default:
		v.drop(len(cp))
	}
}

func (v *Verifier) drop(n int) {
	v.drops.Add(1)
	if v.opt.Observer != nil {
		v.opt.Observer.Dropped(n)
	}
	v.mu.Lock()
	for i := range v.figures {
		v.figures[i].Dropped += uint64(n)
	}
	v.mu.Unlock()
}

// Figures returns the totals per window so far.
func (v *Verifier) Figures() []WindowFigures {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]WindowFigures(nil), v.figures...)
}

// Run checks samples until ctx ends. A failed read is retried at the next
// wake-up; it never stops the engine.
func (v *Verifier) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var report <-chan time.Time
	if v.opt.Report != nil {
		t := time.NewTicker(v.opt.ReportEvery)
		defer t.Stop()
		report = t.C
	}
	for {
		if due, ok := v.nextDue(); ok {
			timer.Reset(max(due.Sub(v.opt.Now()), 0))
		} else {
			timer.Reset(time.Hour)
		}
		select {
		case <-ctx.Done():
			if v.opt.Report != nil {
				fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				v.opt.Report(fctx, v.Figures())
				cancel()
			}
			return nil
		case b := <-v.in:
			v.accept(b.samples, b.drops, b.seq)
			v.settle(v.opt.Now())
		case <-timer.C:
			v.settle(v.opt.Now())
			v.checkDue(ctx)
		case <-report:
			v.opt.Report(ctx, v.Figures())
		}
	}
}

// accept queues a sample's checks, or drops it when MaxPending checks wait.
// drops is the drop count when the batch was offered, seq its batch number.
func (v *Verifier) accept(batch []Sample, drops, seq uint64) {
	now := v.opt.Now()
	v.accepted = max(v.accepted, seq)
	dropped := 0
	for _, s := range batch {
		if v.pending+len(v.opt.Windows) > v.opt.MaxPending {
			dropped++
			continue
		}
		e := v.latest[s.Key]
		if e == nil {
			e = &latestEntry{s: s, drops: drops, seq: seq}
			v.latest[s.Key] = e
		} else if s.LSN >= e.s.LSN {
			e.s, e.drops, e.seq = s, drops, seq
			e.gen++
		}
		for i, w := range v.opt.Windows {
			v.queues[i].push(check{s: s, offer: now, due: now.Add(w), window: i})
			e.refs++
			v.pending++
		}
	}
	if dropped > 0 {
		v.drop(dropped)
	}
}

func (v *Verifier) nextDue() (time.Time, bool) {
	var first time.Time
	found := false
	for i := range v.queues {
		if c, ok := v.queues[i].head(); ok && (!found || c.due.Before(first)) {
			first, found = c.due, true
		}
	}
	if len(v.settling) > 0 {
		// The oldest reading gives up waiting for its offers then.
		if d := v.settling[0].at.Add(v.opt.ConfirmAfter); !found || d.Before(first) {
			first, found = d, true
		}
	}
	return first, found
}

// settle judges the stale readings whose batches were all offered. A
// reading the key was written after (its newest sample came from a later
// batch) is obsolete, and one whose batches were not offered within
// ConfirmAfter (a batch that failed) cannot be judged: both are read
// again.
func (v *Verifier) settle(now time.Time) {
	if len(v.settling) == 0 {
		return
	}
	keep := v.settling[:0]
	for _, st := range v.settling {
		e := v.latest[st.c.s.Key]
		switch {
		case st.seq > v.accepted && now.Sub(st.at) < v.opt.ConfirmAfter:
			keep = append(keep, st)
		case st.seq > v.accepted || e.seq > st.seq:
			v.reread(st.c, now)
		default:
			v.judge(st.c, e, v.classify(e, st.val, st.order), now)
		}
	}
	clear(v.settling[len(keep):])
	v.settling = keep
}

// classify judges a reading of a key (and of its order key) against its
// newest sample.
func (v *Verifier) classify(e *latestEntry, val, order *string) Result {
	r := ClassifyOrdered(e.s, val, order)
	if r == Stale && v.drops.Load() != e.drops {
		// Samples were dropped since the key's newest one: a newer
		// invalidation of it may be among them, so nothing is proven.
		r = Unverifiable
	}
	return r
}

// reread reads a check again after ConfirmAfter: its reading could not
// be judged. After maxRereads it is unverifiable.
func (v *Verifier) reread(c check, now time.Time) {
	c.rereads++
	if c.rereads > maxRereads {
		v.finish(c, Unverifiable, now)
		return
	}
	c.due = now.Add(v.opt.ConfirmAfter)
	v.queues[len(v.opt.Windows)].push(c)
}

// judge ends a check with r, or queues its confirmation: a stale reading
// is read again ConfirmAfter later, and counted only if the key is still
// stale against the same invalidation.
func (v *Verifier) judge(c check, e *latestEntry, r Result, now time.Time) {
	if r == Stale && c.confirmed && c.gen != e.gen && c.sightings < maxSightings {
		// Invalidated again since the first reading: this reading is
		// the first against the new invalidation.
		c.confirmed = false
		c.sightings++
	}
	if r == Stale && !c.confirmed {
		c.due, c.confirmed, c.gen = now.Add(v.opt.ConfirmAfter), true, e.gen
		v.queues[len(v.opt.Windows)].push(c)
		return
	}
	if r == Stale && v.opt.OnStale != nil {
		// The newest sample of the key: what it was judged against.
		v.opt.OnStale(e.s, v.opt.Windows[c.window], now.Sub(c.offer))
	}
	v.finish(c, r, now)
}

// finish records a check's result and lets go of its sample.
func (v *Verifier) finish(c check, r Result, now time.Time) {
	v.record(c, r, now)
	e := v.latest[c.s.Key]
	e.refs--
	v.pending--
	if e.refs == 0 {
		delete(v.latest, c.s.Key)
	}
}

// checkDue reads every due key in one round trip and classifies it.
func (v *Verifier) checkDue(ctx context.Context) {
	now := v.opt.Now()
	confirm := len(v.opt.Windows)
	var due []check
	for i := range v.queues {
		for {
			c, ok := v.queues[i].head()
			if !ok || c.due.After(now) {
				break
			}
			v.queues[i].pop()
			due = append(due, c)
		}
	}
	if len(due) == 0 {
		return
	}
	keys := make([]string, 0, len(due))
	seen := make(map[string]int, len(due))
	for _, c := range due {
		for _, k := range [2]string{c.s.Key, v.latest[c.s.Key].s.OrderKey} {
			if _, ok := seen[k]; !ok && k != "" {
				seen[k] = len(keys)
				keys = append(keys, k)
			}
		}
	}
	vals, err := v.rd.GetMany(ctx, keys)
	// Batches up to this number may have written what was read.
	readSeq := v.sending.Load()
	if err != nil {
		// Redis failed: look again in a moment, as the same checks.
		for _, c := range due {
			c.due = now.Add(v.opt.ConfirmAfter)
			v.queues[confirm].push(c)
		}
		return
	}
	for _, c := range due {
		e := v.latest[c.s.Key]
		var order *string
		if i, ok := seen[e.s.OrderKey]; ok && e.s.OrderKey != "" {
			order = vals[i]
		}
		val := vals[seen[c.s.Key]]
		r := v.classify(e, val, order)
		if r == Stale && readSeq > v.accepted {
			// A batch begun before the read returned was not offered yet:
			// it may have written this value (a later part of the same
			// transaction reads as "another value at the same commit").
			v.settling = append(v.settling, settling{c: c, val: val, order: order, seq: readSeq, at: now})
			continue
		}
		v.judge(c, e, r, now)
	}
}

func (v *Verifier) record(c check, r Result, now time.Time) {
	w := v.opt.Windows[c.window]
	var table, rule string
	if l := v.labeler.Load(); l != nil {
		table, rule = (*l).Label(c.s.Key)
	}
	v.mu.Lock()
	f := &v.figures[c.window]
	switch r {
	case Absent:
		f.Absent++
	case Newer:
		f.Newer++
	case Stale:
		f.Stale++
	default:
		f.Unverifiable++
	}
	ratio := f.Ratio()
	v.mu.Unlock()
	if o := v.opt.Observer; o != nil {
		o.Checked(w, table, rule, r)
		o.Ratio(w, ratio)
		if r == Stale {
			o.StaleAge(now.Sub(c.offer))
		}
	}
}

// WindowLabel renders a window for metric labels and status: "1s", "60s".
func WindowLabel(w time.Duration) string {
	return strconv.FormatFloat(w.Seconds(), 'f', -1, 64) + "s"
}

// RuleLabeler labels keys by the globs of the rules' templates.
type RuleLabeler struct {
	entries []labelEntry
}

type labelEntry struct {
	glob, table, rule string
}

// Add names the table and rule of keys matching a Redis glob.
func (l *RuleLabeler) Add(glob, table, rule string) {
	l.entries = append(l.entries, labelEntry{glob, table, rule})
}

// Label returns the first matching rule, or "" "".
func (l *RuleLabeler) Label(key string) (string, string) {
	for _, e := range l.entries {
		if MatchGlob(e.glob, key) {
			return e.table, e.rule
		}
	}
	return "", ""
}

// MatchGlob matches a Redis glob made of literal text, '*' and '\'
// escapes (what mapping.Template.Glob produces); '?' matches one byte.
func MatchGlob(glob, s string) bool {
	// Iterative matching with backtracking to the last star.
	gi, si := 0, 0
	starG, starS := -1, 0
	for si < len(s) {
		if gi < len(glob) {
			switch c := glob[gi]; c {
			case '*':
				starG, starS = gi, si
				gi++
				continue
			case '?':
				gi++
				si++
				continue
			case '\\':
				if gi+1 < len(glob) && glob[gi+1] == s[si] {
					gi += 2
					si++
					continue
				}
			default:
				if c == s[si] {
					gi++
					si++
					continue
				}
			}
		}
		if starG < 0 {
			return false
		}
		starS++
		gi, si = starG+1, starS
	}
	for gi < len(glob) && glob[gi] == '*' {
		gi++
	}
	return gi == len(glob)
}
