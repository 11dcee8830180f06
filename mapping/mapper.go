package mapping

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"unsafe"

	"cel.dev/cel-go/common/types"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/internal/jsonstr"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// OpSet is a set of the operations a rule applies to. The zero value means
// every operation.
type OpSet uint8

// Operations of an OpSet.
const (
	OnInsert OpSet = 1 << iota
	OnUpdate
	OnDelete
	OnTruncate

	AllOps = OnInsert | OnUpdate | OnDelete | OnTruncate
)

var opNames = []struct {
	op   OpSet
	name string
}{{OnInsert, "insert"}, {OnUpdate, "update"}, {OnDelete, "delete"}, {OnTruncate, "truncate"}}

// OpNames is the list of operation names, as rules.yaml spells them.
const OpNames = "insert, update, delete, truncate"

// ParseOp returns the operation of a name such as "insert".
func ParseOp(name string) (OpSet, bool) {
	for _, o := range opNames {
		if o.name == name {
			return o.op, true
		}
	}
	return 0, false
}

// Has reports whether the set contains op; the zero set contains every operation.
func (s OpSet) Has(op OpSet) bool { return s == 0 || s&op != 0 }

func (s OpSet) String() string {
	if s == 0 {
		s = AllOps
	}
	var names []string
	for _, o := range opNames {
		if s&o.op != 0 {
			names = append(names, o.name)
		}
	}
	return "[" + strings.Join(names, ", ") + "]"
}

func opOf(op replication.Op) OpSet {
	switch op {
	case replication.OpInsert:
		return OnInsert
	case replication.OpUpdate:
		return OnUpdate
	case replication.OpDelete:
		return OnDelete
	}
	return 0
}

// Rule maps one table to key templates.
type Rule struct {
	Schema    string // default "public"
	Table     string
	Templates []*Template
	// AllowStaleOldKeys accepts that keys of the old row cannot be computed
	// for templates that use columns outside the replica identity; such
	// keys are skipped (and counted) instead of stopping the engine.
	AllowStaleOldKeys bool
	// Ops are the operations the rule applies to; zero means all.
	Ops OpSet
	// WhenChanged, when set, limits UPDATEs to those that change at least
	// one of these columns. An unchanged TOASTed value ('u') is unchanged;
	// a column whose old value the change does not carry counts as changed.
	WhenChanged []string
	// When, when set, is evaluated for every INSERT, UPDATE and DELETE the
	// rule would otherwise apply to; false skips the change for this rule.
	When *Condition
	// Actions say what the rule does with its keys; the zero value deletes them.
	Actions Actions
	// Where names the rule for messages, e.g. "rules[1] (rules.yaml:12)".
	Where string

	qualified string // schema.table, set by New
	index     int    // place in the mapper's rules, set by New
}

// QualifiedTable returns "schema.table".
func (r *Rule) QualifiedTable() string {
	if r.qualified != "" {
		return r.qualified
	}
	return r.Schema + "." + r.Table
}

// ErrOldValueUnavailable is wrapped when a key of the old row cannot be
// computed because the change does not carry a column the template needs.
var ErrOldValueUnavailable = errors.New("old value not in the change")

// ErrRuleBinding is wrapped when a rule does not fit the table definition
// that the server announced (a column was dropped or renamed, or the replica
// identity changed).
var ErrRuleBinding = errors.New("rule does not fit the table")

// ErrCondition is wrapped when a rule's when condition fails to evaluate.
var ErrCondition = errors.New("when condition failed")

