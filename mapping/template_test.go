package mapping

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestParseTemplateValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		src     string
		columns []string
		render  string // rendering with every column's value "<name>"
	}{
		{"user:{id}", []string{"id"}, "user:<id>"},
		{"{{literal}}:{id}", []string{"id"}, "{literal}:<id>"},
		{"a:{ id }", []string{"id"}, "a:<id>"},
		{"a:{\tid\n}", []string{"id"}, "a:<id>"},
		{"user:{id}:email:{email}", []string{"id", "email"}, "user:<id>:email:<email>"},
		{"pair:{id}:{id}", []string{"id"}, "pair:<id>:<id>"},
		{"x{a}{b}{a}", []string{"a", "b"}, "x<a><b><a>"},
		{"static", nil, "static"},
		{"{{{id}}}", []string{"id"}, "{<id>}"},
		{"}}{id}", []string{"id"}, "}<id>"},
		{"k:{weird name.with-dots}", []string{"weird name.with-dots"}, "k:<weird name.with-dots>"},
		{"k:{ünïcode}", []string{"ünïcode"}, "k:<ünïcode>"},
		{"glob*?[]\\:{id}", []string{"id"}, "glob*?[]\\:<id>"},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			tpl, err := ParseTemplate(tc.src)
			if err != nil {
				t.Fatalf("ParseTemplate(%q): %v", tc.src, err)
			}
			if got := tpl.String(); got != tc.src {
				t.Errorf("String() = %q, want %q", got, tc.src)
			}
			if got := tpl.Columns(); !slices.Equal(got, tc.columns) {
				t.Errorf("Columns() = %q, want %q", got, tc.columns)
			}
			if got := renderWith(tpl, func(col string) string { return "<" + col + ">" }); got != tc.render {
				t.Errorf("render = %q, want %q", got, tc.render)
			}
		})
	}
}

func TestParseTemplateInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		src  string
		want string // substring of the message
	}{
		{"", "empty template"},
		{"{id}", "must start with literal text"},
		{"{a}{b}", "must start with literal text"},
		{"{tenant}:user:{id}", "must start with literal text"},
		{"{}", "empty placeholder"},
		{"a:{ }", "empty placeholder"},
		{"user:{id", "never closed"},
		{"{id", "never closed"},
		{"user:{", "never closed"},
		{"user:}", "unmatched '}'"},
		{"user:{id}}", "unmatched '}'"},
		{"}", "unmatched '}'"},
		{"{a|lower}", "must start with literal text"},
		{"user:{a|upper}", `unknown filter "upper"`},
		{"user:{a|upper}", "known filters: lower, trim, urlencode, sha1, default:TEXT"},
		{"user:{a|lower|bogus}", `unknown filter "bogus"`},
		{"user:{a|}", "empty filter"},
		{"user:{a||lower}", "empty filter"},
		{"user:{|lower}", "no column name"},
		{"user:{ | lower}", "no column name"},
		{"user:{a|default}", "default:TEXT"},
		{"user:{a|default:x|default:y}", "two default filters"},
		{"user:{a|Lower}", `unknown filter "Lower"`},
		{"user:{a|default :x}", `unknown filter "default :x"`},
		{"user:{a{b}", "inside a placeholder"},
		{"{a{b}", "inside a placeholder"},
		{"user:{a{{b}", "inside a placeholder"},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			tpl, err := ParseTemplate(tc.src)
			if err == nil {
				t.Fatalf("ParseTemplate(%q) = %v, want an error", tc.src, tpl.parts)
			}
			if tpl != nil {
				t.Errorf("ParseTemplate(%q) returned a template with its error", tc.src)
			}
			if !errors.Is(err, ErrTemplate) {
				t.Errorf("error %v does not wrap ErrTemplate", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if tc.src != "" && !strings.Contains(err.Error(), strconv.Quote(tc.src)) {
				t.Errorf("error %q does not quote the template", err)
			}
		})
	}
}

