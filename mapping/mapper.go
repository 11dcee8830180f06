package mapping

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// Rule maps one table to key templates.
type Rule struct {
	Schema    string // default "public"
	Table     string
	Templates []*Template
	// AllowStaleOldKeys accepts that keys of the old row cannot be computed
	// for templates that use columns outside the replica identity; such
	// keys are skipped (and counted) instead of stopping the engine.
	AllowStaleOldKeys bool
	// Where names the rule for messages, e.g. "rules[1] (rules.yaml:12)".
	Where string
}

// QualifiedTable returns "schema.table".
func (r *Rule) QualifiedTable() string { return r.Schema + "." + r.Table }

// ErrOldValueUnavailable is wrapped when a key of the old row cannot be
// computed because the change does not carry a column the template needs.
var ErrOldValueUnavailable = errors.New("old value not in the change")

// ErrRuleBinding is wrapped when a rule does not fit the table definition
// that the server announced (a column was dropped or renamed, or the replica
// identity changed).
var ErrRuleBinding = errors.New("rule does not fit the table")

// Mapper renders keys for changes. It is used by one goroutine (the
// replication stream); only its counters may be read concurrently.
type Mapper struct {
	byTable map[string][]*Rule
	bound   map[uint32]*boundRelation
	buf     []byte

	skippedOldKeys atomic.Uint64
	nullKeys       atomic.Uint64
}

type boundRelation struct {
	rel       *replication.Relation
	templates []boundTemplate
}

type boundTemplate struct {
	t          *Template
	rule       *Rule
	colIdx     []int // per part; -1 for literals
	usesNonKey bool
}

// New builds a mapper from rules.
func New(rules []Rule) (*Mapper, error) {
	m := &Mapper{byTable: map[string][]*Rule{}, bound: map[uint32]*boundRelation{}}
	for i := range rules {
		r := &rules[i]
		if r.Schema == "" {
			r.Schema = "public"
		}
		if r.Table == "" || len(r.Templates) == 0 {
			return nil, fmt.Errorf("%s: a rule needs a table and at least one key template", r.Where)
		}
		m.byTable[r.QualifiedTable()] = append(m.byTable[r.QualifiedTable()], r)
	}
	return m, nil
}

// Tables returns the qualified names of the tables the rules cover, sorted.
func (m *Mapper) Tables() []string {
	var out []string
	seen := map[string]bool{}
	for _, rs := range m.byTable {
		for _, r := range rs {
			if !seen[r.QualifiedTable()] {
				seen[r.QualifiedTable()] = true
				out = append(out, r.QualifiedTable())
			}
		}
	}
	slices.Sort(out)
	return out
}

// Rules returns the rules for a qualified table name.
func (m *Mapper) Rules(table string) []*Rule { return m.byTable[table] }

// SkippedOldKeys counts old-row keys skipped under AllowStaleOldKeys.
func (m *Mapper) SkippedOldKeys() uint64 { return m.skippedOldKeys.Load() }

// NullKeys counts keys not produced because a template column was NULL.
func (m *Mapper) NullKeys() uint64 { return m.nullKeys.Load() }

// Bind prepares the rules of a relation the server announced. It is called
// for every Relation message, so a changed table definition is checked
// again; an error means the rules cannot be applied correctly to the table
// as it now is.
func (m *Mapper) Bind(rel *replication.Relation) error {
	rules := m.byTable[rel.QualifiedName()]
	if len(rules) == 0 {
		delete(m.bound, rel.ID)
		return nil
	}
	colIndex := make(map[string]int, len(rel.Columns))
	for i, c := range rel.Columns {
		colIndex[c.Name] = i
	}
	br := &boundRelation{rel: rel}
	var problems []string
	for _, r := range rules {
		for _, t := range r.Templates {
			bt := boundTemplate{t: t, rule: r, colIdx: make([]int, len(t.parts))}
			for i, p := range t.parts {
				bt.colIdx[i] = -1
				if !p.isCol {
					continue
				}
				idx, ok := colIndex[p.col]
				if !ok {
					problems = append(problems, fmt.Sprintf("%s: table %s has no column %q used by key template %q (was it dropped or renamed? fix rules.yaml and restart)", r.Where, rel.QualifiedName(), p.col, t.src))
					continue
				}
				bt.colIdx[i] = idx
				if !rel.Columns[idx].Key && rel.ReplicaIdentity != 'f' {
					bt.usesNonKey = true
				}
			}
			if bt.usesNonKey && !r.AllowStaleOldKeys {
				problems = append(problems, fmt.Sprintf("%s: key template %q uses a column outside the replica identity of %s (replica identity %s), so keys of the old row cannot be computed on UPDATE and DELETE; run ALTER TABLE %s REPLICA IDENTITY FULL, or set unsafe_allow_stale_old_keys: true on the rule to accept stale old keys", r.Where, t.src, rel.QualifiedName(), identityName(rel.ReplicaIdentity), rel.QualifiedName()))
			}
			br.templates = append(br.templates, bt)
		}
	}
	if len(problems) > 0 {
		delete(m.bound, rel.ID)
		return fmt.Errorf("%w: %s", ErrRuleBinding, strings.Join(problems, "; "))
	}
	m.bound[rel.ID] = br
	return nil
}

