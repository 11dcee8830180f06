package mapping

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// RuleTrace says what one rule did with a change.
type RuleTrace struct {
	Rule *Rule
	// Skipped says why the rule let the change pass; "" when it applied.
	Skipped string
	// Condition describes the when condition's outcome when it applied.
	Condition string
	// Error is what would stop the engine on this change (a failed when).
	Error string
	// Keys are the keys (or TRUNCATE patterns) the rule produced, each with
	// its template, including keys another rule produced too.
	Keys []KeyTrace
	// Notes name the templates that made no key, and why.
	Notes []string
}

// KeyTrace is one key and where it came from.
type KeyTrace struct {
	Key      string
	Template string
	Row      string // "old", "new", or "pattern" for TRUNCATE
}

// Explanation is what the rules do with one change.
type Explanation struct {
	Table string
	Op    string // insert, update, delete, truncate
	Rules []RuleTrace
	// Keys are the unique keys to delete, or the patterns for TRUNCATE.
	Keys []string
	// Actions describe what else the rules' actions do, in order (version
	// keys, messages, refreshed values, generation bumps).
	Actions []string
	// Failed says the engine would stop on this change (see the rules' Error).
	Failed bool
}

// Explain traces what every rule of the change's table does with it. The
// relation must have been bound. Unlike AppendKeys it never fails on a
// value the change does not carry: it notes it.
func (m *Mapper) Explain(ch *replication.Change) (*Explanation, error) {
	br := m.bound[ch.Rel.ID]
	if br == nil {
		return nil, fmt.Errorf("no rule covers table %s", ch.Rel.QualifiedName())
	}
	if opOf(ch.Op) == 0 {
		return nil, fmt.Errorf("unknown change op %v", ch.Op)
	}
	e := &Explanation{Table: ch.Rel.QualifiedName(), Op: ch.Op.String()}
	var vars map[string]any
	for ri := range br.rules {
		r := &br.rules[ri]
		tr := RuleTrace{Rule: r.rule}
		why, res, err := m.decide(br, r, ch, &vars)
		switch {
		case err != nil:
			tr.Error = err.Error()
			e.Failed = true
		case why == skipOp:
			tr.Skipped = fmt.Sprintf("ops %s do not include %s", r.rule.Ops, ch.Op)
		case why == skipUnchanged:
			tr.Skipped = fmt.Sprintf("when_changed [%s]: the UPDATE changes none of them", strings.Join(r.rule.WhenChanged, ", "))
		case why == skipWhenFalse:
			tr.Skipped = fmt.Sprintf("when %q is false", r.rule.When.src)
		default:
			if r.rule.When != nil {
				if res == condUnknown {
					tr.Condition = fmt.Sprintf("when %q is unknown (it depends on values the change does not carry), which counts as true", r.rule.When.src)
				} else {
					tr.Condition = fmt.Sprintf("when %q is true", r.rule.When.src)
				}
			}
			e.Keys, _ = m.appendRule(e.Keys, 0, br, r, ch, &tr)
		}
		e.Rules = append(e.Rules, tr)
	}
	if !e.Failed {
		keys, acts, err := m.appendChange(nil, nil, ch, false)
		if err == nil {
			e.Keys = keys
			e.Actions = describeActions(acts)
		}
	}
	return e, nil
}

func describeActions(acts []replication.Action) []string {
	var out []string
	for i := range acts {
		out = append(out, DescribeAction(&acts[i]))
	}
	return out
}

// ExplainTruncate traces the SCAN patterns a TRUNCATE of rel produces.
func (m *Mapper) ExplainTruncate(rel *replication.Relation) *Explanation {
	e := &Explanation{Table: rel.QualifiedName(), Op: "truncate"}
	for _, r := range m.byTable[rel.QualifiedName()] {
		tr := RuleTrace{Rule: r}
		if !r.Ops.Has(OnTruncate) {
			tr.Skipped = fmt.Sprintf("ops %s do not include truncate", r.Ops)
		} else {
			for _, t := range r.Templates {
				g := t.Glob()
				tr.Keys = append(tr.Keys, KeyTrace{Key: g, Template: t.src, Row: "pattern"})
				if !slices.Contains(e.Keys, g) {
					e.Keys = append(e.Keys, g)
				}
			}
		}
		e.Rules = append(e.Rules, tr)
	}
	globs, acts := m.AppendTruncate(nil, nil, rel)
	e.Keys = globs
	e.Actions = describeActions(acts)
	return e
}

