package mapping

import (
	"fmt"
	"slices"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// Expect tells the mapper which relations the rule tables are, as the
// catalog describes them (TableInfo.OID and Partitions), so that a
// Relation message that names one of them otherwise is caught even when
// it is the first of a session: the table was renamed or moved to another
// schema, or its partitions are published as themselves. Call it before
// the mapper binds anything.
func (m *Mapper) Expect(infos map[string]TableInfo) {
	for table, info := range infos {
		if !info.Exists || len(m.byTable[table]) == 0 {
			continue
		}
		if info.OID != 0 {
			m.known[info.OID] = table
		}
		for _, p := range info.Partitions {
			if p.Name != table {
				m.partitions[p.Name] = table
			}
		}
	}
}

// moved returns an *replication.UnboundError when rel is a table the
// rules know under another name.
func (m *Mapper) moved(rel *replication.Relation) error {
	now := rel.QualifiedName()
	if was, ok := m.known[rel.ID]; ok && was != now && len(m.byTable[was]) > 0 {
		return m.unbound(was, now, fmt.Sprintf(
			"table %s, which rules in rules.yaml name, now arrives as %s (ALTER TABLE ... RENAME or SET SCHEMA): the "+
				"rules no longer apply to its changes, so the engine stops before confirming them. Rename it "+
				"back (ALTER TABLE %s RENAME TO ...; or SET SCHEMA), or name %s in rules.yaml, "+
				"then restart cdcinvalidate",
			was, now, now, now))
	}
	return nil
}

// partitionTrap returns the binding of a leaf partition of a rule table
// that has no rules of its own: pgoutput describes it (after its root)
// even when it publishes through the root, but a change that arrives
// under its name means the publication stopped publishing through the
// root, and AppendChange refuses it.
func (m *Mapper) partitionTrap(rel *replication.Relation) *boundRelation {
	now := rel.QualifiedName()
	root, ok := m.partitions[now]
	if !ok || len(m.byTable[now]) > 0 || len(m.byTable[root]) == 0 {
		return nil
	}
	return &boundRelation{rel: rel, unbound: m.unbound(root, now, fmt.Sprintf(
		"changes of %s, a partition of %s, which rules in rules.yaml name, arrive under the partition's own name: the "+
			"publication stopped publishing through the partition root (or the partition was detached), so the "+
			"rules no longer apply to them and the engine stops before confirming them. Run ALTER PUBLICATION "+
			"... SET (publish_via_partition_root = true) on the engine's publication (rules.yaml names the "+
			"partitioned table); a detached partition is no longer part of %s: its rows left the table without a "+
			"DELETE; then restart cdcinvalidate",
		now, root, root))}
}

// unbound describes table's rules losing it.
func (m *Mapper) unbound(table, now, msg string) *replication.UnboundError {
	globs, gens := m.TableGlobs(table)
	return &replication.UnboundError{Table: table, Now: now, Globs: globs, Generations: gens, Msg: msg}
}

// TableGlobs returns the SCAN patterns of the keys the rules of a table
// can produce and their generation keys, sorted and without duplicates:
// what may be stale when the table's changes were not applied.
func (m *Mapper) TableGlobs(table string) (globs, gens []string) {
	for _, r := range m.byTable[table] {
		for _, t := range r.Templates {
			globs = append(globs, t.Glob())
		}
		if r.Actions.Generation {
			gens = append(gens, r.Actions.GenerationKey)
		}
	}
	slices.Sort(globs)
	slices.Sort(gens)
	return slices.Compact(globs), slices.Compact(gens)
}

// CheckLeaf checks the partition leaf that a change of the partitioned
// rule table root went through (replication.LeafChecker): REPLICA IDENTITY
// is not inherited, so a partition created after the start (by a
// partition manager) may carry old rows with only its key columns, and the
// missing ones would look like NULLs. A template column outside the leaf's
// identity is refused, naming the ALTER TABLE to run.
func (m *Mapper) CheckLeaf(root, leaf *replication.Relation) error {
	br := m.bound[root.ID]
	if br == nil || br.unbound != nil || leaf.ReplicaIdentity == 'f' {
		return nil
	}
	key := map[string]bool{}
	for _, c := range leaf.Columns {
		if c.Key {
			key[c.Name] = true
		}
	}
	for _, r := range br.rules {
		if r.rule.AllowStaleOldKeys {
			continue
		}
		for _, bt := range r.templates {
			for _, col := range bt.t.Columns() {
				if key[col] {
					continue
				}
				return m.unbound(root.QualifiedName(), leaf.QualifiedName(), fmt.Sprintf(
					"%s: a change of %s went through its partition %s, whose replica identity (%s) does not carry "+
						"column %q that key template %q uses, so keys of old rows cannot be computed (a "+
						"partition does not inherit REPLICA IDENTITY FULL: was it created after the start?); the "+
						"engine stops before confirming the change. Run ALTER TABLE %s REPLICA IDENTITY FULL "+
						"(and set it on partitions a partition manager creates), then restart cdcinvalidate",
					r.rule.Where, root.QualifiedName(), leaf.QualifiedName(), IdentityName(leaf.ReplicaIdentity), col, bt.t.src, leaf.QualifiedName()))
			}
		}
	}
	return nil
}