// Mapper renders keys for changes. It is used by one goroutine (the
// replication stream); only its counters may be read concurrently.
type Mapper struct {
	byTable map[string][]*Rule
	rules   []*Rule // in the order given
	bound   map[uint32]*boundRelation
	// known maps relation IDs to the rule table they are (from the catalog
	// at start, and from every Relation message bound since), and
	// partitions maps the leaf partitions of partitioned rule tables to
	// their root: a Relation message that names them otherwise means the
	// table left its rules (moved.go).
	known      map[uint32]string
	partitions map[string]string
	buf        []byte
	sc         scratch
	log        *zap.Logger

	nullWarned map[*Rule]bool

	// ordered is set when a rule refreshes keys: plain deletes then go as
	// ActDelete actions, in change order with the refresh writes, so that
	// a write and a delete of one key in one transaction end as its
	// statements say (Event.Keys would all be applied first).
	ordered bool

	skippedOldKeys   atomic.Uint64
	nullKeys         atomic.Uint64
	skippedRules     atomic.Uint64
	refreshFallbacks atomic.Uint64

	perRule []ruleCounters // the rules' counters, those of a table's rules side by side
	counter []int          // index in perRule by Rule.index

	oldKeys, newKeys []string // keys of one rule's old and new row (non-plain rules)
	arena            []byte   // block that keys are carved from (see intern)
	allKeys          []string // old and new keys of one rule (non-plain rules)
	rowBuf           []byte
}

// Option configures a Mapper.
type Option func(*Mapper)

// WithLogger sets the logger for warnings (a NULL that made no key is
// logged once per rule). The default logs nothing.
func WithLogger(l *zap.Logger) Option {
	return func(m *Mapper) {
		if l != nil {
			m.log = l
		}
	}
}

type boundRelation struct {
	rel     *replication.Relation
	rules   []boundRule
	hasWhen bool
	// unbound, when set, is returned for every change: the relation is a
	// rule table's partition arriving as itself (moved.go).
	unbound error
}

// boundRule is a rule bound to a relation. What every change reads of the
// rule is copied in (ops, plain, when, the counters' address), so that
// mapping a change of one of many tables touches few cache lines.
type boundRule struct {
	// What every change reads comes first (one cache line).
	ops        OpSet
	plain      bool // rule.Actions.plain()
	hasChanged bool // len(changed) > 0
	when       *Condition
	counters   *ruleCounters
	templates  []boundTemplate
	rule       *Rule

	changed     []int // column indexes of WhenChanged
	refreshCols []int // column indexes of the refreshed row
	// refreshNames are the refreshed columns' names as rowJSON writes
	// them, quoted and followed by ':' (rendered once, at Bind).
	refreshNames []string
}

type boundTemplate struct {
	segs       []seg // per part of t
	t          *Template
	rule       *Rule
	usesNonKey bool
}

// seg is a template part bound to a relation, what rendering a key reads.
type seg struct {
	lit string // literal text (col < 0)
	col int32  // column index of a placeholder; -1 for literal text
	key bool   // the column is a replica identity column (Column.Key)
	p   *part  // the placeholder (column name, filters)
}

// pack lays out what mapping a change of the relation reads, the rules'
// templates, their bound parts and literal text, each in one array for
// all the relation's rules: with rules over many tables, a change then
// touches a few cache lines of its table's rules instead of one per
// template, part list and literal (issue 15: 1,000 rules over 500 tables
// cost 1.28x two rules on one table per change).
func (br *boundRelation) pack() {
	var nt, ns, nl int
	for _, r := range br.rules {
		nt += len(r.templates)
		for _, bt := range r.templates {
			ns += len(bt.segs)
			for _, sg := range bt.segs {
				nl += len(sg.lit)
			}
		}
	}
	tpls := make([]boundTemplate, 0, nt)
	segs := make([]seg, 0, ns)
	lits := make([]byte, 0, nl)
	for _, r := range br.rules {
		for _, bt := range r.templates {
			for _, sg := range bt.segs {
				lits = append(lits, sg.lit...)
			}
		}
	}
	text := string(lits)
	off := 0
	for i := range br.rules {
		r := &br.rules[i]
		first := len(tpls)
		for _, bt := range r.templates {
			s0 := len(segs)
			for _, sg := range bt.segs {
				sg.lit = text[off : off+len(sg.lit)]
				off += len(sg.lit)
				segs = append(segs, sg)
			}
			bt.segs = segs[s0:len(segs):len(segs)]
			tpls = append(tpls, bt)
		}
		r.templates = tpls[first:len(tpls):len(tpls)]
	}
}

