package mapping

import (
	"fmt"
	"slices"
)

// TableInfo is what the catalog says about a rule's table.
type TableInfo struct {
	Exists          bool
	Kind            byte // pg_class.relkind: 'r' table, 'p' partitioned table, ...
	Columns         []string
	ReplicaIdentity byte     // 'd', 'n', 'f', 'i'
	IdentityColumns []string // primary key (d) or replica identity index (i) columns
}

// CheckTable checks a rule against its table as the catalog describes it and
// returns every problem, each with its fix. An empty result means the rule
// can compute the keys of old and new rows for every change.
func CheckTable(r *Rule, t TableInfo) []string {
	name := r.QualifiedTable()
	if !t.Exists {
		return []string{fmt.Sprintf("%s: table %s does not exist (check the name and schema, or create the table first)", r.Where, name)}
	}
	var ps []string
	if t.Kind != 'r' && t.Kind != 'p' {
		ps = append(ps, fmt.Sprintf("%s: %s is not a table (relkind %q): only tables are published by logical replication", r.Where, name, t.Kind))
	}
	switch {
	case t.ReplicaIdentity == 'n':
		ps = append(ps, fmt.Sprintf("%s: table %s has REPLICA IDENTITY NOTHING, so its UPDATEs and DELETEs cannot be published (they would fail on the database once it is in a publication); run ALTER TABLE %s REPLICA IDENTITY FULL, or give it a primary key and REPLICA IDENTITY DEFAULT", r.Where, name, name))
		return ps
	case t.ReplicaIdentity == 'd' && len(t.IdentityColumns) == 0:
		ps = append(ps, fmt.Sprintf("%s: table %s has no primary key, so its replica identity is empty and its UPDATEs and DELETEs cannot be published; add a primary key, or run ALTER TABLE %s REPLICA IDENTITY FULL", r.Where, name, name))
		return ps
	}
	for _, tpl := range r.Templates {
		for _, col := range tpl.Columns() {
			if !slices.Contains(t.Columns, col) {
				ps = append(ps, fmt.Sprintf("%s: key template %q uses column %q, which table %s does not have (its columns: %v)", r.Where, tpl.src, col, name, t.Columns))
				continue
			}
			if t.ReplicaIdentity == 'f' || slices.Contains(t.IdentityColumns, col) || r.AllowStaleOldKeys {
				continue
			}
			ps = append(ps, fmt.Sprintf("%s: key template %q uses column %q, which is outside the replica identity of %s (%v), so the key of the old row cannot be computed on UPDATE and DELETE; run ALTER TABLE %s REPLICA IDENTITY FULL, or set unsafe_allow_stale_old_keys: true on the rule to accept stale old keys", r.Where, tpl.src, col, name, t.IdentityColumns, name))
		}
	}
	return ps
}
