package replication

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
)

// txnBuffer holds the keys of one streamed (in-progress) transaction until
// its Stream Commit: they must not be applied earlier, since a reader could
// refill a key from the old row before the transaction commits. Entries
// stay in memory until the session's budget is spent, then the whole buffer
// moves to an unlinked temporary file, so memory stays bounded for
// transactions of any size.
type txnBuffer struct {
	xid     uint32
	entries []bufEntry
	bytes   int // memory accounted to this buffer
	aborted map[uint32]bool

	file *os.File
	w    *bufio.Writer
	n    int // entries written to file

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
}

type entryKind uint8

const (
	entryKey entryKind = iota
	entryGlob
	entryAction
)

const entryOverhead = 40 // approximate bytes of a bufEntry besides its text

func (b *txnBuffer) add(e bufEntry, budget *int, spillDir string) error {
	if b.file == nil {
		cost := len(e.text) + entryOverhead
		if *budget >= cost {
			*budget -= cost
			b.bytes += cost
			b.entries = append(b.entries, e)
			return nil
		}
		if err := b.spill(budget, spillDir); err != nil {
			return err
		}
	}
	return b.write(e)
}

func (b *txnBuffer) spill(budget *int, dir string) error {
	f, err := os.CreateTemp(dir, fmt.Sprintf("cdcinvalidate-txn-%d-*.spill", b.xid))
	if err != nil {
		return fmt.Errorf("spill transaction %d to disk: %w", b.xid, err)
	}
	// Unlinked at once: a crash leaves nothing behind; the open file stays usable.
	_ = os.Remove(f.Name())
	b.file = f
	b.w = bufio.NewWriterSize(f, 256<<10)
	for _, e := range b.entries {
		if err := b.write(e); err != nil {
			return err
		}
	}
	*budget += b.bytes
	b.bytes = 0
	b.entries = nil
	return nil
}

func (b *txnBuffer) write(e bufEntry) error {
	var hdr [9]byte
	binary.BigEndian.PutUint32(hdr[0:], e.subXid)
	hdr[4] = byte(e.kind)
	binary.BigEndian.PutUint32(hdr[5:], uint32(len(e.text)))
	if _, err := b.w.Write(hdr[:]); err != nil {
		return fmt.Errorf("spill transaction %d: %w", b.xid, err)
	}
	if _, err := b.w.WriteString(e.text); err != nil {
		return fmt.Errorf("spill transaction %d: %w", b.xid, err)
	}
	b.n++
	return nil
}

// abortSub drops the entries of one aborted subtransaction (ROLLBACK TO SAVEPOINT).
func (b *txnBuffer) abortSub(subXid uint32) {
	if b.aborted == nil {
		b.aborted = map[uint32]bool{}
	}
	b.aborted[subXid] = true
}

// each calls fn for every entry of committed subtransactions, in order.
func (b *txnBuffer) each(fn func(e bufEntry) error) error {
	if b.file == nil {
		for _, e := range b.entries {
			if b.aborted[e.subXid] {
				continue
			}
			if err := fn(e); err != nil {
				return err
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
	r := bufio.NewReaderSize(b.file, 256<<10)
	var hdr [9]byte
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
		e := bufEntry{subXid: binary.BigEndian.Uint32(hdr[0:]), kind: entryKind(hdr[4])}
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

// release frees the buffer's memory budget and its file.
func (b *txnBuffer) release(budget *int) {
	*budget += b.bytes
	b.bytes = 0
	b.entries = nil
	if b.file != nil {
		_ = b.file.Close()
		b.file = nil
	}
}
