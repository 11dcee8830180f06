package replication

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func entries(t *testing.T, b *txnBuffer) []bufEntry {
	t.Helper()
	var out []bufEntry
	if err := b.each(func(e bufEntry) error { out = append(out, e); return nil }); err != nil {
		t.Fatalf("each: %v", err)
	}
	return out
}

func spillFiles(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func TestTxnBufferInMemory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const start = 10000
	budget := start
	b := &txnBuffer{xid: 7}
	want := []bufEntry{
		{subXid: 7, text: "user:1"},
		{subXid: 7, kind: entryGlob, text: "user:*"},
		{subXid: 8, text: ""},
		{subXid: 7, text: "ünï\x00code"},
	}
	for _, e := range want {
		if err := b.add(e, &budget, dir); err != nil {
			t.Fatal(err)
		}
	}
	cost := firstChunk // the records fit in the first chunk, charged whole
	if b.file != nil {
		t.Fatal("spilled under budget")
	}
	if budget != start-cost || b.bytes != cost {
		t.Errorf("budget %d bytes %d, want %d and %d", budget, b.bytes, start-cost, cost)
	}
	if got := entries(t, b); !slices.Equal(got, want) {
		t.Errorf("each = %+v, want %+v", got, want)
	}
	// each can run again (a retried commit sees the same entries).
	if got := entries(t, b); !slices.Equal(got, want) {
		t.Errorf("second each = %+v, want %+v", got, want)
	}
	if names := spillFiles(t, dir); len(names) != 0 {
		t.Errorf("files in the spill dir: %q", names)
	}
	b.release(&budget)
	if budget != start {
		t.Errorf("budget after release = %d, want %d", budget, start)
	}
}

func TestTxnBufferExactBudget(t *testing.T) {
	t.Parallel()
	budget := 2 * (3 + recordHeader)
	b := &txnBuffer{xid: 1}
	for _, s := range []string{"abc", "def"} {
		if err := b.add(bufEntry{subXid: 1, text: s}, &budget, t.TempDir()); err != nil {
			t.Fatal(err)
		}
	}
	if b.file != nil || budget != 0 {
		t.Errorf("file %v budget %d: a budget spent exactly must not spill", b.file, budget)
	}
	b.release(&budget)
}

func TestTxnBufferSpill(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const start = 1000
	budget := start
	b := &txnBuffer{xid: 42}
	var want []bufEntry
	for i := range 200 {
		e := bufEntry{subXid: 42 + uint32(i%3), kind: entryKind(min(i%7, 1)), text: fmt.Sprintf("key:%d:%s", i, strings.Repeat("x", i%50))}
		if err := b.add(e, &budget, dir); err != nil {
			t.Fatal(err)
		}
		want = append(want, e)
	}
	if b.file == nil {
		t.Fatal("not spilled past the budget")
	}
	// Spilling gave the memory back.
	if budget != start || b.bytes != 0 || b.chunks != nil {
		t.Errorf("after spill: budget %d (want %d) bytes %d entries %d", budget, start, b.bytes, len(b.chunks))
	}
	// The file is unlinked: nothing in the directory, yet it stays readable.
	if names := spillFiles(t, dir); len(names) != 0 {
		t.Errorf("spill file visible in the spill dir: %q", names)
	}
	if _, err := os.Stat(b.file.Name()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat %s = %v, want not exist", b.file.Name(), err)
	}
	if !strings.HasPrefix(filepath.Base(b.file.Name()), "cdcinvalidate-txn-42-") {
		t.Errorf("spill file name %q", b.file.Name())
	}
	if got := entries(t, b); !slices.Equal(got, want) {
		t.Errorf("each returned %d entries, want %d in order", len(got), len(want))
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				t.Errorf("first difference at %d: %+v, want %+v", i, got[i], want[i])
				break
			}
		}
	}
	// each can run again and reads the file from its start.
	if got := entries(t, b); !slices.Equal(got, want) {
		t.Errorf("second each differs")
	}
	f := b.file
	b.release(&budget)
	if budget != start {
		t.Errorf("budget after release = %d, want %d", budget, start)
	}
	if b.file != nil {
		t.Error("file kept after release")
	}
	if _, err := f.Stat(); err == nil {
		t.Error("spill file still open after release")
	}
}

// The memory part of a buffer is written to the file first, so entries
// come back in the order they were added.
func TestTxnBufferSpillKeepsMemoryEntriesFirst(t *testing.T) {
	t.Parallel()
	budget := 3 * (10 + recordHeader)
	b := &txnBuffer{xid: 3}
	var want []bufEntry
	for i := range 5 {
		e := bufEntry{subXid: 3, text: fmt.Sprintf("key:%06d", i)} // 10 bytes
		if err := b.add(e, &budget, t.TempDir()); err != nil {
			t.Fatal(err)
		}
		want = append(want, e)
		if i == 2 && b.file != nil {
			t.Fatal("spilled before the budget was spent")
		}
	}
	if b.file == nil {
		t.Fatal("not spilled")
	}
	if got := entries(t, b); !slices.Equal(got, want) {
		t.Errorf("each = %+v, want %+v", got, want)
	}
	b.release(&budget)
}

