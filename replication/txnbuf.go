package replication

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
)

// txnBuffer holds the keys and actions of one streamed (in-progress)
// transaction until its Stream Commit: they must not be applied earlier,
// since a reader could refill a key from the old row before the transaction
// commits.
//
// Entries are kept as records (subtransaction, kind, length, text) in
// chunks of bytes, the same encoding the spill file uses, so the memory a
// buffer holds is exactly what it charged to the session's budget: no
// per-entry headers or pointers (which the garbage collector would scan),
// no slice growth that doubles, no string that pins a larger block. When
// the budget cannot pay for the next chunk, the whole buffer moves to an
// unlinked temporary file, so memory stays bounded for transactions of any
// size and width (a 100-column row of TOASTed text costs its bytes, not an
// entry count).
type txnBuffer struct {
	xid     uint32
	chunks  [][]byte // the memory part: records, in order
	bytes   int      // memory charged to the budget: the chunks' capacity
	n       int      // records added (in memory or in the file)
	aborted map[uint32]bool

	file *os.File
	w    *bufio.Writer

	// binds are the relations whose last description in this
	// transaction did not bind, with the error and the subtransaction.
	binds map[uint32]bindFailure
	// dropped are changes left unmapped because of such a failure.
	dropped []bindFailure
}

type bindFailure struct {
	subXid uint32
	err    error
}

// failBind records that relation relID, as subtransaction subXid
// described it, does not fit the rules: the transaction must not commit
// unnoticed.
func (b *txnBuffer) failBind(subXid, relID uint32, err error) {
	if b.binds == nil {
		b.binds = map[uint32]bindFailure{}
	}
	b.binds[relID] = bindFailure{subXid: subXid, err: err}
}

// dropChange records that a change of subtransaction subXid could not be
// mapped because of err: the transaction must not commit unnoticed unless
// that subtransaction aborts.
func (b *txnBuffer) dropChange(subXid uint32, err error) {
	if n := len(b.dropped); n > 0 && b.dropped[n-1].subXid == subXid && b.dropped[n-1].err == err {
		return
	}
	b.dropped = append(b.dropped, bindFailure{subXid: subXid, err: err})
}

// clearBind forgets a failure: the relation was described again and fits.
func (b *txnBuffer) clearBind(relID uint32) { delete(b.binds, relID) }

// bindErrs returns the failures of subtransactions that did not abort.
func (b *txnBuffer) bindErrs() []error {
	var out []error
	for _, id := range slices.Sorted(maps.Keys(b.binds)) {
		if f := b.binds[id]; !b.aborted[f.subXid] {
			out = append(out, f.err)
		}
	}
	for _, f := range b.dropped {
		if !b.aborted[f.subXid] && !slices.Contains(out, f.err) {
			out = append(out, f.err)
		}
	}
	return out
}

type bufEntry struct {
	subXid uint32
	kind   entryKind
	text   string // a key, a pattern, or an Action encoded by appendAction
	// more says that the next entry belongs to the same change or message:
	// replayed, they go in one event (as in a plain transaction).
	more bool
}

type entryKind uint8

const (
	entryKey entryKind = iota
	entryGlob
	entryAction
)

// moreFlag marks, in a record's kind byte, an entry that bufEntry.more
// says is followed by more of its change.
const moreFlag = 0x80

func (e bufEntry) kindByte() byte {
	if e.more {
		return byte(e.kind) | moreFlag
	}
	return byte(e.kind)
}

func entryOf(subXid uint32, kind byte) bufEntry {
	return bufEntry{subXid: subXid, kind: entryKind(kind &^ moreFlag), more: kind&moreFlag != 0}
}

// A record is a 9-byte header (subtransaction, kind, text length) and the
// text, in memory and in the spill file alike.
const recordHeader = 9

// Memory chunks start small (a transaction of a few keys costs little) and
// double up to maxChunk; a record larger than the next chunk gets a chunk
// of its own size. Full-size chunks live outside the Go heap on Linux
// (newChunk).
const (
	firstChunk = 1 << 10
	maxChunk   = 64 << 10
)

// spillBufferSize is the size of the writer and the reader of a spill file
// (outside the budget: one each per spilled transaction being written or
// read).
const spillBufferSize = 64 << 10

func recordSize(e bufEntry) int { return recordHeader + len(e.text) }

func appendRecord(dst []byte, e bufEntry) []byte {
	dst = binary.BigEndian.AppendUint32(dst, e.subXid)
	dst = append(dst, e.kindByte())
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(e.text)))
	return append(dst, e.text...)
}

