package replication

import (
	"slices"
	"strings"
	"testing"
)

func TestParseExplicit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, content string
		keys, globs   []string
		err           string
	}{
		{name: "lines", content: "user:1\nuser:2", keys: []string{"user:1", "user:2"}},
		{name: "lines with CRLF and blanks", content: "\nuser:1\r\n\r\nuser:2\n", keys: []string{"user:1", "user:2"}},
		{name: "lines are trimmed, glob characters kept", content: "  a b \n\tx*y\n  ", keys: []string{"a b", "x*y"}},
		{name: "JSON keeps spaces", content: `[" a "]`, keys: []string{" a "}},
		{name: "empty", content: ""},
		{name: "blank", content: "\n \r\n\t"},
		{name: "JSON array", content: `["user:1", "user:{2}"]`, keys: []string{"user:1", "user:{2}"}},
		{name: "JSON array with spaces around", content: "  \n [\"a\"] \n", keys: []string{"a"}},
		{name: "JSON empty array", content: `[]`},
		{name: "JSON object", content: `{"keys":["a","b"],"patterns":["feed:*","x\\*?"]}`, keys: []string{"a", "b"}, globs: []string{"feed:*", `x\*?`}},
		{name: "JSON object, patterns only", content: `{"patterns":["feed:*"]}`, globs: []string{"feed:*"}},
		{name: "JSON null keys", content: `{"keys":null}`},
		{name: "JSON unicode", content: `["caf\u00e9:1"]`, keys: []string{"café:1"}},
		{name: "bad JSON", content: `["a",`, err: "not valid JSON"},
		{name: "JSON object of wrong shape", content: `{"key":["a"]}`, err: `unknown field "key"`},
		{name: "JSON numbers", content: `[1, 2]`, err: "not valid JSON"},
		{name: "JSON trailing text", content: `["a"] ["b"]`, err: "text after the JSON value"},
		{name: "JSON empty key", content: `["a", ""]`, err: "key 1 is empty"},
		{name: "JSON null key", content: `["a", null]`, err: "key 1 is empty"},
		{name: "pattern without prefix", content: `{"patterns":["*"]}`, err: `pattern 0 "*" does not start with literal text`},
		{name: "pattern starting with ?", content: `{"patterns":["ok:*","?x"]}`, err: "pattern 1"},
		{name: "pattern starting with [", content: `{"patterns":["[ab]:1"]}`, err: "pattern 0"},
		{name: "empty pattern", content: `{"patterns":[""]}`, err: "pattern 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			keys, globs, _, err := parseExplicit([]byte(tc.content))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(keys, tc.keys) || !slices.Equal(globs, tc.globs) {
				t.Errorf("parseExplicit = %q, %q; want %q, %q", keys, globs, tc.keys, tc.globs)
			}
		})
	}
}

func FuzzParseExplicit(f *testing.F) {
	for _, s := range []string{"a\nb", `["a"]`, `{"keys":["a"],"patterns":["p:*"]}`, `{"patterns":["*"]}`, `{"generations":["gen:a"]}`, "[", "{", "\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		keys, globs, gens, err := parseExplicit(content)
		if err != nil {
			return
		}
		for _, k := range keys {
			if k == "" {
				t.Fatalf("empty key from %q", content)
			}
		}
		for _, g := range globs {
			if g == "" || strings.ContainsRune("*?[", rune(g[0])) {
				t.Fatalf("pattern %q without a literal prefix from %q", g, content)
			}
		}
		for _, g := range gens {
			if g == "" {
				t.Fatalf("empty generation key from %q", content)
			}
		}
	})
}

func TestParseExplicitGenerations(t *testing.T) {
	t.Parallel()
	keys, globs, gens, err := parseExplicit([]byte(`{"keys":["a"],"generations":["gen:orders","gen:feed"]}`))
	if err != nil || len(keys) != 1 || len(globs) != 0 || strings.Join(gens, ",") != "gen:orders,gen:feed" {
		t.Errorf("parseExplicit = %q %q %q %v", keys, globs, gens, err)
	}
	if _, _, _, err := parseExplicit([]byte(`{"generations":[""]}`)); err == nil {
		t.Error("an empty generation key was accepted")
	}
}
