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
