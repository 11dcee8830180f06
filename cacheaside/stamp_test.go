package cacheaside

import (
	"bytes"
	"testing"
)

func TestStampRoundTrip(t *testing.T) {
	for _, c := range []struct {
		lsn uint64
		val string
	}{{0, ""}, {1, "x"}, {0x16B3748, `{"id":1}`}, {^uint64(0), "\x00cdc\x01nested"}} {
		v := AppendStamp(nil, c.lsn, []byte(c.val))
		lsn, val, ok := ParseStamp(v)
		if !ok || lsn != c.lsn || string(val) != c.val {
			t.Errorf("ParseStamp(AppendStamp(%d, %q)) = %d, %q, %v", c.lsn, c.val, lsn, val, ok)
		}
	}
	for _, v := range []string{"", "plain", "\x00cdc\x01short", "\x00cdc\x02123456789"} {
		lsn, val, ok := ParseStamp([]byte(v))
		if ok || lsn != 0 || !bytes.Equal(val, []byte(v)) {
			t.Errorf("ParseStamp(%q) = %d, %q, %v; want no stamp", v, lsn, val, ok)
		}
	}
}

func FuzzParseStamp(f *testing.F) {
	f.Add([]byte("\x00cdc\x01\x00\x00\x00\x00\x01\x6b\x37\x48{}"))
	f.Add([]byte("plain"))
	f.Fuzz(func(t *testing.T, v []byte) {
		lsn, val, ok := ParseStamp(v)
		if !ok {
			if !bytes.Equal(val, v) {
				t.Fatalf("unstamped value changed: %q -> %q", v, val)
			}
			return
		}
		if again := AppendStamp(nil, lsn, val); !bytes.Equal(again, v) {
			t.Fatalf("round trip %q -> %q", v, again)
		}
	})
}
