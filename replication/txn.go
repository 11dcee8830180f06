package replication

import (
	"fmt"
	"maps"
	"time"
	"unsafe"

	"go.uber.org/zap"
)

// openTxn is the transaction whose messages the session is reading. The
// session maps each message once and hands its effects over in the
// transaction's order; the two kinds of transaction differ only in when
// those effects reach the sink:
//
//   - memTxn, a plain transaction: pgoutput sends it only after it
//     committed, so its effects go to the sink in parts as they come
//     (bounded by ChunkKeys and ChunkBytes); the position moves at its
//     Commit.
//   - streamTxn, a streamed (in-progress, protocol 2) transaction: its
//     effects are buffered (spilled to disk past the budget) and replayed
//     through the same parts at its Stream Commit; an aborted
//     subtransaction drops its own.
//
// Either way the events are the same: a part holds whole changes, patterns
// go in an event of their own after everything before them, and the last
// event carries the transaction's end. subXid is the subtransaction of the
// message (the transaction itself outside streaming).
type openTxn interface {
	// appendTo returns the slices to append one change's or message's
	// keys and actions to; add takes them back, before any other call
	// (a plain transaction's are the part being gathered).
	appendTo() ([]string, []Action)
	// add takes back the slices of appendTo with the keys and actions of
	// one change or message appended (its keys go first).
	add(subXid uint32, keys []string, acts []Action) error
	// addGlobs adds SCAN patterns that cover every key of a table: what
	// came before them is applied first, what comes after, after.
	addGlobs(subXid uint32, globs []string) error
	// drop says that a change could not be mapped because of err: a plain
	// transaction skips it if the start-up flush covered it and fails
	// otherwise; a streamed one decides at its commit (the subtransaction
	// may abort).
	drop(subXid uint32, err error) error
	// described is told whether the rules fit a table the transaction
	// described (err nil) or not.
	described(subXid uint32, rel *Relation, err error) error
	// Each kind's commit (memTxn.commit at Commit, streamTxn.commit at
	// Stream Commit) hands over the rest, with the transaction's end.
}

// addActions adds actions as one message of t.
func addActions(t openTxn, subXid uint32, acts []Action) error {
	k, a := t.appendTo()
	return t.add(subXid, k, append(a, acts...))
}

// part gathers one transaction's keys and actions into events of about
// ChunkKeys entries or ChunkBytes: an event goes to the sink once the
// change that filled it is in it, before patterns, and at the commit.
type part struct {
	ss   *session
	lsn  LSN // commit LSN of the transaction
	keys []string
	acts []Action
	size int // EntryBytes of keys and acts
	// The blocks the next events' slices are carved from.
	keyBlock []string
	actBlock []Action
}

// entryBlock is how many keys, or actions, one allocation holds for the
// events carved from it. Without it, every event grew its slices from
// nothing (1, 2, 4, 8 actions for a row under several actions: four
// allocations, copies and more GC for each single-row transaction). Only
// what events use counts in their Size; the rest of a block is at most
// entryBlock entries (26 KiB of actions) per session.
const entryBlock = 256

// carve returns an empty slice whose capacity is the unused rest of
// *block, after a fresh block when little is left.
func carve[T any](block *[]T) []T {
	if len(*block) < entryBlock/8 {
		*block = make([]T, entryBlock)
	}
	return (*block)[:0]
}

// take returns s, carved by carve from *block and appended to, capped at
// its length (no append through an event's slice reaches the next
// event's entries), and moves *block past it. A slice that outgrew its
// block was reallocated by append and leaves the block as it was.
func take[T any](block *[]T, s []T) []T {
	n := len(s)
	if n == 0 {
		return nil
	}
	if len(*block) > 0 && unsafe.SliceData(s) == unsafe.SliceData(*block) {
		*block = (*block)[n:]
	}
	return s[:n:n]
}

// appendTo is memTxn.appendTo: the slices of the event being gathered,
// carved from the blocks when it has none yet.
func (p *part) appendTo() ([]string, []Action) {
	if p.keys == nil {
		p.keys = carve(&p.keyBlock)
	}
	if p.acts == nil {
		p.acts = carve(&p.actBlock)
	}
	return p.keys, p.acts
}

// grown takes back p's slices with one change's entries appended.
func (p *part) grown(keys []string, acts []Action) error {
	p.size += EntryBytes(keys[min(len(p.keys), len(keys)):], acts[min(len(p.acts), len(acts)):])
	p.keys, p.acts = keys, acts
	if len(keys)+len(acts) >= p.ss.s.cfg.ChunkKeys || p.size >= p.ss.s.cfg.ChunkBytes {
		// The transaction is committed (or replayed at its commit), so
		// its keys may be applied before its end; the position only
		// moves at the end.
		return p.end(0, time.Time{})
	}
	return nil
}

// globs hands over what was gathered, then the patterns.
func (p *part) globs(globs []string) error {
	if len(globs) == 0 {
		return nil
	}
	if err := p.end(0, time.Time{}); err != nil {
		return err
	}
	return p.ss.emit(Event{Globs: globs, LSN: p.lsn})
}

// end hands over what was gathered, as the transaction's last event if
// end is not 0.
func (p *part) end(end LSN, commitTime time.Time) error {
	ev := Event{Keys: take(&p.keyBlock, p.keys), Actions: take(&p.actBlock, p.acts), LSN: p.lsn, End: end, CommitTime: commitTime, Size: p.size}
	p.keys, p.acts, p.size = nil, nil, 0
	if end == 0 && len(ev.Keys) == 0 && len(ev.Actions) == 0 {
		return nil
	}
	return p.ss.emit(ev)
}

// memTxn is a plain transaction (see openTxn).
type memTxn struct {
	part
	skipped error // the error of the last change skipped, logged as a warning once
}

