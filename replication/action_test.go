package replication

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"
	"unsafe"
)

func TestActionRoundTrip(t *testing.T) {
	t.Parallel()
	for _, a := range []Action{
		{Kind: ActUnlink, Key: "user:1"},
		{Kind: ActUnlink, Key: "user:1", Stamp: true},
		{Kind: ActSet, Op: OpUpdate, Key: "user:1", Value: `{"id":1,"name":"\u0000x"}`, TTL: time.Hour, Jitter: 0.25},
		{Kind: ActStream, Op: OpDelete, Key: "k", Target: "events", Table: "public.users", MaxLen: 100000},
		{Kind: ActVersion, Key: "", TTL: -1},
		{Kind: ActIncr, Key: "gen:orders"},
	} {
		b := appendAction(nil, &a)
		got, err := parseAction(string(b))
		if err != nil || got != a {
			t.Errorf("parseAction(appendAction(%+v)) = %+v, %v", a, got, err)
		}
		for n := 0; n < len(b); n++ {
			if _, err := parseAction(string(b[:n])); err == nil {
				t.Errorf("parseAction accepted %d of %d bytes of %+v", n, len(b), a)
			}
		}
	}
	if _, err := parseAction(string([]byte{0, 'I', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})); err == nil {
		t.Error("parseAction accepted kind 0")
	}
}

// FuzzParseAction: any bytes give an action or an error, never a panic,
// and what parses encodes back to the same bytes.
func FuzzParseAction(f *testing.F) {
	f.Add(appendAction(nil, &Action{Kind: ActSet, Key: "k", Value: "{}", TTL: time.Second}))
	f.Add(appendAction(nil, &Action{Kind: ActPublish, Op: OpInsert, Key: "k", Target: "c", Table: "public.t"}))
	f.Add([]byte{1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := parseAction(string(b))
		if err != nil {
			return
		}
		again, err := parseAction(string(appendAction(nil, &a)))
		if err != nil || (again != a && a.Jitter == a.Jitter) { // NaN jitter is not equal to itself
			t.Fatalf("round trip of %+v gave %+v, %v", a, again, err)
		}
	})
}

// TestParseActionCopiesNothing: a read-back record is copied once (into
// its string); the action's fields are substrings of it, so a refreshed
// row's JSON is not copied again per action.
func TestParseActionCopiesNothing(t *testing.T) {
	a := Action{Kind: ActSet, Op: OpInsert, Key: "item:1", Table: "public.t", Value: strings.Repeat(`{"c":"x"}`, 1000), TTL: time.Hour}
	rec := string(appendAction(nil, &a))
	var got Action
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		if got, err = parseAction(rec); err != nil {
			t.Fatal(err)
		}
	})
	if got != a {
		t.Fatalf("parseAction = %+v, want %+v", got, a)
	}
	if allocs != 0 {
		t.Errorf("parseAction allocated %v times a record, want 0", allocs)
	}
	if lo, hi := uintptr(unsafe.Pointer(unsafe.StringData(rec))), uintptr(unsafe.Pointer(unsafe.StringData(got.Value))); hi < lo || hi >= lo+uintptr(len(rec)) {
		t.Error("the value is a copy, not a substring of the record")
	}
}

// FuzzVarint: uvarint and varint read strings as binary.Uvarint and
// binary.Varint read bytes.
func FuzzVarint(f *testing.F) {
	f.Add([]byte{0x80, 0x01})
	f.Add(binary.AppendUvarint(nil, 1<<63))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02})
	f.Fuzz(func(t *testing.T, b []byte) {
		ux, un := uvarint(string(b))
		if wx, wn := binary.Uvarint(b); ux != wx || un != wn {
			t.Fatalf("uvarint(%x) = %d, %d; binary.Uvarint: %d, %d", b, ux, un, wx, wn)
		}
		x, n := varint(string(b))
		if wx, wn := binary.Varint(b); x != wx || n != wn {
			t.Fatalf("varint(%x) = %d, %d; binary.Varint: %d, %d", b, x, n, wx, wn)
		}
	})
}