func TestTemplateGlob(t *testing.T) {
	t.Parallel()
	tests := []struct {
		src  string
		glob string
	}{
		{"user:{id}", "user:*"},
		{"user:{id}:orders", "user:*:orders"},
		{"user:{a}{b}", "user:*"},
		{"user:{a}{b}{c}:x", "user:*:x"},
		{"user:{a}:{b}", "user:*:*"},
		{"static", "static"},
		{"a*b:{id}", `a\*b:*`},
		{"a?b:{id}", `a\?b:*`},
		{"a[b]:{id}", `a\[b\]:*`},
		{`a\b:{id}`, `a\\b:*`},
		{"k{id}*", `k*\*`},
		{"*{id}", `\**`},
		{"{{x}}:{id}", "{x}:*"},
		{"a^-!:{id}", "a^-!:*"},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			tpl, err := ParseTemplate(tc.src)
			if err != nil {
				t.Fatal(err)
			}
			if got := tpl.Glob(); got != tc.glob {
				t.Errorf("Glob() = %q, want %q", got, tc.glob)
			}
			// The glob must match a rendering, and not a key with another prefix.
			key := renderWith(tpl, func(string) string { return "v*?[x]\\" })
			if !redisGlobMatch(tc.glob, key) {
				t.Errorf("glob %q does not match rendered key %q", tc.glob, key)
			}
			if redisGlobMatch(tc.glob, "\x00"+key) && !strings.HasPrefix(tc.glob, "*") {
				t.Errorf("glob %q matches a key with another prefix", tc.glob)
			}
		})
	}
}

