package mapping

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// BenchmarkAppendKeysUpdate renders the keys of an UPDATE that changed a
// key column (old and new keys of two templates): the per-change cost of
// mapping. Keys are carved from shared blocks (see intern), so they cost
// no allocation of their own.
func BenchmarkAppendKeysUpdate(b *testing.B) {
	m := newMapper(b, usersRule(b, false, "user:{id}", "user:email:{email}"))
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		b.Fatal(err)
	}
	ch := update(rel, 'O', tup(txt("42"), txt("old@example.com"), txt("bio")), tup(txt("42"), txt("new@example.com"), txt("bio")))
	keys := make([]string, 0, 8)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		keys, err = m.AppendKeys(keys[:0], ch)
		if err != nil || len(keys) != 3 {
			b.Fatalf("keys %q, err %v", keys, err)
		}
	}
}

func BenchmarkAppendKeysInsert(b *testing.B) {
	m := newMapper(b, usersRule(b, false, "user:{id}"))
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		b.Fatal(err)
	}
	ch := insert(rel, tup(txt("42"), txt("a@x"), txt("bio")))
	keys := make([]string, 0, 8)
	b.ReportAllocs()
	for b.Loop() {
		keys, _ = m.AppendKeys(keys[:0], ch)
	}
}

func BenchmarkGlob(b *testing.B) {
	tpl, err := ParseTemplate("user:{id}:orders")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = tpl.Glob()
	}
}

// BenchmarkAppendChangeRefreshVersion renders the actions of an UPDATE
// under a rule with refresh and version: the row as JSON (one string per
// change) and a version key per key.
func BenchmarkAppendChangeRefreshVersion(b *testing.B) {
	r := usersRule(b, false, "user:{id}", "user:email:{email}")
	r.Actions = Actions{Refresh: true, Version: true}
	m := newMapper(b, r)
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		b.Fatal(err)
	}
	ch := update(rel, 'O', tup(txt("42"), txt("old@example.com"), txt("bio")), tup(txt("42"), txt("new@example.com"), txt("bio")))
	var keys []string
	var acts []replication.Action
	b.ReportAllocs()
	for b.Loop() {
		var err error
		keys, acts, err = m.AppendChange(keys[:0], acts[:0], ch)
		if err != nil || len(acts) != 6 {
			b.Fatalf("actions %d, err %v", len(acts), err)
		}
	}
}

// BenchmarkMapManyRules maps UPDATEs under few and many rules: the rules
// of a change's table are found by its relation ID (Bind indexes them), so
// the per-change cost must not grow with the rules of other tables. Cases:
// one rule on one table; two rules on one table (the rules per table of
// the next case); 1,000 rules over 500 tables, the changes going round
// the tables. Compare ns/op of the last two (issue 15: within 1.2x); the
// first shows what a second rule on the same table costs.
func BenchmarkMapManyRules(b *testing.B) {
	for _, tc := range []struct {
		name          string
		rules, tables int
	}{
		{"rules=1,tables=1", 1, 1},
		{"rules=2,tables=1", 2, 1},
		{"rules=1000,tables=500", 1000, 500},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m, changes := manyRules(b, tc.rules, tc.tables)
			keys := make([]string, 0, 8)
			want := min(tc.rules/tc.tables, 2)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				var err error
				keys, err = m.AppendKeys(keys[:0], changes[i])
				if err != nil || len(keys) != want {
					b.Fatalf("keys %q, err %v", keys, err)
				}
				if i++; i == len(changes) {
					i = 0
				}
			}
		})
	}
}

