package mapping

import (
	"crypto/sha1"
	"encoding/hex"
	"net/url"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// render renders a one-placeholder template for a value (nil = NULL).
func render(t *testing.T, src string, v *string) (string, bool) {
	t.Helper()
	tpl, err := ParseTemplate(src)
	if err != nil {
		t.Fatalf("ParseTemplate(%q): %v", src, err)
	}
	var sc scratch
	var b []byte
	for i := range tpl.parts {
		p := &tpl.parts[i]
		if !p.isCol {
			b = append(b, p.lit...)
			continue
		}
		var data []byte
		if v != nil {
			data = []byte(*v)
		}
		var ok bool
		if b, ok = sc.appendValue(b, p, data, v == nil); !ok {
			return "", false
		}
	}
	return string(b), true
}

func sp(s string) *string { return &s }

func TestFilters(t *testing.T) {
	t.Parallel()
	sha := func(s string) string { h := sha1.Sum([]byte(s)); return hex.EncodeToString(h[:]) }
	tests := []struct {
		src   string
		value *string // nil = NULL
		want  string
		noKey bool
	}{
		// lower
		{"k:{e|lower}", sp("Ann@Example.COM"), "k:ann@example.com", false},
		{"k:{e|lower}", sp("ÀÉÎ ÕÜ ΣΑΣ Ǆ"), "k:" + strings.ToLower("ÀÉÎ ÕÜ ΣΑΣ Ǆ"), false},
		{"k:{e|lower}", sp("A\xffB\xc3"), "k:a\xffb\xc3", false}, // invalid UTF-8 bytes kept
		{"k:{e|lower}", sp(""), "k:", false},
		{"k:{e|lower}", nil, "", true},
		// trim
		{"k:{e|trim}", sp("  a b \t\n"), "k:a b", false},
		{"k:{e|trim}", sp("\u00a0\u2003x\u3000"), "k:x", false}, // Unicode spaces
		{"k:{e|trim}", sp("   "), "k:", false},
		{"k:{e|trim}", nil, "", true},
		// urlencode = url.QueryEscape
		{"k:{e|urlencode}", sp("a b&c=d/é?#%+~-._"), "k:" + url.QueryEscape("a b&c=d/é?#%+~-._"), false},
		{"k:{e|urlencode}", sp("AZaz09-_.~"), "k:AZaz09-_.~", false},
		{"k:{e|urlencode}", sp("{id}*"), "k:%7Bid%7D%2A", false},
		{"k:{e|urlencode}", nil, "", true},
		// sha1
		{"k:{e|sha1}", sp("hello"), "k:aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d", false},
		{"k:{e|sha1}", sp(""), "k:" + sha(""), false},
		{"k:{e|sha1}", sp(strings.Repeat("long ", 1000)), "k:" + sha(strings.Repeat("long ", 1000)), false},
		{"k:{e|sha1}", nil, "", true},
		// default
		{"k:{e|default:none}", nil, "k:none", false},
		{"k:{e|default:none}", sp("x"), "k:x", false},
		{"k:{e|default:none}", sp(""), "k:", false}, // empty is not NULL
		{"k:{e|default: two words }", nil, "k: two words ", false},
		{"k:{e|default:}", nil, "k:", false},
		{"k:{e|default:a:b=c}", nil, "k:a:b=c", false},
		{"k:{e|default:*}", nil, "k:*", false},
		// chains, left to right
		{"k:{e|trim|lower}", sp("  Ann@X  "), "k:ann@x", false},
		{"k:{e|lower|trim}", sp("  Ann@X  "), "k:ann@x", false},
		{"k:{e|trim|urlencode}", sp(" a b "), "k:a+b", false},
		{"k:{e|urlencode|trim}", sp(" a b "), "k:+a+b+", false},
		{"k:{e|lower|sha1}", sp("ABC"), "k:" + sha("abc"), false},
		{"k:{e|sha1|lower}", sp("ABC"), "k:" + sha("ABC"), false},
		{"k:{e|urlencode|urlencode}", sp("a b%"), "k:" + url.QueryEscape(url.QueryEscape("a b%")), false},
		{"k:{e|lower|default:NONE}", nil, "k:NONE", false}, // lower passes NULL on
		{"k:{e|default:NONE|lower}", nil, "k:none", false}, // default's text goes through later filters
		{"k:{e|default: X |trim|lower}", nil, "k:x", false},
		{"k:{e|trim|lower|urlencode|sha1}", sp(" A B "), "k:" + sha("a+b"), false},
		{"k:{ e | trim | lower }", sp(" A "), "k:a", false},
		{"k:{e|lower}:{e}", sp("AB"), "k:ab:AB", false},
		// values are never re-expanded
		{"k:{e|lower}", sp("{ID}|TRIM"), "k:{id}|trim", false},
	}
	for _, tc := range tests {
		name := tc.src + "/NULL"
		if tc.value != nil {
			name = tc.src + "/" + *tc.value
		}
		t.Run(name, func(t *testing.T) {
			got, ok := render(t, tc.src, tc.value)
			if ok == tc.noKey {
				t.Fatalf("render ok = %v, want %v (key %q)", ok, !tc.noKey, got)
			}
			if got != tc.want {
				t.Errorf("render = %q, want %q", got, tc.want)
			}
		})
	}
}

// Filters do not change what a template is: its columns and its TRUNCATE
// glob (a placeholder is '*' whatever its filters).
func TestFiltersKeepColumnsAndGlob(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ src, glob string }{
		{"user:email:{email|trim|lower}", "user:email:*"},
		{"u:{a|sha1}:{b|default:x}", "u:*:*"},
		{"u:{a|urlencode}{b|lower}", "u:*"},
		{"u:{a|default:*?[]}", "u:*"},
	} {
		tpl, err := ParseTemplate(tc.src)
		if err != nil {
			t.Fatal(err)
		}
		if got := tpl.Glob(); got != tc.glob {
			t.Errorf("Glob(%q) = %q, want %q", tc.src, got, tc.glob)
		}
		for _, c := range tpl.Columns() {
			if strings.ContainsAny(c, "|:") {
				t.Errorf("Columns(%q) includes a filter: %q", tc.src, tpl.Columns())
			}
		}
	}
	tpl, _ := ParseTemplate("k:{ a | lower }:{b|default:none}:{a}")
	if got := tpl.Columns(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("Columns = %q", got)
	}
}

