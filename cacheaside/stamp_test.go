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
		if s, val, ok := ParseStampInfo(AppendLeaseStamp(nil, c.lsn, []byte(c.val))); !ok || s != (Stamp{Watermark: c.lsn, Leased: true}) || string(val) != c.val {
			t.Errorf("ParseStampInfo(AppendLeaseStamp(%d, %q)) = %+v, %q, %v", c.lsn, c.val, s, val, ok)
		}
		if s, val, ok := ParseStampInfo(AppendLoadStamp(nil, c.lsn, c.lsn+1, []byte(c.val))); !ok || s != (Stamp{Watermark: c.lsn, LoadedBefore: c.lsn + 1}) || string(val) != c.val {
			t.Errorf("ParseStampInfo(AppendLoadStamp(%d, %d, %q)) = %+v, %q, %v", c.lsn, c.lsn+1, c.val, s, val, ok)
		}
	}
	for _, v := range []string{"", "plain", "\x00cdc\x01short", "\x00cdc\x09123456789", "\x00cdc\x03123456789"} {
		lsn, val, ok := ParseStamp([]byte(v))
		if ok || lsn != 0 || !bytes.Equal(val, []byte(v)) {
			t.Errorf("ParseStamp(%q) = %d, %q, %v; want no stamp", v, lsn, val, ok)
		}
	}
}

func FuzzParseStamp(f *testing.F) {
	f.Add([]byte("\x00cdc\x01\x00\x00\x00\x00\x01\x6b\x37\x48{}"))
	f.Add([]byte("\x00cdc\x02\x00\x00\x00\x00\x01\x6b\x37\x48{}"))
	f.Add([]byte("\x00cdc\x03\x00\x00\x00\x00\x01\x6b\x37\x48\x00\x00\x00\x00\x01\x6b\x37\x49{}"))
	f.Add([]byte("plain"))
	f.Fuzz(func(t *testing.T, v []byte) {
		s, val, ok := ParseStampInfo(v)
		if lsn, val2, ok2 := ParseStamp(v); ok2 != ok || lsn != s.Watermark || !bytes.Equal(val2, val) {
			t.Fatalf("ParseStamp and ParseStampInfo disagree on %q", v)
		}
		if !ok {
			if !bytes.Equal(val, v) {
				t.Fatalf("unstamped value changed: %q -> %q", v, val)
			}
			return
		}
		var again []byte
		switch v[4] {
		case 1:
			again = AppendStamp(nil, s.Watermark, val)
		case 2:
			again = AppendLeaseStamp(nil, s.Watermark, val)
		case 3:
			again = AppendLoadStamp(nil, s.Watermark, s.LoadedBefore, val)
		default:
			t.Fatalf("%q parsed as a stamp of version %d", v, v[4])
		}
		if !bytes.Equal(again, v) {
			t.Fatalf("round trip %q -> %q", v, again)
		}
	})
}
