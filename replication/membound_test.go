package replication

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// wideRow is a refreshed row of 100 columns, five of them TOASTed text of
// 8 KiB: about 42 KB of JSON.
func wideRow(i int) Action {
	var b strings.Builder
	b.WriteString(`{"id":`)
	fmt.Fprint(&b, i)
	for c := range 99 {
		fmt.Fprintf(&b, `,"c%d":`, c)
		if c%20 == 0 {
			b.WriteString(`"` + strings.Repeat("t", 8<<10) + `"`)
		} else {
			fmt.Fprintf(&b, "%d", c*i)
		}
	}
	b.WriteString("}")
	return Action{Kind: ActSet, Op: OpUpdate, Key: fmt.Sprintf("item:%d", i), Value: b.String(), TTL: time.Minute}
}

// wideMapper maps every change to one refreshed wide row.
type wideMapper struct{ n int }

func (m *wideMapper) Bind(*Relation) error { return nil }
func (m *wideMapper) AppendChange(keys []string, acts []Action, _ *Change) ([]string, []Action, error) {
	m.n++
	return keys, append(acts, wideRow(m.n)), nil
}
func (m *wideMapper) AppendTruncate(globs []string, acts []Action, _ *Relation) ([]string, []Action) {
	return globs, acts
}

// A streamed transaction of wide rows holds at most its budget in memory,
// whatever the number of entries: the memory is charged by bytes, and the
// heap grows by about the budget, not by the transaction.
func TestTxnBufferWideRowsByteBound(t *testing.T) {
	const start = 1 << 20
	const rows = 400 // about 17 MB of rows
	budget := start
	b := &txnBuffer{xid: 9}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heap0 := ms.HeapAlloc
	var enc []byte
	peak := 0
	dir := t.TempDir()
	for i := range rows {
		a := wideRow(i)
		enc = appendAction(enc[:0], &a)
		if err := b.add(bufEntry{subXid: 9, kind: entryAction, text: string(enc)}, &budget, dir); err != nil {
			t.Fatal(err)
		}
		if budget < 0 || b.bytes+budget != start {
			t.Fatalf("row %d: budget %d + buffer %d != %d", i, budget, b.bytes, start)
		}
		peak = max(peak, b.bytes)
		if i == rows/2 {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			// The budget, the spill writer and one row of slack.
			if grown := int64(ms.HeapAlloc) - int64(heap0); grown > start+spillBufferSize+256<<10 {
				t.Errorf("heap grew by %d bytes half-way through %d wide rows with a budget of %d", grown, rows, start)
			}
		}
	}
	if b.file == nil || peak > start {
		t.Fatalf("spilled %v, peak memory %d: want a spill and at most %d in memory", b.file != nil, peak, start)
	}
	n := 0
	err := b.each(func(e bufEntry) error {
		a, err := parseAction([]byte(e.text))
		if err != nil {
			return err
		}
		if want := wideRow(n); a != want {
			return fmt.Errorf("row %d differs", n)
		}
		n++
		return nil
	})
	if err != nil || n != rows {
		t.Fatalf("each: %v after %d rows, want %d", err, n, rows)
	}
	b.release(&budget)
	if budget != start {
		t.Errorf("budget after release %d", budget)
	}
}

// The records of many small keys take their bytes and a 9-byte header,
// charged as whole chunks: 100,000 keys of 12 bytes cost about 2.1 MB,
// not an entry struct and a string each.
func TestTxnBufferKeysChargedByBytes(t *testing.T) {
	t.Parallel()
	budget := 64 << 20
	b := &txnBuffer{xid: 1}
	dir := t.TempDir()
	for i := range 100000 {
		if err := b.add(bufEntry{subXid: 1, text: fmt.Sprintf("item:%07d", i)}, &budget, dir); err != nil {
			t.Fatal(err)
		}
	}
	records := 100000 * (recordHeader + 12)
	if b.bytes < records || b.bytes > records+maxChunk {
		t.Errorf("charged %d bytes for %d bytes of records", b.bytes, records)
	}
	b.release(&budget)
}

