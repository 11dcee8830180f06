package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// enc builds pgoutput messages as the protocol documents them
// (https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html).
type enc struct{ b []byte }

func msg(kind byte) *enc         { return &enc{b: []byte{kind}} }
func (e *enc) u8(v byte) *enc    { e.b = append(e.b, v); return e }
func (e *enc) u16(v uint16) *enc { e.b = binary.BigEndian.AppendUint16(e.b, v); return e }
func (e *enc) u32(v uint32) *enc { e.b = binary.BigEndian.AppendUint32(e.b, v); return e }
func (e *enc) u64(v uint64) *enc { e.b = binary.BigEndian.AppendUint64(e.b, v); return e }
func (e *enc) str(s string) *enc { e.b = append(append(e.b, s...), 0); return e }
func (e *enc) raw(p []byte) *enc { e.b = append(e.b, p...); return e }
func (e *enc) xid(in bool, x uint32) *enc {
	if in {
		e.u32(x)
	}
	return e
}

// tv is a test value: kind and, for 't' and 'b', data.
type tv struct {
	kind byte
	data string
}

func (e *enc) tuple(vs ...tv) *enc {
	e.u16(uint16(len(vs)))
	for _, v := range vs {
		e.u8(v.kind)
		if v.kind == 't' || v.kind == 'b' {
			e.u32(uint32(len(v.data)))
			e.b = append(e.b, v.data...)
		}
	}
	return e
}

const (
	testLSN    = 0x16_B374D848
	testEndLSN = 0x16_B374D900
	testXid    = 734
)

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)

func pgTime(t time.Time) uint64 { return uint64(t.Sub(pgEpoch) / time.Microsecond) }

func beginMsg() []byte {
	return msg('B').u64(testLSN).u64(pgTime(testTime)).u32(testXid).b
}

func commitMsg() []byte {
	return msg('C').u8(0).u64(testLSN).u64(testEndLSN).u64(pgTime(testTime)).b
}

func relationMsg(in bool) []byte {
	return msg('R').xid(in, testXid).u32(16384).str("public").str("users").u8('d').u16(3).
		u8(1).str("id").u32(23).u32(math.MaxUint32).
		u8(0).str("email").u32(25).u32(math.MaxUint32).
		u8(0).str("bio").u32(25).u32(math.MaxUint32).b
}

func insertMsg(in bool) []byte {
	return msg('I').xid(in, testXid).u32(16384).u8('N').tuple(tv{'t', "42"}, tv{'n', ""}, tv{'b', "\x00\x01"}).b
}

func updateMsg(in bool, oldKind byte) []byte {
	e := msg('U').xid(in, testXid).u32(16384)
	switch oldKind {
	case 'K':
		e.u8('K').tuple(tv{'t', "41"}, tv{'n', ""}, tv{'n', ""})
	case 'O':
		e.u8('O').tuple(tv{'t', "42"}, tv{'t', "old@x"}, tv{'t', "bio"})
	}
	return e.u8('N').tuple(tv{'t', "42"}, tv{'t', "new@x"}, tv{'u', ""}).b
}

func deleteMsg(in bool, oldKind byte) []byte {
	return msg('D').xid(in, testXid).u32(16384).u8(oldKind).tuple(tv{'t', "42"}, tv{'t', ""}, tv{'n', ""}).b
}

func truncateMsg(in bool) []byte {
	return msg('T').xid(in, testXid).u32(2).u8(1).u32(16384).u32(16390).b
}

func messageMsg(in bool) []byte {
	return msg('M').xid(in, testXid).u8(1).u64(testLSN).str("my.prefix").u32(5).raw([]byte("hello")).b
}

func originMsg() []byte { return msg('O').u64(testLSN).str("origin_1").b }

func typeMsg(in bool) []byte {
	return msg('Y').xid(in, testXid).u32(70000).str("public").str("mood").b
}