// New builds a mapper from rules.
func New(rules []Rule, opts ...Option) (*Mapper, error) {
	m := &Mapper{byTable: map[string][]*Rule{}, bound: map[uint32]*boundRelation{}, known: map[uint32]string{}, partitions: map[string]string{},
		log: zap.NewNop(), nullWarned: map[*Rule]bool{}}
	for _, o := range opts {
		o(m)
	}
	for i := range rules {
		r := &rules[i]
		if r.Schema == "" {
			r.Schema = "public"
		}
		if r.Table == "" || (len(r.Templates) == 0 && r.Actions.usesKeys()) {
			return nil, fmt.Errorf("%s: a rule needs a table and at least one key template", r.Where)
		}
		if r.Actions.Generation && r.Actions.GenerationKey == "" {
			return nil, fmt.Errorf("%s: the generation action needs a generation key", r.Where)
		}
		r.qualified = r.Schema + "." + r.Table
		r.index = len(m.rules)
		if r.Actions.Refresh {
			m.ordered = true
		}
		m.byTable[r.QualifiedTable()] = append(m.byTable[r.QualifiedTable()], r)
		m.rules = append(m.rules, r)
	}
	m.perRule = make([]ruleCounters, len(m.rules))
	m.counter = make([]int, len(m.rules))
	next := 0
	for _, t := range m.Tables() {
		for _, r := range m.byTable[t] {
			m.counter[r.index] = next
			next++
		}
	}
	return m, nil
}

type ruleCounters struct {
	applied, skipped, outputs atomic.Uint64
}

// RuleStats are running totals of one rule.
type RuleStats struct {
	Rule    *Rule
	Applied uint64 // changes the rule applied to
	Skipped uint64 // changes its ops, when_changed or when let pass
	Outputs uint64 // keys and actions it produced (before deduplication)
}

// Stats returns the totals of every rule, in rule order; safe to call
// from any goroutine.
func (m *Mapper) Stats() []RuleStats {
	out := make([]RuleStats, len(m.rules))
	for i, r := range m.rules {
		c := &m.perRule[m.counter[i]]
		out[i] = RuleStats{Rule: r, Applied: c.applied.Load(), Skipped: c.skipped.Load(), Outputs: c.outputs.Load()}
	}
	return out
}

// Index is the rule's place in its mapper, from 0.
func (r *Rule) Index() int { return r.index }

// AllRules returns every rule, in the order New was given them.
func (m *Mapper) AllRules() []*Rule { return m.rules }

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

// SkippedRules counts changes a rule let pass because of its ops,
// when_changed or when.
func (m *Mapper) SkippedRules() uint64 { return m.skippedRules.Load() }

// RefreshFallbacks counts keys the refresh action deleted instead of
// writing, because the change did not carry every selected column.
func (m *Mapper) RefreshFallbacks() uint64 { return m.refreshFallbacks.Load() }