// TestRedisGlobMatch checks the test's own matcher against Redis semantics.
func TestRedisGlobMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"*", "anything", true},
		{"a*", "a", true},
		{"a*", "ba", false},
		{"*a", "bba", true},
		{"*a*b", "xaxxb", true},
		{"*a*b", "xaxxbc", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{`a\*`, "a*", true},
		{`a\*`, "ab", false},
		{`a\?`, "a?", true},
		{`a\?`, "ab", false},
		{`\\`, `\`, true},
		{`\[x\]`, "[x]", true},
		{"[abc]", "b", true},
		{"[abc]", "d", false},
		{"[^abc]", "d", true},
		{"[^abc]", "a", false},
		{"[a-c]x", "bx", true},
		{"[c-a]x", "bx", true},
		{"[a-c]x", "dx", false},
		{`[\]]`, "]", true},
		{"user:*:orders", "user:42:orders", true},
		{"user:*:orders", "user:42:order", false},
	}
	for _, tc := range tests {
		if got := redisGlobMatch(tc.pattern, tc.s); got != tc.want {
			t.Errorf("redisGlobMatch(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{
		"user:{id}", "{{literal}}:{id}", "a:{ id }", "user:{id}:email:{email}", "pair:{id}:{id}",
		"", "{id}", "{}", "{id", "}", "{a|lower}", "{a{b}", "a*b?[c]\\:{x}{y}", "{{{id}}}", "x{a}{b}y",
		"}}", "{{", "a:{ }", "\xff{\xfe}",
		"user:{a|lower}", "user:{a|trim|lower|urlencode|sha1}", "u:{a|default:x}", "u:{a|default:}", "u:{|x}",
		"u:{a|bogus}", "u:{a| default: y |lower}", "u:{a|default:x|default:y}", "u:{a|}", "u:{a|sha1}{b|urlencode}",
	} {
		f.Add(s, "42", "é:*")
	}
	f.Fuzz(func(t *testing.T, src, v1, v2 string) {
		tpl, err := ParseTemplate(src)
		if err != nil {
			if !errors.Is(err, ErrTemplate) {
				t.Fatalf("error %v does not wrap ErrTemplate", err)
			}
			if tpl != nil {
				t.Fatal("template returned with an error")
			}
			return
		}
		if tpl.String() != src {
			t.Fatalf("String() = %q, want %q", tpl.String(), src)
		}
		cols := tpl.Columns()
		seen := map[string]bool{}
		for _, c := range cols {
			if c == "" || c != strings.TrimSpace(c) || strings.ContainsAny(c, "{}|") {
				t.Fatalf("bad column name %q", c)
			}
			if !strings.Contains(src, c) {
				t.Fatalf("column %q does not appear in %q", c, src)
			}
			if seen[c] {
				t.Fatalf("column %q returned twice", c)
			}
			seen[c] = true
		}
		glob := tpl.Glob()
		if hasAdjacentStars(glob) {
			t.Fatalf("glob %q has adjacent stars", glob)
		}
		// Values are arbitrary (even glob metacharacters): a placeholder's '*'
		// matches any bytes, so every rendering must match.
		vals := []string{v1, v2, "", "x"}
		for i := range vals {
			n := 0
			key := renderWith(tpl, func(string) string { n++; return vals[(i+n)%len(vals)] })
			if !redisGlobMatch(glob, key) {
				t.Fatalf("glob %q of %q does not match rendered key %q", glob, src, key)
			}
		}
		// A NULL in every column: a key exactly when every placeholder has a
		// default, and then it matches the glob too.
		var sc scratch
		var b []byte
		allDefault, made := true, true
		for i := range tpl.parts {
			p := &tpl.parts[i]
			if !p.isCol {
				b = append(b, p.lit...)
				continue
			}
			if !slices.ContainsFunc(p.filters, func(f filter) bool { return f.kind == filterDefault }) {
				allDefault = false
			}
			var ok bool
			if b, ok = sc.appendValue(b, p, nil, true); !ok {
				made = false
			}
		}
		if made != allDefault {
			t.Fatalf("NULL rendering of %q made a key: %v, every placeholder has a default: %v", src, made, allDefault)
		}
		if made && !redisGlobMatch(glob, string(b)) {
			t.Fatalf("glob %q of %q does not match the NULL rendering %q", glob, src, b)
		}
		if len(cols) == 0 {
			// Without placeholders the glob matches exactly the literal text.
			lit := renderWith(tpl, nil)
			if redisGlobMatch(glob, lit+"x") || redisGlobMatch(glob, "x"+lit) {
				t.Fatalf("glob %q of placeholder-free %q matches more than %q", glob, src, lit)
			}
		}
	})
}

// hasAdjacentStars reports whether a glob has two unescaped '*' in a row.
func hasAdjacentStars(glob string) bool {
	prevStar := false
	for i := 0; i < len(glob); i++ {
		switch glob[i] {
		case '\\':
			i++
			prevStar = false
		case '*':
			if prevStar {
				return true
			}
			prevStar = true
		default:
			prevStar = false
		}
	}
	return false
}

// renderWith renders a template the way the mapper does, taking each
// placeholder's value from val (never NULL) through its filters.
func renderWith(t *Template, val func(col string) string) string {
	var sc scratch
	var b []byte
	for i := range t.parts {
		p := &t.parts[i]
		if p.isCol {
			b, _ = sc.appendValue(b, p, []byte(val(p.col)), false)
		} else {
			b = append(b, p.lit...)
		}
	}
	return string(b)
}

// globToken is one element of a Redis glob: a star, or a matcher of one byte.
type globToken struct {
	star  bool
	match func(c byte) bool
}

// parseRedisGlob tokenizes a pattern like Redis's stringmatchlen: '*', '?',
// '\x' (literal x), '[...]' classes with '^' negation, ranges and '\' escapes.
func parseRedisGlob(p string) []globToken {
	var toks []globToken
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '*':
			if len(toks) == 0 || !toks[len(toks)-1].star {
				toks = append(toks, globToken{star: true})
			}
		case '?':
			toks = append(toks, globToken{match: func(byte) bool { return true }})
		case '\\':
			if i+1 < len(p) {
				i++
			}
			lit := p[i]
			toks = append(toks, globToken{match: func(b byte) bool { return b == lit }})
		case '[':
			i++
			not := i < len(p) && p[i] == '^'
			if not {
				i++
			}
			var ranges [][2]byte
			for i < len(p) && p[i] != ']' {
				switch {
				case p[i] == '\\' && i+1 < len(p):
					i++
					ranges = append(ranges, [2]byte{p[i], p[i]})
				case i+2 < len(p) && p[i+1] == '-':
					lo, hi := p[i], p[i+2]
					if lo > hi {
						lo, hi = hi, lo
					}
					ranges = append(ranges, [2]byte{lo, hi})
					i += 2
				default:
					ranges = append(ranges, [2]byte{p[i], p[i]})
				}
				i++
			}
			// i is at ']' or past the end (Redis then treats the class as ended).
			toks = append(toks, globToken{match: func(b byte) bool {
				in := false
				for _, r := range ranges {
					if b >= r[0] && b <= r[1] {
						in = true
					}
				}
				return in != not
			}})
		default:
			toks = append(toks, globToken{match: func(b byte) bool { return b == c }})
		}
	}
	return toks
}

// redisGlobMatch reports whether s matches the Redis glob pattern. It uses
// the linear star-backtracking algorithm, which is exact because every
// non-star token matches exactly one byte.
func redisGlobMatch(pattern, s string) bool {
	toks := parseRedisGlob(pattern)
	ti, si := 0, 0
	starTi, starSi := -1, 0
	for si < len(s) {
		switch {
		case ti < len(toks) && toks[ti].star:
			starTi, starSi = ti, si
			ti++
		case ti < len(toks) && toks[ti].match(s[si]):
			ti++
			si++
		case starTi >= 0:
			starSi++
			ti, si = starTi+1, starSi
		default:
			return false
		}
	}
	for ti < len(toks) && toks[ti].star {
		ti++
	}
	return ti == len(toks)
}