func streamStartMsg(first bool) []byte {
	f := byte(0)
	if first {
		f = 1
	}
	return msg('S').u32(testXid).u8(f).b
}

func streamStopMsg() []byte { return msg('E').b }

func streamCommitMsg() []byte {
	return msg('c').u32(testXid).u8(0).u64(testLSN).u64(testEndLSN).u64(pgTime(testTime)).b
}

func streamAbortMsg(sub uint32) []byte { return msg('A').u32(testXid).u32(sub).b }

// validMessages is every well-formed message the tests know, with whether it
// is decoded in a stream.
func validMessages() []struct {
	name     string
	data     []byte
	inStream bool
} {
	type m = struct {
		name     string
		data     []byte
		inStream bool
	}
	out := []m{
		{"begin", beginMsg(), false},
		{"commit", commitMsg(), false},
		{"origin", originMsg(), false},
		{"stream start", streamStartMsg(true), false},
		{"stream stop", streamStopMsg(), true},
		{"stream commit", streamCommitMsg(), false},
		{"stream abort", streamAbortMsg(735), false},
	}
	for _, in := range []bool{false, true} {
		out = append(out,
			m{"relation", relationMsg(in), in},
			m{"insert", insertMsg(in), in},
			m{"update", updateMsg(in, 0), in},
			m{"update K", updateMsg(in, 'K'), in},
			m{"update O", updateMsg(in, 'O'), in},
			m{"delete K", deleteMsg(in, 'K'), in},
			m{"delete O", deleteMsg(in, 'O'), in},
			m{"truncate", truncateMsg(in), in},
			m{"message", messageMsg(in), in},
			m{"type", typeMsg(in), in},
		)
	}
	return out
}

func decodeOK(t *testing.T, d *decoder, data []byte, inStream bool) *message {
	t.Helper()
	m, err := d.decode(data, inStream)
	if err != nil {
		t.Fatalf("decode(%q): %v", data, err)
	}
	return m
}

func wantValues(t *testing.T, what string, got Tuple, want ...tv) {
	t.Helper()
	if len(got.Values) != len(want) {
		t.Fatalf("%s has %d values, want %d", what, len(got.Values), len(want))
	}
	for i, w := range want {
		g := got.Values[i]
		if g.Kind != w.kind || string(g.Data) != w.data {
			t.Errorf("%s[%d] = {%q %q}, want {%q %q}", what, i, g.Kind, g.Data, w.kind, w.data)
		}
		if (w.kind == 'n' || w.kind == 'u') && g.Data != nil {
			t.Errorf("%s[%d] of kind %q has data %q", what, i, g.Kind, g.Data)
		}
	}
}

