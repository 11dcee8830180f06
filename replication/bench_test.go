package replication

import "testing"

// BenchmarkDecodeUpdate measures decoding one pgoutput UPDATE with an old
// image: the per-change cost of the receive loop before mapping.
func BenchmarkDecodeUpdate(b *testing.B) {
	data := updateMsg(false, 'O')
	var d decoder
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := d.decode(data, false); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeInsert(b *testing.B) {
	data := insertMsg(false)
	var d decoder
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.decode(data, false); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTxnBufferAdd measures buffering one key of a streamed
// transaction in memory: a copy into a chunk, no allocation per key.
func BenchmarkTxnBufferAdd(b *testing.B) {
	budget := 1 << 30
	buf := &txnBuffer{xid: 1}
	defer buf.release(&budget)
	e := bufEntry{subXid: 1, text: "item:1234567"}
	dir := b.TempDir()
	b.ReportAllocs()
	for b.Loop() {
		if err := buf.add(e, &budget, dir); err != nil {
			b.Fatal(err)
		}
	}
}
