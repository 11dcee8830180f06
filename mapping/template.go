package mapping

import (
	"bytes"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// A Template is a parsed key template such as "user:{id}:orders" or
// "user:email:{email|trim|lower}".
//
// Syntax: literal text, with {column} placeholders. "{{" and "}}" stand for
// literal braces. A column name may contain any character except '{', '}'
// and '|'; surrounding spaces are trimmed. A placeholder may name filters
// after the column, separated by '|' and applied left to right:
//
//	lower          Unicode lower case (Go's unicode.ToLower per code point,
//	               as strings.ToLower; bytes that are not UTF-8 are kept)
//	trim           strip leading and trailing Unicode white space (strings.TrimSpace)
//	urlencode      exactly Go's url.QueryEscape: A-Z a-z 0-9 - _ . ~ are kept,
//	               a space becomes '+', every other byte %XX (upper-case hex)
//	sha1           the SHA-1 digest as 40 lower-case hex digits (for long values)
//	default:TEXT   a NULL becomes TEXT, taken verbatim (spaces included) up to
//	               the next '|' or '}'; TEXT cannot contain '{', '}' or '|'
//
// Filters other than default pass a NULL through unchanged; a NULL left at
// the end of the chain makes no key. A placeholder's value is inserted once
// and never re-expanded, so a value containing "{x}" stays literal.
type Template struct {
	src   string
	parts []part
}

type part struct {
	lit     string // literal text (when !isCol)
	col     string // column name of a placeholder
	isCol   bool
	filters []filter
}

type filterKind uint8

const (
	filterLower filterKind = iota + 1
	filterTrim
	filterURLEncode
	filterSHA1
	filterDefault
)

type filter struct {
	kind filterKind
	arg  []byte // default's text
}

// KnownFilters lists the template filters, as error messages name them.
const KnownFilters = "lower, trim, urlencode, sha1, default:TEXT"

// ErrTemplate is wrapped by every template parse error.
var ErrTemplate = errors.New("invalid key template")

// ParseTemplate parses a key template. Errors wrap ErrTemplate and say where
// in the template the problem is.
func ParseTemplate(src string) (*Template, error) {
	if src == "" {
		return nil, fmt.Errorf("%w: empty template", ErrTemplate)
	}
	t := &Template{src: src}
	var lit strings.Builder
	flushLit := func() {
		if lit.Len() > 0 {
			t.parts = append(t.parts, part{lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(src); {
		c := src[i]
		switch c {
		case '{':
			if i+1 < len(src) && src[i+1] == '{' {
				lit.WriteByte('{')
				i += 2
				continue
			}
			end := strings.IndexByte(src[i+1:], '}')
			if end < 0 {
				return nil, fmt.Errorf("%w %q: '{' at offset %d is never closed (write '{{' for a literal brace)", ErrTemplate, src, i)
			}
			body := src[i+1 : i+1+end]
			if strings.ContainsAny(body, "{") {
				return nil, fmt.Errorf("%w %q: '{' inside a placeholder at offset %d", ErrTemplate, src, i)
			}
			p, err := parsePlaceholder(src, body, i)
			if err != nil {
				return nil, err
			}
			flushLit()
			t.parts = append(t.parts, p)
			i += end + 2
		case '}':
			if i+1 < len(src) && src[i+1] == '}' {
				lit.WriteByte('}')
				i += 2
				continue
			}
			return nil, fmt.Errorf("%w %q: unmatched '}' at offset %d (write '}}' for a literal brace)", ErrTemplate, src, i)
		default:
			lit.WriteByte(c)
			i++
		}
	}
	flushLit()
	if len(t.parts) == 0 || t.parts[0].isCol {
		return nil, fmt.Errorf("%w %q: a template must start with literal text (a prefix such as \"user:\"); without one, TRUNCATE's pattern would match keys of other rules and applications", ErrTemplate, src)
	}
	return t, nil
}

// parsePlaceholder parses the text between '{' and '}' (at offset off of src).
func parsePlaceholder(src, body string, off int) (part, error) {
	segs := strings.Split(body, "|")
	name := strings.TrimSpace(segs[0])
	if name == "" {
		if len(segs) > 1 {
			return part{}, fmt.Errorf("%w %q: placeholder {%s} at offset %d has no column name before its filters", ErrTemplate, src, body, off)
		}
		return part{}, fmt.Errorf("%w %q: empty placeholder {} at offset %d", ErrTemplate, src, off)
	}
	p := part{col: name, isCol: true}
	hasDefault := false
	for _, seg := range segs[1:] {
		spec := strings.TrimLeft(seg, " \t\r\n")
		if arg, ok := strings.CutPrefix(spec, "default:"); ok {
			if hasDefault {
				return part{}, fmt.Errorf("%w %q: placeholder {%s} has two default filters; only the first can ever apply", ErrTemplate, src, body)
			}
			hasDefault = true
			p.filters = append(p.filters, filter{kind: filterDefault, arg: []byte(arg)})
			continue
		}
		var k filterKind
		switch fname := strings.TrimSpace(spec); fname {
		case "lower":
			k = filterLower
		case "trim":
			k = filterTrim
		case "urlencode":
			k = filterURLEncode
		case "sha1":
			k = filterSHA1
		case "":
			return part{}, fmt.Errorf("%w %q: empty filter in placeholder {%s} (known filters: %s)", ErrTemplate, src, body, KnownFilters)
		case "default":
			return part{}, fmt.Errorf("%w %q: filter default in placeholder {%s} needs its text: default:TEXT", ErrTemplate, src, body)
		default:
			return part{}, fmt.Errorf("%w %q: unknown filter %q in placeholder {%s} (known filters: %s)", ErrTemplate, src, fname, body, KnownFilters)
		}
		p.filters = append(p.filters, filter{kind: k})
	}
	return p, nil
}

// String returns the template source.
func (t *Template) String() string { return t.src }

// Columns returns the column names the template uses, in order, without duplicates.
func (t *Template) Columns() []string {
	var cols []string
	seen := map[string]bool{}
	for _, p := range t.parts {
		if p.isCol && !seen[p.col] {
			seen[p.col] = true
			cols = append(cols, p.col)
		}
	}
	return cols
}

// Glob returns a Redis SCAN MATCH pattern that matches every key the template
// can render: placeholders become '*' (whatever their filters), glob
// metacharacters in the literal text are escaped, and adjacent stars are
// merged.
func (t *Template) Glob() string {
	var b strings.Builder
	lastStar := false
	for _, p := range t.parts {
		if p.isCol {
			if !lastStar {
				b.WriteByte('*')
				lastStar = true
			}
			continue
		}
		for i := 0; i < len(p.lit); i++ {
			switch c := p.lit[i]; c {
			case '*', '?', '[', ']', '\\':
				b.WriteByte('\\')
				b.WriteByte(c)
			default:
				b.WriteByte(c)
			}
		}
		lastStar = false
	}
	return b.String()
}

// scratch holds the two buffers a filter chain alternates between, reused
// from one rendering to the next.
type scratch struct {
	buf [2][]byte
}

// appendValue appends a placeholder's value after its filters to dst. v is
// the column's value and null says it is NULL. ok is false when the value
// is NULL after the filters: the template then makes no key.
func (sc *scratch) appendValue(dst []byte, p *part, v []byte, null bool) (_ []byte, ok bool) {
	cur := v
	in := -1 // scratch buffer holding cur, -1 for none
	for _, f := range p.filters {
		if f.kind == filterDefault {
			if null {
				cur, null, in = f.arg, false, -1
			}
			continue
		}
		if null {
			continue
		}
		if f.kind == filterTrim {
			cur = bytes.TrimSpace(cur)
			continue
		}
		out := 0
		if in == 0 {
			out = 1
		}
		b := sc.buf[out][:0]
		switch f.kind {
		case filterLower:
			b = appendLower(b, cur)
		case filterURLEncode:
			b = appendQueryEscape(b, cur)
		case filterSHA1:
			sum := sha1.Sum(cur)
			b = hex.AppendEncode(b, sum[:])
		}
		sc.buf[out] = b
		cur, in = b, out
	}
	if null {
		return dst, false
	}
	return append(dst, cur...), true
}

// appendLower appends s in lower case, like strings.ToLower for valid
// UTF-8; bytes that are not UTF-8 are copied unchanged.
func appendLower(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			dst = append(dst, c)
			i++
			continue
		}
		r, n := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && n == 1 {
			dst = append(dst, c)
			i++
			continue
		}
		dst = utf8.AppendRune(dst, unicode.ToLower(r))
		i += n
	}
	return dst
}

// appendQueryEscape appends s escaped exactly as url.QueryEscape does.
func appendQueryEscape(dst, s []byte) []byte {
	const hexUpper = "0123456789ABCDEF"
	for _, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '_', c == '.', c == '~':
			dst = append(dst, c)
		case c == ' ':
			dst = append(dst, '+')
		default:
			dst = append(dst, '%', hexUpper[c>>4], hexUpper[c&15])
		}
	}
	return dst
}