// add appends e, charging the memory it takes to budget (shared by the
// session's open transactions) or, once the budget cannot pay for it,
// spilling the buffer to a file in spillDir.
func (b *txnBuffer) add(e bufEntry, budget *int, spillDir string) error {
	if uint64(len(e.text)) > maxRecordText {
		return fmt.Errorf("buffer transaction %d: an entry of %d bytes is larger than %d", b.xid, len(e.text), maxRecordText)
	}
	if b.file == nil {
		size := recordSize(e)
		if last := len(b.chunks) - 1; last >= 0 && cap(b.chunks[last])-len(b.chunks[last]) >= size {
			b.chunks[last] = appendRecord(b.chunks[last], e)
			b.n++
			return nil
		}
		c := firstChunk
		if last := len(b.chunks) - 1; last >= 0 {
			c = min(2*cap(b.chunks[last]), maxChunk)
		}
		c = max(c, size)
		if c > *budget {
			c = size // the budget is nearly spent: a chunk of just this record
		}
		if *budget >= c {
			*budget -= c
			b.bytes += c
			b.chunks = append(b.chunks, appendRecord(newChunk(c), e))
			b.n++
			return nil
		}
		if err := b.spill(budget, spillDir); err != nil {
			return err
		}
	}
	if err := b.write(e); err != nil {
		return err
	}
	b.n++
	return nil
}

// maxRecordText is the largest text a record holds (its length field).
const maxRecordText = 1<<32 - 1

// spill moves the memory part to an unlinked temporary file and gives its
// memory back to the budget.
func (b *txnBuffer) spill(budget *int, dir string) error {
	f, err := os.CreateTemp(dir, fmt.Sprintf("cdcinvalidate-txn-%d-*.spill", b.xid))
	if err != nil {
		return fmt.Errorf("spill transaction %d to disk: %w", b.xid, err)
	}
	// Unlinked at once: a crash leaves nothing behind; the open file stays usable.
	_ = os.Remove(f.Name())
	b.file = f
	b.w = bufio.NewWriterSize(f, spillBufferSize)
	for _, c := range b.chunks {
		if _, err := b.w.Write(c); err != nil {
			return fmt.Errorf("spill transaction %d: %w", b.xid, err)
		}
	}
	b.freeChunks(budget)
	return nil
}

func (b *txnBuffer) write(e bufEntry) error {
	var hdr [recordHeader]byte
	binary.BigEndian.PutUint32(hdr[0:], e.subXid)
	hdr[4] = e.kindByte()
	binary.BigEndian.PutUint32(hdr[5:], uint32(len(e.text)))
	if _, err := b.w.Write(hdr[:]); err != nil {
		return fmt.Errorf("spill transaction %d: %w", b.xid, err)
	}
	if _, err := b.w.WriteString(e.text); err != nil {
		return fmt.Errorf("spill transaction %d: %w", b.xid, err)
	}
	return nil
}

// abortSub drops the entries of one aborted subtransaction (ROLLBACK TO SAVEPOINT).
func (b *txnBuffer) abortSub(subXid uint32) {
	if b.aborted == nil {
		b.aborted = map[uint32]bool{}
	}
	b.aborted[subXid] = true
}

var errBadRecord = errors.New("malformed record")

// each calls fn for every entry of committed subtransactions, in order.
// It can run again (a retried commit sees the same entries).
func (b *txnBuffer) each(fn func(e bufEntry) error) error {
	if b.file == nil {
		for _, c := range b.chunks {
			for len(c) > 0 {
				if len(c) < recordHeader {
					return fmt.Errorf("read buffered transaction %d: %w", b.xid, errBadRecord)
				}
				n := int(binary.BigEndian.Uint32(c[5:]))
				if n > len(c)-recordHeader {
					return fmt.Errorf("read buffered transaction %d: %w", b.xid, errBadRecord)
				}
				e := entryOf(binary.BigEndian.Uint32(c), c[4])
				text := c[recordHeader : recordHeader+n]
				c = c[recordHeader+n:]
				if b.aborted[e.subXid] {
					continue
				}
				e.text = string(text)
				if err := fn(e); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := b.w.Flush(); err != nil {
		return fmt.Errorf("spill transaction %d: %w", b.xid, err)
	}
	if _, err := b.file.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read spilled transaction %d: %w", b.xid, err)
	}
	r := bufio.NewReaderSize(b.file, spillBufferSize)
	var hdr [recordHeader]byte
	var text []byte
	for i := 0; i < b.n; i++ {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return fmt.Errorf("read spilled transaction %d: %w", b.xid, err)
		}
		n := binary.BigEndian.Uint32(hdr[5:])
		if cap(text) < int(n) {
			text = make([]byte, n)
		}
		text = text[:n]
		if _, err := io.ReadFull(r, text); err != nil {
			return fmt.Errorf("read spilled transaction %d: %w", b.xid, err)
		}
		e := entryOf(binary.BigEndian.Uint32(hdr[0:]), hdr[4])
		if b.aborted[e.subXid] {
			continue
		}
		e.text = string(text)
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// freeChunks gives the memory part back, to the budget and to the system.
func (b *txnBuffer) freeChunks(budget *int) {
	for _, c := range b.chunks {
		freeChunk(c)
	}
	*budget += b.bytes
	b.bytes = 0
	b.chunks = nil
}

// release frees the buffer's memory budget and its file.
func (b *txnBuffer) release(budget *int) {
	b.freeChunks(budget)
	if b.file != nil {
		_ = b.file.Close()
		b.file = nil
	}
}