func TestTxnBufferAbortSub(t *testing.T) {
	t.Parallel()
	for _, spill := range []bool{false, true} {
		t.Run(fmt.Sprintf("spill=%v", spill), func(t *testing.T) {
			t.Parallel()
			budget := 1 << 20
			if spill {
				budget = 100
			}
			start := budget
			b := &txnBuffer{xid: 10}
			var want []bufEntry
			for i := range 30 {
				sub := uint32(10 + i%3) // 10 is the top transaction, 11 and 12 subtransactions
				e := bufEntry{subXid: sub, text: fmt.Sprintf("k%d", i)}
				if err := b.add(e, &budget, t.TempDir()); err != nil {
					t.Fatal(err)
				}
				if sub != 11 {
					want = append(want, e)
				}
			}
			if (b.file != nil) != spill {
				t.Fatalf("spilled = %v, want %v", b.file != nil, spill)
			}
			b.abortSub(11)
			b.abortSub(99) // unknown subtransaction: no effect
			if got := entries(t, b); !slices.Equal(got, want) {
				t.Errorf("each after abortSub(11) = %+v, want %+v", got, want)
			}
			b.release(&budget)
			if budget != start {
				t.Errorf("budget after release = %d, want %d", budget, start)
			}
		})
	}
}

// Two buffers share one session budget.
func TestTxnBufferSharedBudget(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// a's first chunk, and one record for b.
	const start = firstChunk + 1 + recordHeader
	budget := start
	a, b := &txnBuffer{xid: 1}, &txnBuffer{xid: 2}
	for _, x := range []*txnBuffer{a, a, b} {
		if err := x.add(bufEntry{subXid: x.xid, text: "k"}, &budget, dir); err != nil {
			t.Fatal(err)
		}
	}
	if budget != 0 || a.file != nil || b.file != nil {
		t.Fatalf("budget %d", budget)
	}
	// b is the one that overflows: it spills, a stays in memory.
	if err := b.add(bufEntry{subXid: 2, text: "k2"}, &budget, dir); err != nil {
		t.Fatal(err)
	}
	if a.file != nil || b.file == nil {
		t.Errorf("a spilled %v b spilled %v, want false true", a.file != nil, b.file != nil)
	}
	if budget != 1+recordHeader {
		t.Errorf("budget = %d, want %d", budget, 1+recordHeader)
	}
	if got := entries(t, b); len(got) != 2 || got[0].text != "k" || got[1].text != "k2" {
		t.Errorf("b entries %+v", got)
	}
	a.release(&budget)
	b.release(&budget)
	if budget != start {
		t.Errorf("budget after both releases = %d, want %d", budget, start)
	}
}

func TestTxnBufferSpillDirError(t *testing.T) {
	t.Parallel()
	budget := 0
	b := &txnBuffer{xid: 5}
	err := b.add(bufEntry{subXid: 5, text: "k"}, &budget, filepath.Join(t.TempDir(), "missing"))
	if err == nil || !strings.Contains(err.Error(), "spill transaction 5") {
		t.Errorf("add with a missing spill dir = %v, want an error naming the transaction", err)
	}
	b.release(&budget)
	if budget != 0 {
		t.Errorf("budget = %d", budget)
	}
}

func TestTxnBufferEachStopsOnError(t *testing.T) {
	t.Parallel()
	for _, budget0 := range []int{1 << 20, 0} {
		budget := budget0
		b := &txnBuffer{xid: 1}
		for i := range 5 {
			if err := b.add(bufEntry{subXid: 1, text: fmt.Sprint(i)}, &budget, t.TempDir()); err != nil {
				t.Fatal(err)
			}
		}
		stop := errors.New("stop")
		n := 0
		err := b.each(func(bufEntry) error {
			n++
			if n == 2 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || n != 2 {
			t.Errorf("budget %d: each = %v after %d calls, want stop after 2", budget0, err, n)
		}
		b.release(&budget)
	}
}

// An entry's mark that more of its change follows survives the buffer, in
// memory and spilled, and leaves the kind as it was.
func TestTxnBufferKeepsMoreMark(t *testing.T) {
	t.Parallel()
	want := []bufEntry{
		{subXid: 1, kind: entryKey, text: "k1", more: true},
		{subXid: 1, kind: entryAction, text: "a1"},
		{subXid: 1, kind: entryGlob, text: "g:*", more: true},
		{subXid: 1, kind: entryGlob, text: "h:*"},
	}
	for _, budget := range []int{1 << 20, 0} {
		b := &txnBuffer{xid: 1}
		dir := t.TempDir()
		for _, e := range want {
			if err := b.add(e, &budget, dir); err != nil {
				t.Fatal(err)
			}
		}
		if got := entries(t, b); !slices.Equal(got, want) {
			t.Errorf("spilled %v: entries %+v, want %+v", b.file != nil, got, want)
		}
		b.release(&budget)
	}
}