func TestDecodeTransactionMessages(t *testing.T) {
	t.Parallel()
	var d decoder

	m := decodeOK(t, &d, beginMsg(), false)
	if m.kind != 'B' || m.lsn != testLSN || m.xid != testXid || !m.time.Equal(testTime) {
		t.Errorf("begin = kind %q lsn %v xid %d time %v", m.kind, m.lsn, m.xid, m.time)
	}

	m = decodeOK(t, &d, commitMsg(), false)
	if m.kind != 'C' || m.lsn != testLSN || m.endLSN != testEndLSN || !m.time.Equal(testTime) || m.xid != 0 {
		t.Errorf("commit = kind %q lsn %v end %v time %v xid %d", m.kind, m.lsn, m.endLSN, m.time, m.xid)
	}

	m = decodeOK(t, &d, originMsg(), false)
	if m.kind != 'O' || m.lsn != testLSN || m.prefix != "origin_1" {
		t.Errorf("origin = kind %q lsn %v name %q", m.kind, m.lsn, m.prefix)
	}

	for _, first := range []bool{true, false} {
		m = decodeOK(t, &d, streamStartMsg(first), false)
		if m.kind != 'S' || m.xid != testXid || m.firstSegment != first {
			t.Errorf("stream start = kind %q xid %d first %v, want first %v", m.kind, m.xid, m.firstSegment, first)
		}
	}

	m = decodeOK(t, &d, streamStopMsg(), true)
	if m.kind != 'E' {
		t.Errorf("stream stop kind %q", m.kind)
	}

	m = decodeOK(t, &d, streamCommitMsg(), false)
	if m.kind != 'c' || m.xid != testXid || m.lsn != testLSN || m.endLSN != testEndLSN || !m.time.Equal(testTime) {
		t.Errorf("stream commit = kind %q xid %d lsn %v end %v time %v", m.kind, m.xid, m.lsn, m.endLSN, m.time)
	}

	m = decodeOK(t, &d, streamAbortMsg(735), false)
	if m.kind != 'A' || m.xid != testXid || m.subXid != 735 {
		t.Errorf("stream abort = kind %q xid %d subxid %d", m.kind, m.xid, m.subXid)
	}
	// Protocol version 4 appends the abort LSN and time.
	m = decodeOK(t, &d, msg('A').u32(testXid).u32(736).u64(testLSN).u64(pgTime(testTime)).b, false)
	if m.kind != 'A' || m.xid != testXid || m.subXid != 736 {
		t.Errorf("v4 stream abort = kind %q xid %d subxid %d", m.kind, m.xid, m.subXid)
	}
}

func TestDecodeRelation(t *testing.T) {
	t.Parallel()
	for _, in := range []bool{false, true} {
		var d decoder
		m := decodeOK(t, &d, relationMsg(in), in)
		wantXid := uint32(0)
		if in {
			wantXid = testXid
		}
		r := m.relation
		if m.kind != 'R' || m.xid != wantXid || m.relID != 16384 || r == nil {
			t.Fatalf("relation = kind %q xid %d relID %d rel %v", m.kind, m.xid, m.relID, r)
		}
		if r.ID != 16384 || r.Namespace != "public" || r.Name != "users" || r.ReplicaIdentity != 'd' || r.QualifiedName() != "public.users" {
			t.Errorf("relation = %+v", r)
		}
		want := []Column{{"id", true, 23}, {"email", false, 25}, {"bio", false, 25}}
		if len(r.Columns) != len(want) {
			t.Fatalf("columns = %+v", r.Columns)
		}
		for i := range want {
			if r.Columns[i] != want[i] {
				t.Errorf("column %d = %+v, want %+v", i, r.Columns[i], want[i])
			}
		}
		// A later Relation message must not change an earlier *Relation.
		m2 := decodeOK(t, &d, msg('R').xid(in, 1).u32(1).str("s").str("t").u8('f').u16(1).u8(1).str("x").u32(20).u32(0).b, in)
		if m2.relation == r || r.Name != "users" || len(r.Columns) != 3 {
			t.Errorf("second Relation message changed the first: %+v", r)
		}
		if m2.relation.ReplicaIdentity != 'f' || m2.relation.Columns[0].Name != "x" {
			t.Errorf("second relation = %+v", m2.relation)
		}
	}
	// Zero columns.
	var d decoder
	m := decodeOK(t, &d, msg('R').u32(5).str("").str("t").u8('n').u16(0).b, false)
	if len(m.relation.Columns) != 0 || m.relation.Namespace != "" {
		t.Errorf("relation without columns = %+v", m.relation)
	}
}

