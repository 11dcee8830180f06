package mapping

import (
	"fmt"
	"slices"
	"strings"
)

// TableInfo is what the catalog says about a rule's table.
type TableInfo struct {
	Exists  bool
	OID     uint32 // pg_class.oid: the relation ID of Relation messages
	Kind    byte   // pg_class.relkind: 'r' table, 'p' partitioned table, ...
	Columns []string
	// Types are the columns' types as format_type prints them ("bigint",
	// "timestamp with time zone"), parallel to Columns; optional.
	Types           []string
	ReplicaIdentity byte     // 'd', 'n', 'f', 'i'
	IdentityColumns []string // primary key (d) or replica identity index (i) columns
	// PartitionOf is the root of the partition tree ("schema.table") when
	// the table is a partition, else "".
	PartitionOf string
	// Partitions are the leaf partitions of a partitioned table. Their
	// replica identity decides what old images carry: REPLICA IDENTITY is
	// not inherited from the partitioned table.
	Partitions []PartitionInfo
}

// PartitionInfo is one leaf partition of a partitioned table.
type PartitionInfo struct {
	Name            string // "schema.table"
	ReplicaIdentity byte
	IdentityColumns []string
}

// Problem is one finding about a rule or the database, with its fix.
type Problem struct {
	Where string // the rule ("rules[0] (table users in rules.yaml)") or the object
	Msg   string
	Fix   string
}

func (p Problem) String() string {
	s := p.Msg
	if p.Where != "" {
		s = p.Where + ": " + s
	}
	if p.Fix != "" {
		s += "; " + p.Fix
	}
	return s
}

