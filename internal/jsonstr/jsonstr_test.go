package jsonstr

import (
	"encoding/json"
	"testing"
)

// Append writes what encoding/json writes for any string.
func TestAppend(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "plain", `q"b\s`, "\n\r\t\x00\x1f\x7f", "<a & b>", "é ü 日本 🙂", "\u2028\u2029", "bad \xff\xfe utf8", "\xed\xa0\x80"} {
		checkJSONString(t, s)
	}
}

func checkJSONString(t *testing.T, s string) {
	t.Helper()
	want, _ := json.Marshal(s)
	if got := Append(nil, s); string(got) != string(want) {
		t.Errorf("Append(%q) = %s, want %s", s, got, want)
	}
}

func FuzzAppend(f *testing.F) {
	for _, s := range []string{"a", "\x00", "\xff", "\u2028", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(checkJSONString)
}

// BenchmarkAppend writes a typical column value: plain ASCII, copied in
// one run.
func BenchmarkAppend(b *testing.B) {
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf = Append(buf[:0], "2026-12-07 10:00:00+00 charlie bravo")
	}
}