func TestDecodeChanges(t *testing.T) {
	t.Parallel()
	for _, in := range []bool{false, true} {
		wantXid := uint32(0)
		if in {
			wantXid = testXid
		}
		var d decoder
		check := func(m *message, kind byte, oldKind byte) {
			t.Helper()
			if m.kind != kind || m.xid != wantXid || m.relID != 16384 || m.oldKind != oldKind {
				t.Errorf("inStream %v: got kind %q xid %d relID %d oldKind %q, want %q %d 16384 %q", in, m.kind, m.xid, m.relID, m.oldKind, kind, wantXid, oldKind)
			}
		}

		m := decodeOK(t, &d, insertMsg(in), in)
		check(m, 'I', 0)
		wantValues(t, "insert new", m.new, tv{'t', "42"}, tv{'n', ""}, tv{'b', "\x00\x01"})

		m = decodeOK(t, &d, updateMsg(in, 'O'), in)
		check(m, 'U', 'O')
		wantValues(t, "update O old", m.old, tv{'t', "42"}, tv{'t', "old@x"}, tv{'t', "bio"})
		wantValues(t, "update O new", m.new, tv{'t', "42"}, tv{'t', "new@x"}, tv{'u', ""})

		m = decodeOK(t, &d, updateMsg(in, 'K'), in)
		check(m, 'U', 'K')
		wantValues(t, "update K old", m.old, tv{'t', "41"}, tv{'n', ""}, tv{'n', ""})
		wantValues(t, "update K new", m.new, tv{'t', "42"}, tv{'t', "new@x"}, tv{'u', ""})

		m = decodeOK(t, &d, updateMsg(in, 0), in)
		check(m, 'U', 0)
		wantValues(t, "update new", m.new, tv{'t', "42"}, tv{'t', "new@x"}, tv{'u', ""})

		for _, k := range []byte{'K', 'O'} {
			m = decodeOK(t, &d, deleteMsg(in, k), in)
			check(m, 'D', k)
			wantValues(t, "delete old", m.old, tv{'t', "42"}, tv{'t', ""}, tv{'n', ""})
		}

		// The decoder reuses its tuples: a shorter tuple must not show old values.
		m = decodeOK(t, &d, msg('I').xid(in, testXid).u32(16384).u8('N').tuple(tv{'t', "7"}).b, in)
		wantValues(t, "short insert", m.new, tv{'t', "7"})

		m = decodeOK(t, &d, truncateMsg(in), in)
		if m.kind != 'T' || m.xid != wantXid || m.truncOptions != 1 || len(m.truncRelIDs) != 2 || m.truncRelIDs[0] != 16384 || m.truncRelIDs[1] != 16390 {
			t.Errorf("truncate = kind %q xid %d options %d rels %v", m.kind, m.xid, m.truncOptions, m.truncRelIDs)
		}
		m = decodeOK(t, &d, msg('T').xid(in, testXid).u32(1).u8(0).u32(9).b, in)
		if len(m.truncRelIDs) != 1 || m.truncRelIDs[0] != 9 {
			t.Errorf("second truncate rels %v, want [9]", m.truncRelIDs)
		}

		m = decodeOK(t, &d, messageMsg(in), in)
		if m.kind != 'M' || m.xid != wantXid || !m.transactional || m.lsn != testLSN || m.prefix != "my.prefix" || string(m.content) != "hello" {
			t.Errorf("message = kind %q xid %d tx %v lsn %v prefix %q content %q", m.kind, m.xid, m.transactional, m.lsn, m.prefix, m.content)
		}
		m = decodeOK(t, &d, msg('M').xid(in, testXid).u8(0).u64(1).str("").u32(0).b, in)
		if m.transactional || m.prefix != "" || len(m.content) != 0 {
			t.Errorf("non-transactional message = tx %v prefix %q content %q", m.transactional, m.prefix, m.content)
		}

		m = decodeOK(t, &d, typeMsg(in), in)
		if m.kind != 'Y' || m.xid != wantXid {
			t.Errorf("type = kind %q xid %d", m.kind, m.xid)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		data     []byte
		inStream bool
		want     string
	}{
		{"empty", nil, false, "empty message"},
		{"unknown kind", []byte{'Z', 0, 0, 0, 0}, false, "unknown message kind"},
		{"unknown kind NUL", []byte{0}, false, "unknown message kind"},
		{"two-phase begin prepare", msg('b').u64(1).u64(2).u64(3).u32(4).str("gid").b, false, "unknown message kind"},
		{"insert marker", msg('I').u32(1).u8('K').tuple(tv{'t', "1"}).b, false, "want 'N'"},
		{"update marker", msg('U').u32(1).u8('X').tuple(tv{'t', "1"}).b, false, "want 'N'"},
		{"update new marker after old", msg('U').u32(1).u8('K').tuple(tv{'t', "1"}).u8('K').tuple(tv{'t', "1"}).b, false, "want 'N'"},
		{"delete marker", msg('D').u32(1).u8('N').tuple(tv{'t', "1"}).b, false, "want 'K' or 'O'"},
		{"value kind", msg('I').u32(1).u8('N').u16(1).u8('x').b, false, "value kind"},
		{"column count larger than message", msg('I').u32(1).u8('N').u16(3).u8('n').b, false, "column count"},
		{"value length larger than message", msg('I').u32(1).u8('N').u16(1).u8('t').u32(100).raw([]byte("ab")).b, false, "value length"},
		{"value length beyond remaining bytes", msg('I').u32(1).u8('N').u16(1).u8('t').u32(5).raw([]byte("ab")).b, false, "short"},
		{"relation column count", msg('R').u32(1).str("s").str("t").u8('d').u16(1000).b, false, "column count"},
		{"truncate relation count", msg('T').u32(1000).u8(0).u32(1).b, false, "relation count"},
		{"message content length", msg('M').u8(0).u64(1).str("p").u32(1000).raw([]byte("x")).b, false, "content length"},
		{"unterminated string", msg('O').u64(1).raw([]byte("name")).b, false, "unterminated"},
		{"in-stream change without xid", msg('I').u32(1).u8('N').b, true, "short"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var d decoder
			m, err := d.decode(tc.data, tc.inStream)
			if err == nil {
				t.Fatalf("decode(%q) = %+v, want an error", tc.data, m)
			}
			if m != nil {
				t.Errorf("decode returned a message with its error")
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// Every proper prefix of a valid message is an error, never a panic.
func TestDecodeTruncated(t *testing.T) {
	t.Parallel()
	for _, vm := range validMessages() {
		var d decoder
		for n := 0; n < len(vm.data); n++ {
			// A fresh copy of exactly n bytes, so reading past it would fault
			// under the race detector's and the runtime's bounds checks.
			data := bytes.Clone(vm.data[:n])
			m, err := d.decode(data, vm.inStream)
			if err == nil {
				t.Errorf("%s (inStream %v): %d of %d bytes decoded as %+v", vm.name, vm.inStream, n, len(vm.data), m)
				continue
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("%s: %d bytes: error %v does not wrap ErrMalformed", vm.name, n, err)
			}
		}
		// And the whole message still decodes with the same decoder.
		if _, err := d.decode(vm.data, vm.inStream); err != nil {
			t.Errorf("%s: %v", vm.name, err)
		}
	}
}

// Declared counts and lengths far beyond the message are refused before
// anything is allocated for them.
func TestDecodeHugeCountsDoNotAllocate(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"tuple column count", msg('I').u32(1).u8('N').u16(math.MaxUint16).u8('n').u8('n').b},
		{"old tuple column count", msg('U').u32(1).u8('O').u16(math.MaxUint16).u8('n').b},
		{"value length", msg('I').u32(1).u8('N').u16(1).u8('t').u32(math.MaxUint32).raw([]byte("ab")).b},
		{"value length just past int32", msg('I').u32(1).u8('N').u16(1).u8('b').u32(1 << 31).b},
		{"relation column count", msg('R').u32(1).str("s").str("t").u8('d').u16(math.MaxUint16).u8(1).b},
		{"truncate relation count", msg('T').u32(math.MaxUint32).u8(0).u32(1).b},
		{"message content length", msg('M').u8(0).u64(1).str("p").u32(math.MaxUint32).b},
	}
	for _, tc := range tests {
		var d decoder
		if _, err := d.decode(tc.data, false); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: decode = %v, want ErrMalformed", tc.name, err)
		}
		var ms runtimeMem
		ms.start()
		allocs := testing.AllocsPerRun(20, func() { _, _ = d.decode(tc.data, false) })
		if grew := ms.grown(); grew > 1<<20 {
			t.Errorf("%s: decoding allocated %d bytes", tc.name, grew)
		}
		// Error messages allocate a little; nothing proportional to the counts.
		if allocs > 10 {
			t.Errorf("%s: %v allocations per decode", tc.name, allocs)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to the decoder: it must never panic, and a
// decoded value must point into the input.
func FuzzDecode(f *testing.F) {
	for _, vm := range validMessages() {
		f.Add(vm.data, vm.inStream)
		f.Add(vm.data, !vm.inStream)
	}
	f.Add([]byte{}, false)
	f.Add([]byte("I\x00\x00\x00\x01N\xff\xff"), false)
	f.Fuzz(func(t *testing.T, data []byte, inStream bool) {
		var d decoder
		// Decode twice with one decoder: state from the first message must
		// not break the second.
		for range 2 {
			m, err := d.decode(data, inStream)
			if err != nil {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("error %v does not wrap ErrMalformed", err)
				}
				if m != nil {
					t.Fatal("message returned with an error")
				}
				continue
			}
			if len(data) == 0 || m.kind != data[0] {
				t.Fatalf("kind %q, first byte of %q", m.kind, data)
			}
			switch m.kind {
			case msgInsert:
				checkWithin(t, data, m.new)
			case msgUpdate:
				if m.oldKind != 0 {
					checkWithin(t, data, m.old)
				}
				checkWithin(t, data, m.new)
			case msgDelete:
				checkWithin(t, data, m.old)
			case msgMessage:
				checkSliceWithin(t, data, m.content)
			case msgRelation:
				if m.relation == nil || m.relation.ID != m.relID {
					t.Fatalf("relation %+v relID %d", m.relation, m.relID)
				}
				// Each column takes at least 10 bytes.
				if len(m.relation.Columns)*10 > len(data) {
					t.Fatalf("%d columns from %d bytes", len(m.relation.Columns), len(data))
				}
			case msgTruncate:
				if len(m.truncRelIDs)*4 > len(data) {
					t.Fatalf("%d relations from %d bytes", len(m.truncRelIDs), len(data))
				}
			}
		}
	})
}

func checkWithin(t *testing.T, data []byte, tu Tuple) {
	t.Helper()
	if len(tu.Values) > len(data) {
		t.Fatalf("%d values from %d bytes", len(tu.Values), len(data))
	}
	for i, v := range tu.Values {
		switch v.Kind {
		case ValueText, ValueBinary:
			checkSliceWithin(t, data, v.Data)
		case ValueNull, ValueUnchanged:
			if v.Data != nil {
				t.Fatalf("value %d of kind %q has data", i, v.Kind)
			}
		default:
			t.Fatalf("value %d has kind %q", i, v.Kind)
		}
	}
}

func checkSliceWithin(t *testing.T, data, s []byte) {
	t.Helper()
	if len(s) == 0 {
		return
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(data)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(s)))
	if p < base || p+uintptr(len(s)) > base+uintptr(len(data)) {
		t.Fatalf("value of %d bytes lies outside the input", len(s))
	}
	if cap(s) != len(s) {
		// Appending to a value must not overwrite the rest of the buffer.
		t.Fatalf("value has cap %d > len %d", cap(s), len(s))
	}
}

// runtimeMem measures bytes allocated by the whole program between start and grown.
type runtimeMem struct{ before uint64 }

func (r *runtimeMem) start() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.before = ms.TotalAlloc
}

func (r *runtimeMem) grown() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc - r.before
}
