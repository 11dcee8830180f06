package mapping

import (
	"errors"
	"fmt"
	"strings"
)

// A Template is a parsed key template such as "user:{id}:orders".
//
// Syntax: literal text, with {column} placeholders. "{{" and "}}" stand for
// literal braces. A column name may contain any character except '{', '}'
// and '|' ('|' is reserved for filters); surrounding spaces are trimmed.
// A placeholder's value is inserted once and never re-expanded, so a value
// containing "{x}" stays literal.
type Template struct {
	src   string
	parts []part
}

type part struct {
	lit    string // literal text (when col == "")
	col    string // column name of a placeholder
	isCol  bool
	colIdx int // bound column index, filled by bind
}

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
			name := src[i+1 : i+1+end]
			if strings.ContainsAny(name, "{") {
				return nil, fmt.Errorf("%w %q: '{' inside a placeholder at offset %d", ErrTemplate, src, i)
			}
			if strings.Contains(name, "|") {
				return nil, fmt.Errorf("%w %q: filters ('|') are not supported yet in placeholder {%s}", ErrTemplate, src, name)
			}
			name = strings.TrimSpace(name)
			if name == "" {
				return nil, fmt.Errorf("%w %q: empty placeholder {} at offset %d", ErrTemplate, src, i)
			}
			flushLit()
			t.parts = append(t.parts, part{col: name, isCol: true})
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
// can render: placeholders become '*', glob metacharacters in the literal
// text are escaped, and adjacent stars are merged.
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