// Bind prepares the rules of a relation the server announced. It is called
// for every Relation message, so a changed table definition is checked
// again; an error means the rules cannot be applied correctly to the table
// as it now is.
func (m *Mapper) Bind(rel *replication.Relation) error {
	rules := m.byTable[rel.QualifiedName()]
	if err := m.moved(rel); err != nil {
		delete(m.bound, rel.ID)
		return err
	}
	if len(rules) == 0 {
		delete(m.bound, rel.ID)
		if br := m.partitionTrap(rel); br != nil {
			m.bound[rel.ID] = br
		}
		return nil
	}
	colIndex := make(map[string]int, len(rel.Columns))
	for i, c := range rel.Columns {
		colIndex[c.Name] = i
	}
	br := &boundRelation{rel: rel}
	var problems []string
	for _, r := range rules {
		bR := boundRule{rule: r, ops: r.Ops, plain: r.Actions.plain(), when: r.When, counters: &m.perRule[m.counter[r.index]]}
		for _, t := range r.Templates {
			bt := boundTemplate{t: t, rule: r, segs: make([]seg, len(t.parts))}
			for i := range t.parts {
				p := &t.parts[i]
				bt.segs[i] = seg{lit: p.lit, col: -1, p: p}
				if !p.isCol {
					continue
				}
				idx, ok := colIndex[p.col]
				if !ok {
					problems = append(problems, fmt.Sprintf("%s: table %s has no column %q used by key template %q (was it dropped or renamed? fix rules.yaml and restart)", r.Where, rel.QualifiedName(), p.col, t.src))
					continue
				}
				bt.segs[i].col = int32(idx)
				bt.segs[i].key = rel.Columns[idx].Key
				if !rel.Columns[idx].Key && rel.ReplicaIdentity != 'f' {
					bt.usesNonKey = true
				}
			}
			if bt.usesNonKey && !r.AllowStaleOldKeys {
				problems = append(problems, fmt.Sprintf("%s: key template %q uses a column outside the replica "+
					"identity of %s (replica identity %s), so keys of the old row cannot be computed on UPDATE "+
					"and DELETE; run ALTER TABLE %s REPLICA IDENTITY FULL, or set unsafe_allow_stale_old_keys: "+
					"true on the rule to accept stale old keys",
					r.Where, t.src, rel.QualifiedName(), IdentityName(rel.ReplicaIdentity), rel.QualifiedName()))
			}
			bR.templates = append(bR.templates, bt)
		}
		for _, c := range r.WhenChanged {
			idx, ok := colIndex[c]
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: table %s has no column %q named in when_changed (was it dropped or renamed? fix rules.yaml and restart)", r.Where, rel.QualifiedName(), c))
				continue
			}
			bR.changed = append(bR.changed, idx)
		}
		bR.hasChanged = len(bR.changed) > 0
		if r.Actions.Refresh {
			if len(r.Actions.RefreshColumns) == 0 {
				for i := range rel.Columns {
					bR.refreshCols = append(bR.refreshCols, i)
				}
			}
			for _, c := range r.Actions.RefreshColumns {
				idx, ok := colIndex[c]
				if !ok {
					problems = append(problems, fmt.Sprintf("%s: table %s has no column %q named in refresh_columns (was it dropped or renamed? fix rules.yaml and restart)", r.Where, rel.QualifiedName(), c))
					continue
				}
				bR.refreshCols = append(bR.refreshCols, idx)
			}
			for _, idx := range bR.refreshCols {
				bR.refreshNames = append(bR.refreshNames, string(append(jsonstr.Append(nil, rel.Columns[idx].Name), ':')))
			}
		}
		if r.When != nil {
			br.hasWhen = true
			oldCols, newCols := r.When.Columns()
			for _, c := range slices.Concat(oldCols, newCols) {
				if _, ok := colIndex[c]; !ok {
					problems = append(problems, fmt.Sprintf("%s: table %s has no column %q used by the when condition %q (was it dropped or renamed? fix rules.yaml and restart)", r.Where, rel.QualifiedName(), c, r.When.src))
				}
			}
		}
		br.rules = append(br.rules, bR)
	}
	if len(problems) > 0 {
		delete(m.bound, rel.ID)
		return fmt.Errorf("%w: %s", ErrRuleBinding, strings.Join(slices.Compact(problems), "; "))
	}
	br.pack()
	m.bound[rel.ID] = br
	m.known[rel.ID] = rel.QualifiedName()
	return nil
}