// boundSession is a session without a server that maps with m.
func boundSession(t *testing.T, m Mapper, out chan Event) *session {
	t.Helper()
	// The tests read the events after the transaction: the queue's byte
	// bound (TestQueueBoundedByBytes) would wait for a sink.
	s := New(Config{SpillDir: t.TempDir(), QueueBytes: 1 << 30}, m, fixedPositions{}, out)
	return newSession(context.Background(), s)
}

// checkEvents reads the events of one transaction of rows wide rows and
// checks that each holds at most ChunkBytes plus one row.
func checkEvents(t *testing.T, out chan Event, rows int) {
	t.Helper()
	row := EntryBytes(nil, []Action{wideRow(1)})
	got, events := 0, 0
	for got < rows {
		select {
		case ev := <-out:
			events++
			if ev.Size != EntryBytes(ev.Keys, ev.Actions) {
				t.Errorf("event %d: Size %d, its entries hold %d", events, ev.Size, EntryBytes(ev.Keys, ev.Actions))
			}
			if ev.Size > 128<<10+row {
				t.Errorf("event %d holds %d bytes (%d rows), want at most ChunkBytes plus one row", events, ev.Size, len(ev.Actions))
			}
			got += len(ev.Actions)
		default:
			t.Fatalf("%d rows in %d events, want %d rows", got, events, rows)
		}
	}
	if events < rows*row/(128<<10+row) {
		t.Errorf("%d rows in %d events", rows, events)
	}
}

// A large transaction of wide refreshed rows is handed over in events
// bounded by bytes, long before ChunkKeys rows.
func TestLargeTransactionEventsBoundedByBytes(t *testing.T) {
	t.Parallel()
	out := make(chan Event, 1000)
	ss := boundSession(t, &wideMapper{}, out)
	const rows = 100
	for _, data := range [][]byte{beginMsg(), relationMsg(false)} {
		if err := ss.handleMessage(data); err != nil {
			t.Fatal(err)
		}
	}
	for range rows {
		if err := ss.handleMessage(insertMsg(false)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ss.handleMessage(commitMsg()); err != nil {
		t.Fatal(err)
	}
	checkEvents(t, out, rows)
}

// The same for a streamed transaction at its commit.
func TestStreamedCommitEventsBoundedByBytes(t *testing.T) {
	t.Parallel()
	out := make(chan Event, 1000)
	ss := boundSession(t, &wideMapper{}, out)
	const rows = 100
	for _, data := range [][]byte{streamStartMsg(true), relationMsg(true)} {
		if err := ss.handleMessage(data); err != nil {
			t.Fatal(err)
		}
	}
	for range rows {
		if err := ss.handleMessage(insertMsg(true)); err != nil {
			t.Fatal(err)
		}
	}
	for _, data := range [][]byte{streamStopMsg(), streamCommitMsg()} {
		if err := ss.handleMessage(data); err != nil {
			t.Fatal(err)
		}
	}
	checkEvents(t, out, rows)
}

// The events waiting for the sink are bounded by bytes (QueueBytes): many
// small transactions may queue, large events do not pile up.
func TestQueueBoundedByBytes(t *testing.T) {
	t.Parallel()
	out := make(chan Event, 100)
	ss := boundSession(t, &wideMapper{}, out)
	ss.s.cfg.QueueBytes = 300 << 10
	ss.rep.Interval, ss.rep.Prompt = time.Hour, time.Hour
	ss.rep.Sent(time.Now(), 0) // no status update due: the session has no server
	big := Event{Keys: []string{"k"}, Size: 128 << 10}
	for range 2 {
		if err := ss.emit(big); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- ss.emit(big) }()
	select {
	case err := <-done:
		t.Fatalf("a third event of 128 KiB was queued behind 256 KiB with QueueBytes 300 KiB (err %v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	<-out // the sink takes one
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the event was not queued after the sink took one")
	}
	<-out
	<-out
	// Small events fill the channel's count, not its bytes.
	for i := range 100 {
		if err := ss.emit(Event{Keys: []string{"k"}, Size: 100}); err != nil {
			t.Fatalf("small event %d: %v", i, err)
		}
	}
	if got := ss.s.queued(); got != 100*100 {
		t.Errorf("queued() = %d, want %d", got, 100*100)
	}
}
