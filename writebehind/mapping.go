package writebehind

import (
	"errors"
	"fmt"
	"strings"
)

// Mode says how a mapping's writes reach its column.
type Mode int

const (
	// Add: Incr adds a delta to the Redis value; the flusher adds the sum
	// of a window's deltas to the column (COALESCE(col, 0) + sum), creating
	// the row with col = sum when it does not exist. The column must be
	// numeric.
	Add Mode = iota + 1
	// Set: Set replaces the Redis value; the flusher writes the last value
	// of a window (last in stream order, which is Redis's order) to the
	// column, creating the row when it does not exist.
	Set
)

func (m Mode) String() string {
	switch m {
	case Add:
		return "add"
	case Set:
		return "set"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Mapping declares one family of write-behind keys and where their values
// go: every key that Key matches is one row of Table (identified by the
// placeholders' columns, which must be exactly the columns of a unique
// index or the primary key) and its value is Column of that row.
//
//	{Key: "post:{id}:views", Table: "post_stats", Column: "views", Mode: Add}
//
// makes Incr(ctx, "post:42:views", 1) add 1 to post_stats.views of the row
// with id 42 (id given to PostgreSQL as the text "42", cast to the column's
// type).
type Mapping struct {
	// Key is the key template: literal text and {column} placeholders. Two
	// placeholders must be separated by literal text, and a column's value
	// must not contain the literal that follows its placeholder (it ends
	// there). Values must not be empty.
	Key string
	// Table is the table, optionally schema-qualified ("stats.post_stats");
	// unqualified names are resolved with the flusher's search_path.
	Table string
	// Column is the column the value goes to.
	Column string
	// Mode is Add (counters) or Set (last write wins).
	Mode Mode
}

// template is a parsed key template: lits[0] {cols[0]} lits[1] {cols[1]} ...
// lits[len(cols)], where lits[0] and the last literal may be empty.
type template struct {
	lits []string
	cols []string
}

// parseTemplate parses a key template. It is strict: unbalanced braces,
// empty or non-identifier names, adjacent placeholders and a column used
// twice are errors.
func parseTemplate(s string) (template, error) {
	var t template
	if s == "" {
		return t, errors.New("empty key template")
	}
	var lit strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		switch c {
		case '}':
			return t, fmt.Errorf("key template %q: '}' at byte %d without '{'", s, i)
		case '{':
			end := strings.IndexByte(s[i+1:], '}')
			if end < 0 {
				return t, fmt.Errorf("key template %q: '{' at byte %d is not closed", s, i)
			}
			name := s[i+1 : i+1+end]
			if !isIdent(name) {
				return t, fmt.Errorf("key template %q: placeholder {%s} is not a column name (letters, digits, _; not starting with a digit)", s, name)
			}
			if len(t.cols) > 0 && lit.Len() == 0 {
				return t, fmt.Errorf("key template %q: placeholders {%s} and {%s} must be separated by literal text, or a key could not be split into their values", s, t.cols[len(t.cols)-1], name)
			}
			for _, c := range t.cols {
				if c == name {
					return t, fmt.Errorf("key template %q: column %s appears twice", s, name)
				}
			}
			t.lits = append(t.lits, lit.String())
			lit.Reset()
			t.cols = append(t.cols, name)
			i += end + 2
		default:
			lit.WriteByte(c)
			i++
		}
	}
	t.lits = append(t.lits, lit.String())
	if len(t.cols) == 0 {
		return t, fmt.Errorf("key template %q has no {column} placeholder, so it names no row", s)
	}
	return t, nil
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'):
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// match splits key into the placeholders' values. Each value ends at the
// first occurrence of the literal that follows it (the last one, if the
// template ends with a placeholder, takes the rest). It reports false when
// key does not have the template's shape or a value would be empty. So a
// value must not contain the literal that follows it, nor end with the
// start of a literal that repeats itself ("{a}00" cannot tell the value
// "0" in "000"): such keys are not matched, and Writer calls refuse them.
func (t template) match(key string) ([]string, bool) {
	vals := make([]string, len(t.cols))
	if !t.matchInto(key, vals) {
		return nil, false
	}
	return vals, true
}

// matchInto is match storing the values into vals, or, with vals nil,
// only checking (the writer's hot path, which needs no values).
func (t template) matchInto(key string, vals []string) bool {
	if !strings.HasPrefix(key, t.lits[0]) {
		return false
	}
	rest := key[len(t.lits[0]):]
	for i := range t.cols {
		var v string
		next := t.lits[i+1]
		if next == "" { // the last placeholder, at the end of the template
			v, rest = rest, ""
		} else {
			j := strings.Index(rest, next)
			if j < 0 {
				return false
			}
			v, rest = rest[:j], rest[j+len(next):]
		}
		if v == "" {
			return false
		}
		if vals != nil {
			vals[i] = v
		}
	}
	return rest == ""
}

// compiled is a validated mapping.
type compiled struct {
	Mapping
	index  int // position in the declared mappings
	tmpl   template
	schema string // "" when Table is unqualified
	table  string
}

// compileMappings validates ms. The same key may not be declared twice,
// and each (table, column) has one mapping, so that the flusher's writes to
// a column come from one family of keys.
func compileMappings(ms []Mapping) ([]compiled, error) {
	if len(ms) == 0 {
		return nil, errors.New("no mappings: declare at least one key template with its table and column")
	}
	out := make([]compiled, 0, len(ms))
	var errs []error
	seenKey := map[string]bool{}
	seenCol := map[string]string{}
	for i, m := range ms {
		where := fmt.Sprintf("mapping %d (%s)", i, m.Key)
		t, err := parseTemplate(m.Key)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		c := compiled{Mapping: m, index: i, tmpl: t}
		if m.Mode != Add && m.Mode != Set {
			errs = append(errs, fmt.Errorf("%s: Mode must be writebehind.Add or writebehind.Set", where))
		}
		parts := strings.Split(m.Table, ".")
		switch {
		case len(parts) == 1 && isIdent(parts[0]):
			c.table = parts[0]
		case len(parts) == 2 && isIdent(parts[0]) && isIdent(parts[1]):
			c.schema, c.table = parts[0], parts[1]
		default:
			errs = append(errs, fmt.Errorf("%s: Table %q must be table or schema.table (unquoted identifiers)", where, m.Table))
		}
		if !isIdent(m.Column) {
			errs = append(errs, fmt.Errorf("%s: Column %q is not a column name", where, m.Column))
		}
		for _, k := range t.cols {
			if k == m.Column {
				errs = append(errs, fmt.Errorf("%s: Column %s is also a key column", where, m.Column))
			}
		}
		if seenKey[m.Key] {
			errs = append(errs, fmt.Errorf("%s: key template declared twice", where))
		}
		seenKey[m.Key] = true
		col := m.Table + "." + m.Column
		if prev, ok := seenCol[col]; ok {
			errs = append(errs, fmt.Errorf("%s: column %s is already the target of %s; one column, one key family", where, col, prev))
		}
		seenCol[col] = m.Key
		out = append(out, c)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// resolve finds the mapping of key: the first in declaration order whose
// template matches. Writer and flusher must be given the same mappings.
func resolve(ms []compiled, key string) (*compiled, []string, error) {
	for i := range ms {
		if vals, ok := ms[i].tmpl.match(key); ok {
			return &ms[i], vals, nil
		}
	}
	return nil, nil, fmt.Errorf("%w: %q", ErrUnmapped, key)
}

// lookup is resolve without the placeholder values (no allocation).
func lookup(ms []compiled, key string) (*compiled, error) {
	for i := range ms {
		if ms[i].tmpl.matchInto(key, nil) {
			return &ms[i], nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrUnmapped, key)
}
