package replication

import (
	"testing"
	"time"
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
		got, err := parseAction(b)
		if err != nil || got != a {
			t.Errorf("parseAction(appendAction(%+v)) = %+v, %v", a, got, err)
		}
		for n := 0; n < len(b); n++ {
			if _, err := parseAction(b[:n]); err == nil {
				t.Errorf("parseAction accepted %d of %d bytes of %+v", n, len(b), a)
			}
		}
	}
	if _, err := parseAction([]byte{0, 'I', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}); err == nil {
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
		a, err := parseAction(b)
		if err != nil {
			return
		}
		again, err := parseAction(appendAction(nil, &a))
		if err != nil || (again != a && a.Jitter == a.Jitter) { // NaN jitter is not equal to itself
			t.Fatalf("round trip of %+v gave %+v, %v", a, again, err)
		}
	})
}