// Strings formats problems with String.
func Strings(ps []Problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// CheckTable checks a rule against its table as the catalog describes it and
// returns every problem, each with its fix. An empty result means the rule
// can compute the keys of old and new rows for every change.
func CheckTable(r *Rule, t TableInfo) []string { return Strings(CheckTableProblems(r, t)) }

// CheckTableProblems is CheckTable with the fixes apart.
func CheckTableProblems(r *Rule, t TableInfo) []Problem {
	name := r.QualifiedTable()
	if !t.Exists {
		return []Problem{{r.Where, fmt.Sprintf("table %s does not exist", name), "check the name and schema, or create the table first"}}
	}
	var ps []Problem
	add := func(msg, fix string) { ps = append(ps, Problem{r.Where, msg, fix}) }
	if t.Kind != 'r' && t.Kind != 'p' {
		add(fmt.Sprintf("%s is not a table (relkind %q): only tables are published by logical replication", name, t.Kind), "name a table in the rule")
	}
	// Columns that only need to exist.
	for _, c := range r.WhenChanged {
		if !slices.Contains(t.Columns, c) {
			add(fmt.Sprintf("when_changed names column %q, which table %s does not have (its columns: %v)", c, name, t.Columns), "fix the column name")
		}
	}
	for _, c := range r.Actions.RefreshColumns {
		if !slices.Contains(t.Columns, c) {
			add(fmt.Sprintf("refresh_columns names column %q, which table %s does not have (its columns: %v)", c, name, t.Columns), "fix the column name")
		}
	}
	if r.When != nil {
		o, n := r.When.Columns()
		for _, c := range slices.Compact(slices.Sorted(slices.Values(slices.Concat(o, n)))) {
			if !slices.Contains(t.Columns, c) {
				add(fmt.Sprintf("the when condition %q uses column %q, which table %s does not have (its columns: %v)", r.When.src, c, name, t.Columns), "fix the column name")
			}
		}
	}
	if ip := identityProblems(r, name, t.ReplicaIdentity, t.IdentityColumns, t.Columns, ""); len(ip) > 0 {
		return append(ps, ip...)
	}
	for _, p := range t.Partitions {
		ps = append(ps, identityProblems(r, p.Name, p.ReplicaIdentity, p.IdentityColumns, nil, name)...)
	}
	return ps
}

// identityProblems checks that the replica identity of a table (or of a
// leaf partition of root) lets the rule compute old keys. columns, when
// not nil, also checks that template columns exist.
func identityProblems(r *Rule, name string, ident byte, idCols, columns []string, root string) []Problem {
	var ps []Problem
	add := func(msg, fix string) { ps = append(ps, Problem{r.Where, msg, fix}) }
	subject, identOf := "table "+name, name
	if root != "" {
		subject = fmt.Sprintf("partition %s of %s", name, root)
		identOf = subject
	}
	switch {
	case ident == 'n':
		add(fmt.Sprintf("%s has REPLICA IDENTITY NOTHING, so its UPDATEs and DELETEs cannot be published (they would fail on the database once it is in a publication)", subject),
			fmt.Sprintf("run ALTER TABLE %s REPLICA IDENTITY FULL, or give it a primary key and REPLICA IDENTITY DEFAULT%s", name, inheritNote(root)))
		return ps
	case ident == 'd' && len(idCols) == 0:
		add(fmt.Sprintf("%s has no primary key, so its replica identity is empty and its UPDATEs and DELETEs cannot be published", subject),
			fmt.Sprintf("add a primary key, or run ALTER TABLE %s REPLICA IDENTITY FULL%s", name, inheritNote(root)))
		return ps
	}
	for _, tpl := range r.Templates {
		for _, col := range tpl.Columns() {
			if columns != nil && !slices.Contains(columns, col) {
				add(fmt.Sprintf("key template %q uses column %q, which table %s does not have (its columns: %v)", tpl.src, col, name, columns), "fix the template or the column name")
				continue
			}
			if ident == 'f' || slices.Contains(idCols, col) || r.AllowStaleOldKeys {
				continue
			}
			add(fmt.Sprintf("key template %q uses column %q, which is outside the replica identity of %s (%v), so the key of the old row cannot be computed on UPDATE and DELETE", tpl.src, col, identOf, idCols),
				fmt.Sprintf("run ALTER TABLE %s REPLICA IDENTITY FULL%s, or set unsafe_allow_stale_old_keys: true on the rule to accept stale old keys", name, inheritNote(root)))
		}
	}
	return ps
}

func inheritNote(root string) string {
	if root == "" {
		return ""
	}
	return " (REPLICA IDENTITY is not inherited: set it on every partition of " + root + ")"
}

// TableWarnings returns what is allowed but costs precision: when_changed
// columns and old values of the when condition that the replica identity
// does not carry, so UPDATEs count them as changed or unknown and the rule
// invalidates more often than it has to.
func TableWarnings(r *Rule, t TableInfo) []Problem {
	if !t.Exists {
		return nil
	}
	var ps []Problem
	carried := func(col string) bool {
		if t.ReplicaIdentity != 'f' && !slices.Contains(t.IdentityColumns, col) {
			return false
		}
		for _, p := range t.Partitions {
			if p.ReplicaIdentity != 'f' && !slices.Contains(p.IdentityColumns, col) {
				return false
			}
		}
		return true
	}
	name := r.QualifiedTable()
	var keyCols []string
	for _, tpl := range r.Templates {
		keyCols = append(keyCols, tpl.Columns()...)
	}
	for _, c := range slices.Compact(slices.Sorted(slices.Values(keyCols))) {
		i := slices.Index(t.Columns, c)
		if i < 0 || i >= len(t.Types) {
			continue
		}
		if setting := settingDependent(t.Types[i]); setting != "" {
			ps = append(ps, Problem{r.Where,
				fmt.Sprintf("a key template uses column %q of type %s, whose text form depends on %s; the engine's keys match the application's only if both print it the same way", c, t.Types[i], setting),
				"key on a column whose text is stable (an id), or make sure the application formats the value exactly as PostgreSQL's text output with the server's settings"})
		}
	}
	if r.Actions.Refresh {
		cols := r.Actions.RefreshColumns
		if len(cols) == 0 {
			cols = t.Columns
		}
		for _, c := range cols {
			i := slices.Index(t.Columns, c)
			if i < 0 || i >= len(t.Types) || carried(c) || !toastable(t.Types[i]) {
				continue
			}
			ps = append(ps, Problem{r.Where,
				fmt.Sprintf("refreshed column %q (%s) can be TOASTed, and an UPDATE that leaves a TOASTed value "+
					"unchanged does not carry it: the refresh then deletes the key instead of writing it "+
					"(counted in cdcinvalidate_refresh_fallbacks_total)", c, t.Types[i]),
				fmt.Sprintf("to always write, run ALTER TABLE %s REPLICA IDENTITY FULL, or leave the column out of refresh_columns", name)})
		}
	}
	for _, c := range r.WhenChanged {
		if slices.Contains(t.Columns, c) && !carried(c) {
			ps = append(ps, Problem{r.Where,
				fmt.Sprintf("when_changed column %q is outside the replica identity of %s, so UPDATEs that do not "+
					"carry its old value count it as changed (the rule invalidates more often than needed; an "+
					"unchanged TOASTed value still counts as unchanged)", c, name),
				fmt.Sprintf("for exact results run ALTER TABLE %s REPLICA IDENTITY FULL", name)})
		}
	}
	if r.When != nil {
		o, _ := r.When.Columns()
		for _, c := range o {
			if slices.Contains(t.Columns, c) && !carried(c) {
				ps = append(ps, Problem{r.Where,
					fmt.Sprintf("the when condition uses old.%s, which is outside the replica identity of %s: on UPDATE and DELETE it is unknown, and a condition that depends on it counts as true", c, name),
					fmt.Sprintf("for exact results run ALTER TABLE %s REPLICA IDENTITY FULL", name)})
			}
		}
	}
	return ps
}

// settingDependent names the settings that change a type's text output,
// or "" when it does not depend on any.
func settingDependent(typ string) string {
	typ = strings.TrimSuffix(typ, "[]")
	base := typ
	if i := strings.IndexAny(base, "( "); i >= 0 {
		base = base[:i] // "timestamp(3) with time zone" -> "timestamp"
	}
	if strings.HasPrefix(typ, "double precision") {
		base = "double precision"
	}
	switch {
	case base == "timestamp" && strings.HasSuffix(typ, "with time zone"):
		return "the TimeZone and DateStyle settings"
	case base == "timestamp", base == "date":
		return "the DateStyle setting"
	case base == "interval":
		return "the IntervalStyle setting"
	case base == "real", base == "double precision":
		return "the extra_float_digits setting"
	case base == "money":
		return "the lc_monetary setting"
	case base == "bytea":
		return "the bytea_output setting"
	}
	return ""
}

// toastable reports whether values of a type (as format_type prints it)
// can be stored out of line: variable-length types.
func toastable(typ string) bool {
	if strings.HasSuffix(typ, "[]") {
		return true
	}
	base, _, _ := strings.Cut(typ, "(")
	switch base {
	case "text", "bytea", "json", "jsonb", "xml", "character varying", "character", "numeric", "tsvector", "hstore", "path", "polygon":
		return true
	}
	return false
}