func identityName(b byte) string {
	switch b {
	case 'd':
		return "DEFAULT (primary key)"
	case 'n':
		return "NOTHING"
	case 'f':
		return "FULL"
	case 'i':
		return "USING INDEX"
	}
	return fmt.Sprintf("%q", b)
}

type side int

const (
	sideOld side = iota
	sideNew
)

type valueState int

const (
	valueOK valueState = iota
	valueNull
	valueUnknown
)

// value returns column idx of the old or new row image of ch.
func value(ch *replication.Change, s side, idx int) ([]byte, valueState) {
	rel := ch.Rel
	if s == sideNew {
		if idx >= len(ch.New.Values) {
			return nil, valueUnknown
		}
		v := ch.New.Values[idx]
		switch v.Kind {
		case replication.ValueText, replication.ValueBinary:
			return v.Data, valueOK
		case replication.ValueNull:
			return nil, valueNull
		}
		// Unchanged TOAST: the value is the old one.
		if ch.HasOld && idx < len(ch.Old.Values) {
			ov := ch.Old.Values[idx]
			if ov.Kind == replication.ValueText || ov.Kind == replication.ValueBinary {
				return ov.Data, valueOK
			}
		}
		return nil, valueUnknown
	}
	if ch.HasOld {
		if idx >= len(ch.Old.Values) {
			return nil, valueUnknown
		}
		v := ch.Old.Values[idx]
		switch v.Kind {
		case replication.ValueText, replication.ValueBinary:
			return v.Data, valueOK
		case replication.ValueNull:
			if ch.OldKind == 'O' || (idx < len(rel.Columns) && rel.Columns[idx].Key) {
				return nil, valueNull
			}
		}
		return nil, valueUnknown
	}
	// An update without an old image kept its replica identity: key columns
	// of the old row equal those of the new row.
	if ch.Op == replication.OpUpdate && idx < len(rel.Columns) && rel.Columns[idx].Key {
		return value(ch, sideNew, idx)
	}
	return nil, valueUnknown
}

// AppendKeys appends the keys of a row change to dst. Keys are unique within
// one call. Changes of tables without rules produce nothing.
func (m *Mapper) AppendKeys(dst []string, ch *replication.Change) ([]string, error) {
	br := m.bound[ch.Rel.ID]
	if br == nil {
		return dst, nil
	}
	start := len(dst)
	var err error
	switch ch.Op {
	case replication.OpInsert:
		dst, err = m.appendSide(dst, start, br, ch, sideNew)
	case replication.OpUpdate:
		if dst, err = m.appendSide(dst, start, br, ch, sideOld); err == nil {
			dst, err = m.appendSide(dst, start, br, ch, sideNew)
		}
	case replication.OpDelete:
		dst, err = m.appendSide(dst, start, br, ch, sideOld)
	default:
		err = fmt.Errorf("unknown change op %v", ch.Op)
	}
	return dst, err
}

func (m *Mapper) appendSide(dst []string, start int, br *boundRelation, ch *replication.Change, s side) ([]string, error) {
next:
	for ti := range br.templates {
		bt := &br.templates[ti]
		buf := m.buf[:0]
		for pi, p := range bt.t.parts {
			if !p.isCol {
				buf = append(buf, p.lit...)
				continue
			}
			v, st := value(ch, s, bt.colIdx[pi])
			switch st {
			case valueNull:
				m.nullKeys.Add(1)
				m.buf = buf
				continue next
			case valueUnknown:
				m.buf = buf
				// With the opt-in, a key whose value the change cannot carry
				// (an old value outside the replica identity, or an unchanged
				// TOASTed value with no old image) is skipped and counted.
				if bt.rule.AllowStaleOldKeys {
					m.skippedOldKeys.Add(1)
					continue next
				}
				which := "old"
				if s == sideNew {
					which = "new"
				}
				return dst, fmt.Errorf("%w: %s of %s: key template %q needs column %q of the %s row, which the change does not carry (replica identity %s); run ALTER TABLE %s REPLICA IDENTITY FULL",
					ErrOldValueUnavailable, ch.Op, br.rel.QualifiedName(), bt.t.src, p.col, which, identityName(br.rel.ReplicaIdentity), br.rel.QualifiedName())
			}
			buf = append(buf, v...)
		}
		m.buf = buf
		for _, k := range dst[start:] {
			if k == string(buf) {
				continue next
			}
		}
		dst = append(dst, string(buf))
	}
	return dst, nil
}

// AppendGlobs appends the SCAN patterns that cover every key of a truncated
// relation's rules. Relations without rules produce nothing.
func (m *Mapper) AppendGlobs(dst []string, rel *replication.Relation) []string {
	start := len(dst)
	for _, r := range m.byTable[rel.QualifiedName()] {
		for _, t := range r.Templates {
			if g := t.Glob(); !slices.Contains(dst[start:], g) {
				dst = append(dst, g)
			}
		}
	}
	return dst
}
