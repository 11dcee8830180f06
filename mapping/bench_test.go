package mapping

import (
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