// IdentityName names a replica identity (pg_class.relreplident) for
// messages: "DEFAULT (primary key)", "NOTHING", "FULL", "USING INDEX".
func IdentityName(b byte) string {
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

func (s side) String() string {
	if s == sideNew {
		return "new"
	}
	return "old"
}

type valueState int

const (
	valueOK valueState = iota
	valueNull
	valueUnknown
)

// value returns column idx of the old or new row image of ch.
func value(ch *replication.Change, s side, idx int) ([]byte, valueState) {
	return valueKey(ch, s, idx, idx < len(ch.Rel.Columns) && ch.Rel.Columns[idx].Key)
}

// valueKey is value, told whether column idx is a replica identity column
// of ch.Rel (Column.Key).
func valueKey(ch *replication.Change, s side, idx int, key bool) ([]byte, valueState) {
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
			// Only a whole old row ('O') says that a column is NULL. A 'K'
			// image carries the replica identity columns, which are never
			// NULL (primary key, or an index on NOT NULL columns): a NULL
			// there is a column the image leaves out. This also holds when
			// a partition's identity is narrower than its root's
			// (publish_via_partition_root), where the root's key flags
			// would claim more than the image carries.
			if ch.OldKind == 'O' {
				return nil, valueNull
			}
		}
		return nil, valueUnknown
	}
	// An update without an old image kept its replica identity: key columns
	// of the old row equal those of the new row.
	if ch.Op == replication.OpUpdate && key {
		return valueKey(ch, sideNew, idx, key)
	}
	return nil, valueUnknown
}

// columnChanged reports whether an UPDATE changed column idx, counting a
// column whose old value is unknown as changed.
func columnChanged(ch *replication.Change, idx int) bool {
	if idx >= len(ch.New.Values) {
		return true
	}
	nv := ch.New.Values[idx]
	if nv.Kind == replication.ValueUnchanged {
		return false
	}
	ov, st := value(ch, sideOld, idx)
	switch st {
	case valueUnknown:
		return true
	case valueNull:
		return nv.Kind != replication.ValueNull
	}
	return nv.Kind == replication.ValueNull || !bytes.Equal(ov, nv.Data)
}

// skip says why a rule let a change pass.
type skip uint8

const (
	skipNone skip = iota
	skipOp
	skipUnchanged
	skipWhenFalse
)

// AppendKeys appends the keys a row change deletes with the sink's command
// to dst (the other actions are dropped). Keys are unique within one call.
func (m *Mapper) AppendKeys(dst []string, ch *replication.Change) ([]string, error) {
	dst, _, err := m.AppendChange(dst, nil, ch)
	return dst, err
}

// AppendChange appends the keys a row change deletes with the sink's
// command to keys (unique within one call), and its other actions to acts,
// in rule order. Changes of tables without rules produce nothing.
func (m *Mapper) AppendChange(keys []string, acts []replication.Action, ch *replication.Change) ([]string, []replication.Action, error) {
	return m.appendChange(keys, acts, ch, m.ordered)
}

// appendChange is AppendChange; ordered moves each rule's plain deletes to
// acts as ActDelete, after the actions before them.
func (m *Mapper) appendChange(keys []string, acts []replication.Action, ch *replication.Change, ordered bool) ([]string, []replication.Action, error) {
	br := m.bound[ch.Rel.ID]
	if br == nil {
		return keys, acts, nil
	}
	if br.unbound != nil {
		return keys, acts, br.unbound
	}
	if opOf(ch.Op) == 0 {
		return keys, acts, fmt.Errorf("unknown change op %v", ch.Op)
	}
	start := len(keys)
	var vars map[string]any
	for ri := range br.rules {
		r := &br.rules[ri]
		why, _, err := m.decide(br, r, ch, &vars)
		if err != nil {
			return keys, acts, err
		}
		c := r.counters
		if why != skipNone {
			m.skippedRules.Add(1)
			c.skipped.Add(1)
			continue
		}
		c.applied.Add(1)
		before := len(keys) + len(acts)
		if r.plain {
			n := len(keys)
			if keys, err = m.appendRule(keys, start, br, r, ch, nil); err != nil {
				return keys, acts, err
			}
			if ordered {
				keys, acts = orderKeys(keys, n, acts)
			}
			c.outputs.Add(uint64(len(keys) + len(acts) - before))
			continue
		}
		m.oldKeys, m.newKeys = m.oldKeys[:0], m.newKeys[:0]
		if ch.Op != replication.OpInsert {
			if m.oldKeys, err = m.appendSide(m.oldKeys, 0, br, r, ch, sideOld, nil); err != nil {
				return keys, acts, err
			}
		}
		if ch.Op != replication.OpDelete {
			if m.newKeys, err = m.appendSide(m.newKeys, 0, br, r, ch, sideNew, nil); err != nil {
				return keys, acts, err
			}
		}
		n := len(keys)
		keys, acts = m.appendActions(keys, start, acts, br, r, ch, m.oldKeys, m.newKeys)
		if ordered {
			keys, acts = orderKeys(keys, n, acts)
		}
		c.outputs.Add(uint64(len(keys) + len(acts) - before))
	}
	return keys, acts, nil
}

