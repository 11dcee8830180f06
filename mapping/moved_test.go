package mapping

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// TestBindCatchesTablesThatLeaveTheirRules: a Relation message that names
// a rule table otherwise than the rules do is refused, whether the mapper
// learnt the table's ID from an earlier Relation message or from the
// catalog at start (Expect); tables the rules never knew bind as before.
func TestBindCatchesTablesThatLeaveTheirRules(t *testing.T) {
	t.Parallel()
	rel := func(id uint32, ns, name string) *replication.Relation {
		r := usersRel('f')
		r.ID, r.Namespace, r.Name = id, ns, name
		return r
	}
	infos := map[string]TableInfo{
		"public.users":  {Exists: true, OID: 16384, Kind: 'r'},
		"public.events": {Exists: true, OID: 500, Kind: 'p', Partitions: []PartitionInfo{{Name: "public.events_1"}, {Name: "public.events_2"}}},
	}
	for _, c := range []struct {
		name   string
		expect bool                  // seed from the catalog
		first  *replication.Relation // bound before, nil for none
		rel    *replication.Relation // then bound
		want   []string              // in the error; nil: no error
		change bool                  // the error comes with a change, not with Bind
	}{
		{"renamed, seen before", false, rel(16384, "public", "users"), rel(16384, "public", "users_old"), []string{"public.users,", "public.users_old", "RENAME"}, false},
		{"moved to another schema", false, rel(16384, "public", "users"), rel(16384, "archive", "users"), []string{"public.users,", "archive.users"}, false},
		{"renamed, known from the catalog", true, nil, rel(16384, "public", "users_old"), []string{"public.users_old"}, false},
		{"renamed, nothing known", false, nil, rel(16384, "public", "users_old"), nil, false},
		{"same name again", true, rel(16384, "public", "users"), rel(16384, "public", "users"), nil, false},
		{"other table, same name as a rule table (recreated)", true, nil, rel(999, "public", "users"), nil, false},
		{"unrelated table", true, nil, rel(777, "public", "other"), nil, false},
		{"partition described (as after its root)", true, nil, rel(501, "public", "events_2"), nil, false},
		{"partition's change as itself", true, nil, rel(501, "public", "events_2"), []string{"public.events_2", "public.events", "publish_via_partition_root = true"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMapper(t, usersRule(t, false, "user:{id}"), Rule{Table: "events", Templates: mustTemplates(t, "ev:{id}"), Where: "rules[1] (test)"})
			if c.expect {
				m.Expect(infos)
			}
			if c.first != nil {
				if err := m.Bind(c.first); err != nil {
					t.Fatal(err)
				}
			}
			err := m.Bind(c.rel)
			if c.change {
				if err != nil {
					t.Fatalf("Bind = %v, want nil (the change is refused)", err)
				}
				_, err = m.AppendKeys(nil, insert(c.rel, tup(txt("1"), txt("a"), txt("b"))))
			}
			if c.want == nil {
				if err != nil {
					t.Fatalf("Bind = %v, want nil", err)
				}
				return
			}
			var ue *replication.UnboundError
			if !errors.As(err, &ue) {
				t.Fatalf("Bind = %v, want an UnboundError", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if len(ue.Globs) != 1 {
				t.Errorf("globs = %q, want the table's one pattern", ue.Globs)
			}
			if keys, _ := m.AppendKeys(nil, insert(c.rel, tup(txt("1"), txt("a"), txt("b")))); len(keys) != 0 {
				t.Errorf("keys for a table that left its rules: %q", keys)
			}
		})
	}
}

// TestCheckLeaf: a change through a partition whose replica identity does
// not carry a template's column is refused, naming the partition and the
// ALTER TABLE; FULL partitions, key-only templates and rules that accept
// stale old keys pass.
func TestCheckLeaf(t *testing.T) {
	t.Parallel()
	root := usersRel('f')
	leaf := func(ident byte, keys ...string) *replication.Relation {
		r := usersRel(ident)
		r.ID, r.Name = 9000, "users_p2"
		for i := range r.Columns {
			r.Columns[i].Key = slices.Contains(keys, r.Columns[i].Name)
		}
		return r
	}
	for _, c := range []struct {
		name       string
		allowStale bool
		keys       []string
		leaf       *replication.Relation
		wantErr    bool
	}{
		{"full partition", false, []string{"user:{id}", "user:email:{email}"}, leaf('f', "id", "email", "bio"), false},
		{"default partition, key column only", false, []string{"user:{id}"}, leaf('d', "id"), false},
		{"default partition, non-key column", false, []string{"user:{id}", "user:email:{email}"}, leaf('d', "id"), true},
		{"index identity without the column", false, []string{"user:email:{email}"}, leaf('i', "id"), true},
		{"stale old keys accepted", true, []string{"user:email:{email}"}, leaf('d', "id"), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMapper(t, usersRule(t, c.allowStale, c.keys...))
			if err := m.Bind(root); err != nil {
				t.Fatal(err)
			}
			err := m.CheckLeaf(root, c.leaf)
			if !c.wantErr {
				if err != nil {
					t.Fatalf("CheckLeaf = %v, want nil", err)
				}
				return
			}
			var ue *replication.UnboundError
			if !errors.As(err, &ue) || ue.Now != "public.users_p2" || !strings.Contains(err.Error(), "ALTER TABLE public.users_p2 REPLICA IDENTITY FULL") {
				t.Fatalf("CheckLeaf = %v, want an UnboundError naming public.users_p2 and its ALTER TABLE", err)
			}
		})
	}
}