// manyRules builds a mapper with rules rules over tables tables (rule j on
// table j mod tables; the first rule of a table renders item:{id}, the
// second list:{id}), binds every table, and returns 500 UPDATEs going
// round the tables.
func manyRules(b *testing.B, rules, tables int) (*Mapper, []*replication.Change) {
	rs := make([]Rule, rules)
	for j := range rs {
		tpl := "item:{id}"
		if j/tables%2 == 1 {
			tpl = "list:{id}"
		}
		rs[j] = Rule{Table: fmt.Sprintf("t%d", j%tables), Templates: mustTemplates(b, tpl), Where: fmt.Sprintf("rules[%d] (bench)", j)}
	}
	m := newMapper(b, rs...)
	rels := make([]*replication.Relation, tables)
	for t := range rels {
		rels[t] = &replication.Relation{
			ID: uint32(16384 + t), Namespace: "public", Name: fmt.Sprintf("t%d", t), ReplicaIdentity: 'd',
			Columns: []replication.Column{{Name: "id", Key: true, TypeOID: 20}, {Name: "n", TypeOID: 20}, {Name: "payload", TypeOID: 25}},
		}
		if err := m.Bind(rels[t]); err != nil {
			b.Fatal(err)
		}
	}
	// As many changes (rows) whatever the number of tables, so that only
	// the spread over tables differs between the cases.
	changes := make([]*replication.Change, 500)
	for i := range changes {
		changes[i] = update(rels[i%tables], 0, replication.Tuple{}, tup(txt(fmt.Sprint(1000+i)), txt("7"), txt("item payload")))
	}
	return m, changes
}

// TestRefreshRowAllocations: a refreshed row costs one allocation, its
// JSON string; its text values are escaped into the reused buffer, not
// copied into a string each first (a wide row's TOASTed texts are
// kilobytes).
func TestRefreshRowAllocations(t *testing.T) {
	r := usersRule(t, false, "user:{id}")
	r.Actions = Actions{Refresh: true}
	m := newMapper(t, r)
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	bio := strings.Repeat("0123456789abcdef", 200) // 3.2 KB, a TOASTed text
	ch := insert(rel, tup(txt("42"), txt("a@x"), txt(bio)))
	var keys []string
	var acts []replication.Action
	keys, acts, _ = m.AppendChange(keys[:0], acts[:0], ch) // warm the buffers
	allocs := testing.AllocsPerRun(100, func() {
		keys, acts, _ = m.AppendChange(keys[:0], acts[:0], ch)
	})
	if len(acts) != 1 || acts[0].Kind != replication.ActSet || !strings.Contains(acts[0].Value, `"`+bio+`"`) {
		t.Fatalf("actions %+v", acts)
	}
	if allocs > 1 {
		t.Errorf("%.1f allocations per refreshed row, want at most 1 (its JSON)", allocs)
	}
}

// BenchmarkRefreshWideRow renders the refresh of a row like bench --wide's:
// 100 columns, 96 short numbers as text and four 3.2 KB texts (TOASTed in
// PostgreSQL), about 13 KB of JSON. MB/s is of the JSON.
func BenchmarkRefreshWideRow(b *testing.B) {
	rel := &replication.Relation{ID: 16390, Namespace: "public", Name: "users", ReplicaIdentity: 'd'}
	var vals []replication.Value
	for i := range 100 {
		rel.Columns = append(rel.Columns, replication.Column{Name: fmt.Sprintf("c%d", i), Key: i == 0, TypeOID: 25})
		if i%25 == 24 {
			vals = append(vals, txt(strings.Repeat(fmt.Sprintf("%032x", i), 100)))
		} else {
			vals = append(vals, txt(fmt.Sprint(i*12345)))
		}
	}
	r := Rule{Table: "users", Templates: mustTemplates(b, "item:{c0}"), Where: "rules[0] (bench)", Actions: Actions{Refresh: true}}
	m := newMapper(b, r)
	if err := m.Bind(rel); err != nil {
		b.Fatal(err)
	}
	ch := insert(rel, tup(vals...))
	var keys []string
	var acts []replication.Action
	keys, acts, _ = m.AppendChange(keys[:0], acts[:0], ch)
	if len(acts) != 1 {
		b.Fatalf("actions %+v", acts)
	}
	b.SetBytes(int64(len(acts[0].Value)))
	b.ReportAllocs()
	for b.Loop() {
		keys, acts, _ = m.AppendChange(keys[:0], acts[:0], ch)
	}
}