// Print writes the explanation for a person.
func (e *Explanation) Print(w io.Writer) {
	fmt.Fprintf(w, "%s of %s\n", strings.ToUpper(e.Op), e.Table)
	for _, tr := range e.Rules {
		switch {
		case tr.Error != "":
			fmt.Fprintf(w, "\n%s: ERROR, the engine would stop on this change: %s\n", tr.Rule.Where, tr.Error)
		case tr.Skipped != "":
			fmt.Fprintf(w, "\n%s: skipped: %s\n", tr.Rule.Where, tr.Skipped)
		default:
			fmt.Fprintf(w, "\n%s: applies\n", tr.Rule.Where)
			if tr.Condition != "" {
				fmt.Fprintf(w, "  %s\n", tr.Condition)
			}
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, k := range tr.Keys {
			row := k.Row + " row"
			if k.Row == "pattern" {
				row = "TRUNCATE pattern"
			}
			fmt.Fprintf(tw, "  %s\tfrom %q\t(%s)\n", k.Key, k.Template, row)
		}
		_ = tw.Flush()
		for _, n := range tr.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
	}
	what := "keys to delete"
	if e.Op == "truncate" {
		what = "patterns to delete (SCAN MATCH, then UNLINK)"
	}
	fmt.Fprintf(w, "\n%s (%d):\n", what, len(e.Keys))
	for _, k := range e.Keys {
		fmt.Fprintf(w, "  %s\n", k)
	}
	if len(e.Actions) > 0 {
		fmt.Fprintf(w, "\nother actions (%d):\n", len(e.Actions))
		for _, a := range e.Actions {
			fmt.Fprintf(w, "  %s\n", a)
		}
	}
}

// ErrExplainInput is wrapped by the errors of ChangeFromJSON: the input
// does not describe a change.
var ErrExplainInput = errors.New("bad input")

// ChangeFromJSON builds the change `cdcinvalidate explain` describes and
// binds its table: op is insert, update, delete, truncate or "" (insert
// with only newJSON, delete with only oldJSON, update with both). The rows
// are JSON objects from column name to value: a string is the column's
// text, a number its text as written, true and false become PostgreSQL's
// "t" and "f", null is NULL. A column absent from the old row is unknown
// (as in a 'K' image); a column absent from the new row of an UPDATE is
// unchanged (as an unchanged TOASTed value: its value is the old one).
func (m *Mapper) ChangeFromJSON(table, op, oldJSON, newJSON string) (*replication.Change, error) {
	schema, name := "public", table
	if s, n, ok := strings.Cut(table, "."); ok {
		schema, name = s, n
	}
	qualified := schema + "." + name
	rules := m.byTable[qualified]
	if len(rules) == 0 {
		return nil, fmt.Errorf("%w: no rule covers table %s (rule tables: %s)", ErrExplainInput, qualified, strings.Join(m.Tables(), ", "))
	}
	hasOld, hasNew := oldJSON != "", newJSON != ""
	if op == "" {
		switch {
		case hasOld && hasNew:
			op = "update"
		case hasNew:
			op = "insert"
		case hasOld:
			op = "delete"
		default:
			return nil, fmt.Errorf("%w: give --new (insert), --old (delete), both (update), or --op truncate", ErrExplainInput)
		}
	}
	var kind replication.Op
	switch op {
	case "insert":
		kind = replication.OpInsert
		if !hasNew || hasOld {
			return nil, fmt.Errorf("%w: an insert takes --new and no --old", ErrExplainInput)
		}
	case "update":
		kind = replication.OpUpdate
		if !hasNew || !hasOld {
			return nil, fmt.Errorf("%w: an update takes --old and --new (give at least the replica identity columns in --old, e.g. the primary key)", ErrExplainInput)
		}
	case "delete":
		kind = replication.OpDelete
		if !hasOld || hasNew {
			return nil, fmt.Errorf("%w: a delete takes --old and no --new", ErrExplainInput)
		}
	case "truncate":
		if hasOld || hasNew {
			return nil, fmt.Errorf("%w: a truncate takes no --old or --new", ErrExplainInput)
		}
	default:
		return nil, fmt.Errorf("%w: --op %q is not one of insert, update, delete, truncate", ErrExplainInput, op)
	}
	oldRow, err := parseRow("--old", oldJSON)
	if err != nil {
		return nil, err
	}
	newRow, err := parseRow("--new", newJSON)
	if err != nil {
		return nil, err
	}
	// The table as far as the input and the rules know it: FULL identity,
	// so that every column the input gives is taken at its word.
	cols := map[string]bool{}
	for c := range oldRow {
		cols[c] = true
	}
	for c := range newRow {
		cols[c] = true
	}
	for _, r := range rules {
		for _, t := range r.Templates {
			for _, c := range t.Columns() {
				cols[c] = true
			}
		}
		for _, c := range r.WhenChanged {
			cols[c] = true
		}
		if r.When != nil {
			o, n := r.When.Columns()
			for _, c := range slices.Concat(o, n) {
				cols[c] = true
			}
		}
	}
	names := make([]string, 0, len(cols))
	for c := range cols {
		names = append(names, c)
	}
	slices.Sort(names)
	rel := &replication.Relation{ID: 1, Namespace: schema, Name: name, ReplicaIdentity: 'f'}
	for _, c := range names {
		rel.Columns = append(rel.Columns, replication.Column{Name: c, Key: true, TypeOID: 25})
	}
	if err := m.Bind(rel); err != nil {
		return nil, err
	}
	if op == "truncate" {
		return &replication.Change{Rel: rel}, nil
	}
	tuple := func(row map[string]*string) replication.Tuple {
		t := replication.Tuple{Values: make([]replication.Value, len(names))}
		for i, c := range names {
			v, ok := row[c]
			switch {
			case !ok:
				t.Values[i] = replication.Value{Kind: replication.ValueUnchanged}
			case v == nil:
				t.Values[i] = replication.Value{Kind: replication.ValueNull}
			default:
				t.Values[i] = replication.Value{Kind: replication.ValueText, Data: []byte(*v)}
			}
		}
		return t
	}
	ch := &replication.Change{Op: kind, Rel: rel}
	if hasOld {
		ch.HasOld, ch.OldKind, ch.Old = true, 'O', tuple(oldRow)
	}
	if hasNew {
		ch.New = tuple(newRow)
	}
	return ch, nil
}

// parseRow reads a JSON object of column values; nil values are NULL.
func parseRow(flag, text string) (map[string]*string, error) {
	row := map[string]*string{}
	if text == "" {
		return row, nil
	}
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%w: %s is not a JSON object of column values: %v", ErrExplainInput, flag, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: %s has text after its JSON object", ErrExplainInput, flag)
	}
	for col, rv := range raw {
		rv = bytes.TrimSpace(rv)
		var s string
		switch {
		case string(rv) == "null":
			row[col] = nil
			continue
		case string(rv) == "true":
			s = "t"
		case string(rv) == "false":
			s = "f"
		case len(rv) > 0 && rv[0] == '"':
			if err := json.Unmarshal(rv, &s); err != nil {
				return nil, fmt.Errorf("%w: %s column %q: %v", ErrExplainInput, flag, col, err)
			}
		case len(rv) > 0 && (rv[0] == '-' || (rv[0] >= '0' && rv[0] <= '9')):
			s = string(rv) // a number as written: 40.00 stays 40.00
		default:
			return nil, fmt.Errorf("%w: %s column %q is a JSON %s; give its PostgreSQL text form as a string", ErrExplainInput, flag, col, jsonKind(rv))
		}
		row[col] = &s
	}
	return row, nil
}

func jsonKind(rv json.RawMessage) string {
	if len(rv) > 0 && rv[0] == '[' {
		return "array"
	}
	return "object"
}