// orderKeys moves keys[n:] to the end of acts as ActDelete actions.
func orderKeys(keys []string, n int, acts []replication.Action) ([]string, []replication.Action) {
	for _, k := range keys[n:] {
		acts = append(acts, replication.Action{Kind: replication.ActDelete, Key: k})
	}
	return keys[:n], acts
}

// decide returns why rule r lets the change pass (skipNone: it applies).
// vars caches the condition variables across the rules of one change.
func (m *Mapper) decide(br *boundRelation, r *boundRule, ch *replication.Change, vars *map[string]any) (skip, condResult, error) {
	if !r.ops.Has(opOf(ch.Op)) {
		return skipOp, condTrue, nil
	}
	if ch.Op == replication.OpUpdate && r.hasChanged {
		changed := false
		for _, idx := range r.changed {
			if columnChanged(ch, idx) {
				changed = true
				break
			}
		}
		if !changed {
			return skipUnchanged, condTrue, nil
		}
	}
	if r.when == nil {
		return skipNone, condTrue, nil
	}
	if *vars == nil {
		*vars = conditionVars(br.rel, ch)
	}
	res, err := r.rule.When.eval(*vars)
	if err != nil {
		return skipNone, res, fmt.Errorf("%w: %s: when condition %q on %s of %s: %v (fix the condition, e.g. guard with new.col != null, and restart; the change is not skipped)",
			ErrCondition, r.rule.Where, r.rule.When.src, ch.Op, br.rel.QualifiedName(), err)
	}
	if res == condFalse {
		return skipWhenFalse, res, nil
	}
	return skipNone, res, nil
}

// conditionVars builds op, old and new for a condition.
func conditionVars(rel *replication.Relation, ch *replication.Change) map[string]any {
	oldRow := make(map[string]any, len(rel.Columns))
	newRow := make(map[string]any, len(rel.Columns))
	fill := func(row map[string]any, s side) {
		for i, c := range rel.Columns {
			if (s == sideOld && ch.Op == replication.OpInsert) || (s == sideNew && ch.Op == replication.OpDelete) {
				row[c.Name] = unknownValue
				continue
			}
			v, st := value(ch, s, i)
			switch st {
			case valueOK:
				row[c.Name] = types.String(v)
			case valueNull:
				row[c.Name] = types.NullValue
			default:
				row[c.Name] = unknownValue
			}
		}
	}
	fill(oldRow, sideOld)
	fill(newRow, sideNew)
	return map[string]any{"op": ch.Op.String(), "old": oldRow, "new": newRow}
}

func (m *Mapper) appendRule(dst []string, start int, br *boundRelation, r *boundRule, ch *replication.Change, tr *RuleTrace) ([]string, error) {
	var err error
	switch ch.Op {
	case replication.OpInsert:
		dst, err = m.appendSide(dst, start, br, r, ch, sideNew, tr)
	case replication.OpUpdate:
		if dst, err = m.appendSide(dst, start, br, r, ch, sideOld, tr); err == nil {
			dst, err = m.appendSide(dst, start, br, r, ch, sideNew, tr)
		}
	case replication.OpDelete:
		dst, err = m.appendSide(dst, start, br, r, ch, sideOld, tr)
	}
	return dst, err
}