func (t *memTxn) begin(lsn LSN) { t.lsn = lsn }

func (t *memTxn) add(_ uint32, keys []string, acts []Action) error { return t.grown(keys, acts) }

func (t *memTxn) addGlobs(_ uint32, globs []string) error { return t.globs(globs) }

func (t *memTxn) drop(_ uint32, err error) error {
	if !t.ss.s.covered(err, t.lsn) {
		return permanent(err)
	}
	log := t.ss.s.log.Debug
	if err != t.skipped {
		t.skipped = err
		log = t.ss.s.log.Warn
	}
	logCoveredSkip(log, t.lsn, err)
	return nil
}

// logCoveredSkip logs changes skipped because the flush at this start
// covered them (Stream.covered).
func logCoveredSkip(log func(string, ...zap.Field), lsn LSN, err error) {
	log("skipping changes of a table the rules knew under another name: the flush at this start deleted its keys after they committed",
		zap.Stringer("commit_lsn", lsn), zap.Error(err))
}

func (t *memTxn) described(subXid uint32, _ *Relation, err error) error {
	if err == nil {
		return nil
	}
	return t.drop(subXid, err)
}

func (t *memTxn) commit(lsn, end LSN, commitTime time.Time) error {
	t.lsn = lsn
	return t.end(end, commitTime)
}

// streamTxn is a streamed transaction (see openTxn).
type streamTxn struct {
	ss  *session
	xid uint32
	buf txnBuffer
}

func (t *streamTxn) appendTo() ([]string, []Action) { return t.ss.scratchKeys, t.ss.scratchActs }

func (t *streamTxn) add(subXid uint32, keys []string, acts []Action) error {
	defer func() {
		clear(keys) // the arrays are kept for the next change: keep no text alive
		clear(acts)
		t.ss.scratchKeys, t.ss.scratchActs = keys[:0], acts[:0]
	}()
	n := len(keys) + len(acts)
	for i, k := range keys {
		if err := t.put(bufEntry{subXid: subXid, kind: entryKey, text: k, more: i < n-1}); err != nil {
			return err
		}
	}
	for i := range acts {
		t.ss.actBuf = appendAction(t.ss.actBuf[:0], &acts[i])
		// The buffer copies the record (into a chunk or the spill
		// writer) and keeps no reference to text: no string of it.
		text := unsafe.String(unsafe.SliceData(t.ss.actBuf), len(t.ss.actBuf))
		if err := t.put(bufEntry{subXid: subXid, kind: entryAction, text: text, more: len(keys)+i < n-1}); err != nil {
			return err
		}
	}
	return nil
}

func (t *streamTxn) addGlobs(subXid uint32, globs []string) error {
	for i, g := range globs {
		if err := t.put(bufEntry{subXid: subXid, kind: entryGlob, text: g, more: i < len(globs)-1}); err != nil {
			return err
		}
	}
	return nil
}

func (t *streamTxn) put(e bufEntry) error {
	return t.buf.add(e, &t.ss.budget, t.ss.s.cfg.SpillDir)
}

func (t *streamTxn) drop(subXid uint32, err error) error {
	t.buf.dropChange(subXid, err) // judged at commit
	return nil
}

func (t *streamTxn) described(subXid uint32, rel *Relation, err error) error {
	if err == nil {
		t.buf.clearBind(rel.ID)
		return nil
	}
	t.ss.badRels[rel.ID] = t
	t.buf.failBind(subXid, rel.ID, err)
	t.ss.s.log.Warn("a streamed transaction changed a table so that the rules no longer fit it; the engine stops if it commits",
		zap.Uint32("xid", t.xid), zap.String("table", rel.QualifiedName()), zap.Error(err))
	return nil
}

// commit judges the tables the transaction could not map, then replays
// its entries through a part as a plain transaction hands them over.
func (t *streamTxn) commit(lsn, end LSN, commitTime time.Time) error {
	defer t.release()
	for _, err := range t.buf.bindErrs() {
		if !t.ss.s.covered(err, lsn) {
			return permanent(fmt.Errorf("streamed transaction %d committed at %s: %w", t.xid, lsn, err))
		}
		logCoveredSkip(t.ss.s.log.Warn, lsn, err)
	}
	p := part{ss: t.ss, lsn: lsn}
	var keys []string
	var acts []Action
	var globs []string
	flush := func() error {
		err := p.grown(keys, acts)
		if err == nil && len(globs) > 0 {
			err = p.globs(globs)
			globs = nil
		}
		keys, acts = p.keys, p.acts
		return err
	}
	err := t.buf.each(func(e bufEntry) error {
		switch e.kind {
		case entryGlob:
			globs = append(globs, e.text)
		case entryAction:
			a, err := parseAction(e.text)
			if err != nil {
				return fmt.Errorf("read buffered transaction %d: %w", t.xid, err)
			}
			acts = append(acts, a)
		default:
			keys = append(keys, e.text)
		}
		if e.more {
			return nil
		}
		return flush()
	})
	if err == nil {
		err = flush() // nothing, unless the last change was cut short
	}
	if err != nil {
		return err
	}
	return p.end(end, commitTime)
}

// abort drops what subtransaction subXid buffered, or the whole
// transaction.
func (t *streamTxn) abort(subXid uint32) {
	if subXid != t.xid {
		t.buf.abortSub(subXid)
		return
	}
	t.release()
}

// release gives back the transaction's memory and file; it is closed.
func (t *streamTxn) release() {
	t.buf.release(&t.ss.budget)
	delete(t.ss.streams, t.xid)
	maps.DeleteFunc(t.ss.badRels, func(_ uint32, o *streamTxn) bool { return o == t })
}