// The mapper renders filters, applies default to NULLs, and still counts
// a NULL without default as no key.
func TestAppendKeysWithFilters(t *testing.T) {
	t.Parallel()
	m := newMapper(t, usersRule(t, false, "user:{id}", "user:email:{email|trim|lower}", "user:bio:{bio|default:none|sha1}"))
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	sha := func(s string) string { h := sha1.Sum([]byte(s)); return hex.EncodeToString(h[:]) }
	keys, err := m.AppendKeys(nil, update(rel, 'O', tup(txt("1"), txt(" Old@X "), null), tup(txt("1"), null, txt("Bio"))))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"user:1", "user:email:old@x", "user:bio:" + sha("none"), "user:bio:" + sha("Bio")}
	if !slices.Equal(keys, want) {
		t.Errorf("keys = %q, want %q", keys, want)
	}
	if m.NullKeys() != 1 {
		t.Errorf("NullKeys = %d, want 1 (the new email)", m.NullKeys())
	}
}

// Rendering with filters allocates only the key strings: the filters work
// in reused buffers.
func TestFiltersAllocations(t *testing.T) {
	m := newMapper(t, usersRule(t, false, "user:{id}", "user:email:{email|trim|lower|urlencode}", "user:bio:{bio|sha1}"))
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	ch := insert(rel, tup(txt("42"), txt("  Ann Lee@Example.com "), txt(strings.Repeat("bio ", 100))))
	keys := make([]string, 0, 8)
	keys, _ = m.AppendKeys(keys[:0], ch) // warm the buffers
	allocs := testing.AllocsPerRun(200, func() {
		keys, _ = m.AppendKeys(keys[:0], ch)
	})
	if len(keys) != 3 || keys[1] != "user:email:ann+lee%40example.com" {
		t.Fatalf("keys = %q", keys)
	}
	if allocs > 3 {
		t.Errorf("%.1f allocations per change, want at most 3 (one per key)", allocs)
	}
}

// FuzzFilters checks each filter against the standard library function it
// documents, for any input.
func FuzzFilters(f *testing.F) {
	for _, s := range []string{"", "Ann@Example.COM", " a b ", "\xff\xfe", "ΣΑΣ", "a+b%20c", "\u00a0x\u2003", "İı"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var sc scratch
		run := func(src string) string {
			tpl, err := ParseTemplate(src)
			if err != nil {
				t.Fatal(err)
			}
			b, ok := sc.appendValue(nil, &tpl.parts[1], []byte(s), false)
			if !ok {
				t.Fatal("non-NULL value made no key")
			}
			return string(b)
		}
		if got, want := run("k{v|urlencode}"), url.QueryEscape(s); got != want {
			t.Errorf("urlencode(%q) = %q, want %q", s, got, want)
		}
		if got, want := run("k{v|trim}"), strings.TrimSpace(s); got != want {
			t.Errorf("trim(%q) = %q, want %q", s, got, want)
		}
		if utf8.ValidString(s) {
			if got, want := run("k{v|lower}"), strings.ToLower(s); got != want {
				t.Errorf("lower(%q) = %q, want %q", s, got, want)
			}
		} else if got := run("k{v|lower}"); len(got) == 0 && len(s) > 0 {
			t.Errorf("lower(%q) = %q", s, got)
		}
		h := sha1.Sum([]byte(s))
		if got := run("k{v|sha1}"); got != hex.EncodeToString(h[:]) {
			t.Errorf("sha1(%q) = %q", s, got)
		}
		// A chain equals the composition of its filters.
		want := url.QueryEscape(strings.TrimSpace(s))
		h2 := sha1.Sum([]byte(want))
		if got := run("k{v|trim|urlencode|sha1}"); got != hex.EncodeToString(h2[:]) {
			t.Errorf("trim|urlencode|sha1(%q) = %q", s, got)
		}
	})
}

// Keys in a buffer with filters survive the next change (no aliasing of
// the scratch buffers).
func TestFiltersDoNotAlias(t *testing.T) {
	t.Parallel()
	m := newMapper(t, usersRule(t, false, "a:{email|lower}", "b:{email|trim|urlencode}"))
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range []string{"X Y", "LONGER VALUE HERE", "z"} {
		var err error
		keys, err = m.AppendKeys(keys, insert(rel, tup(txt("1"), txt(e), null)))
		if err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"a:x y", "b:X+Y", "a:longer value here", "b:LONGER+VALUE+HERE", "a:z", "b:z"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys = %q, want %q", keys, want)
	}
}