func (m *Mapper) appendSide(dst []string, start int, br *boundRelation, r *boundRule, ch *replication.Change, s side, tr *RuleTrace) ([]string, error) {
	bound := ch.Rel == br.rel // the segments' key flags are ch.Rel's
next:
	for ti := range r.templates {
		bt := &r.templates[ti]
		buf := m.buf[:0]
		for si := range bt.segs {
			sg := &bt.segs[si]
			if sg.col < 0 {
				buf = append(buf, sg.lit...)
				continue
			}
			p := sg.p
			var v []byte
			var st valueState
			if bound {
				v, st = valueKey(ch, s, int(sg.col), sg.key)
			} else {
				v, st = value(ch, s, int(sg.col))
			}
			if st == valueUnknown {
				m.buf = buf
				if tr != nil {
					tr.Notes = append(tr.Notes, fmt.Sprintf("template %q makes no key for the %s row: the change does not carry column %q", bt.t.src, s, p.col))
					continue next
				}
				// With the opt-in, a key whose value the change cannot carry
				// (an old value outside the replica identity, or an unchanged
				// TOASTed value with no old image) is skipped and counted.
				if bt.rule.AllowStaleOldKeys {
					m.skippedOldKeys.Add(1)
					continue next
				}
				return dst, fmt.Errorf("%w: %s of %s: key template %q needs column %q of the %s row, which the change does not carry (replica identity %s); run ALTER TABLE %s REPLICA IDENTITY FULL",
					ErrOldValueUnavailable, ch.Op, br.rel.QualifiedName(), bt.t.src, p.col, s, IdentityName(br.rel.ReplicaIdentity), br.rel.QualifiedName())
			}
			ok := st == valueOK
			if len(p.filters) == 0 {
				buf = append(buf, v...)
			} else {
				buf, ok = m.sc.appendValue(buf, p, v, st == valueNull)
			}
			if !ok {
				m.buf = buf
				if tr != nil {
					tr.Notes = append(tr.Notes, fmt.Sprintf("template %q makes no key for the %s row: column %q is NULL (add |default:TEXT to key NULLs)", bt.t.src, s, p.col))
					continue next
				}
				m.nullKeys.Add(1)
				m.warnNull(bt, p.col, br.rel, ch)
				continue next
			}
		}
		m.buf = buf
		if tr != nil {
			tr.Keys = append(tr.Keys, KeyTrace{Key: string(buf), Template: bt.t.src, Row: s.String()})
		}
		for _, k := range dst[start:] {
			if k == string(buf) {
				continue next
			}
		}
		dst = append(dst, m.intern(buf))
	}
	return dst, nil
}

// arenaBlock is the size of the blocks keys are carved from.
const arenaBlock = 16 << 10

// intern returns b as a string carved from a shared block, so that keys
// cost one allocation per block instead of one each. A block's bytes are
// written once and never changed (only its free tail is appended to), so
// the strings stay valid after the mapper moves on; a block is freed when
// no key in it is referenced. Long keys get their own allocation, so a
// block never pins much memory for one key.
func (m *Mapper) intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > arenaBlock/8 {
		return string(b)
	}
	if cap(m.arena)-len(m.arena) < len(b) {
		m.arena = make([]byte, 0, arenaBlock)
	}
	off := len(m.arena)
	m.arena = append(m.arena, b...)
	return unsafe.String(&m.arena[off], len(b))
}

// warnNull logs, once per rule, that a NULL made no key.
func (m *Mapper) warnNull(bt *boundTemplate, col string, rel *replication.Relation, ch *replication.Change) {
	if m.nullWarned[bt.rule] {
		return
	}
	m.nullWarned[bt.rule] = true
	m.log.Warn("a key template's column is NULL, so it makes no key for that row (logged once per rule; add |default:TEXT to the placeholder to key NULLs)",
		zap.String("rule", bt.rule.Where), zap.String("table", rel.QualifiedName()), zap.String("template", bt.t.src),
		zap.String("column", col), zap.Stringer("op", ch.Op))
}
