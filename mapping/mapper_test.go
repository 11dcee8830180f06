package mapping

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// helpers to build relations, tuples and changes by hand

func usersRel(identity byte) *replication.Relation {
	full := identity == 'f'
	return &replication.Relation{
		ID: 16384, Namespace: "public", Name: "users", ReplicaIdentity: identity,
		Columns: []replication.Column{
			{Name: "id", Key: true, TypeOID: 23},
			{Name: "email", Key: full, TypeOID: 25},
			{Name: "bio", Key: full, TypeOID: 25},
		},
	}
}

func txt(s string) replication.Value {
	return replication.Value{Kind: replication.ValueText, Data: []byte(s)}
}

var (
	null      = replication.Value{Kind: replication.ValueNull}
	unchanged = replication.Value{Kind: replication.ValueUnchanged}
)

func tup(vs ...replication.Value) replication.Tuple { return replication.Tuple{Values: vs} }

func insert(rel *replication.Relation, n replication.Tuple) *replication.Change {
	return &replication.Change{Op: replication.OpInsert, Rel: rel, New: n}
}

func update(rel *replication.Relation, oldKind byte, old, n replication.Tuple) *replication.Change {
	return &replication.Change{Op: replication.OpUpdate, Rel: rel, HasOld: oldKind != 0, OldKind: oldKind, Old: old, New: n}
}

func del(rel *replication.Relation, oldKind byte, old replication.Tuple) *replication.Change {
	return &replication.Change{Op: replication.OpDelete, Rel: rel, HasOld: true, OldKind: oldKind, Old: old}
}

func mustTemplates(t testing.TB, srcs ...string) []*Template {
	t.Helper()
	var out []*Template
	for _, s := range srcs {
		tpl, err := ParseTemplate(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tpl)
	}
	return out
}

func newMapper(t testing.TB, rules ...Rule) *Mapper {
	t.Helper()
	m, err := New(rules)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func usersRule(t testing.TB, allowStale bool, keys ...string) Rule {
	return Rule{Table: "users", Templates: mustTemplates(t, keys...), AllowStaleOldKeys: allowStale, Where: "rules[0] (test)"}
}

func TestNew(t *testing.T) {
	t.Parallel()
	m, err := New([]Rule{
		{Table: "users", Templates: mustTemplates(t, "user:{id}")},
		{Schema: "app", Table: "orders", Templates: mustTemplates(t, "order:{id}")},
		{Table: "users", Templates: mustTemplates(t, "user:email:{email}")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Tables(), []string{"app.orders", "public.users"}; !slices.Equal(got, want) {
		t.Errorf("Tables() = %q, want %q", got, want)
	}
	if got := len(m.Rules("public.users")); got != 2 {
		t.Errorf("Rules(public.users) has %d rules, want 2", got)
	}
	if got := m.Rules("public.nope"); got != nil {
		t.Errorf("Rules(public.nope) = %v, want nil", got)
	}
	for _, bad := range []Rule{
		{Table: "", Templates: mustTemplates(t, "x:{id}"), Where: "rules[3]"},
		{Table: "t", Where: "rules[3]"},
	} {
		if _, err := New([]Rule{bad}); err == nil || !strings.Contains(err.Error(), "rules[3]") {
			t.Errorf("New(%+v) = %v, want an error naming the rule", bad, err)
		}
	}
}

func TestAppendKeys(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		identity   byte
		allowStale bool
		keys       []string
		change     func(rel *replication.Relation) *replication.Change
		want       []string
		wantErr    error  // errors.Is target
		errHas     string // substring of the error
		wantNull   uint64
		wantSkip   uint64
	}{
		{
			name: "insert", identity: 'f', keys: []string{"user:{id}", "user:email:{email}"},
			change: func(r *replication.Relation) *replication.Change {
				return insert(r, tup(txt("42"), txt("a@x"), txt("bio")))
			},
			want: []string{"user:42", "user:email:a@x"},
		},
		{
			name: "update default identity without old tuple: old key from new key columns, deduplicated", identity: 'd',
			keys: []string{"user:{id}", "user:{id}:profile"},
			change: func(r *replication.Relation) *replication.Change {
				return update(r, 0, tup(), tup(txt("42"), txt("a@x"), txt("bio")))
			},
			want: []string{"user:42", "user:42:profile"},
		},
		{
			name: "update with K old tuple (primary key changed)", identity: 'd', keys: []string{"user:{id}"},
			change: func(r *replication.Relation) *replication.Change {
				return update(r, 'K', tup(txt("41"), null, null), tup(txt("42"), txt("a@x"), txt("bio")))
			},
			want: []string{"user:41", "user:42"},
		},
		{
			name: "update with O old tuple (FULL), email changed", identity: 'f',
			keys: []string{"user:{id}", "user:email:{email}"},
			change: func(r *replication.Relation) *replication.Change {
				return update(r, 'O', tup(txt("42"), txt("old@x"), txt("bio")), tup(txt("42"), txt("new@x"), txt("bio")))
			},
			want: []string{"user:42", "user:email:old@x", "user:email:new@x"},
		},
		{
			name: "delete with K old tuple", identity: 'd', keys: []string{"user:{id}", "user:{id}:x"},
			change: func(r *replication.Relation) *replication.Change {
				return del(r, 'K', tup(txt("42"), null, null))
			},
			want: []string{"user:42", "user:42:x"},
		},
		{
			name: "delete with O old tuple", identity: 'f', keys: []string{"user:{id}", "user:email:{email}"},
			change: func(r *replication.Relation) *replication.Change {
				return del(r, 'O', tup(txt("42"), txt("a@x"), txt("bio")))
			},
			want: []string{"user:42", "user:email:a@x"},
		},
		{
			name: "unchanged TOAST in new tuple taken from O old tuple", identity: 'f', keys: []string{"user:bio:{bio}"},
			change: func(r *replication.Relation) *replication.Change {
				return update(r, 'O', tup(txt("42"), txt("a@x"), txt("long bio")), tup(txt("42"), txt("b@x"), unchanged))
			},
			want: []string{"user:bio:long bio"},
		},
		{
			name: "unchanged TOAST with no old tuple", identity: 'f', keys: []string{"user:bio:{bio}"},
			change: func(r *replication.Relation) *replication.Change {
				return update(r, 0, tup(), tup(txt("42"), txt("b@x"), unchanged))
			},
			wantErr: ErrOldValueUnavailable, errHas: `"bio"`,
		},
		{
			name: "unchanged TOAST in new tuple, K old tuple has no value: skipped under the opt-in", identity: 'd', allowStale: true, keys: []string{"user:bio:{bio}"},
			change: func(r *replication.Relation) *replication.Change {
				return update(r, 'K', tup(txt("41"), null, null), tup(txt("42"), txt("b@x"), unchanged))
			},
			want: nil, wantSkip: 2,
		},
		{
			name: "NULL value makes no key", identity: 'f', keys: []string{"user:{id}", "user:email:{email}"},
			change: func(r *replication.Relation) *replication.Change {
				return insert(r, tup(txt("42"), null, txt("bio")))
			},
			want: []string{"user:42"}, wantNull: 1,
		},
		{
			name: "NULL in O old tuple and new tuple", identity: 'f', keys: []string{"user:email:{email}"},
			change: func(r *replication.Relation) *replication.Change {
				return update(r, 'O', tup(txt("42"), null, txt("b")), tup(txt("42"), null, txt("c")))
			},
			want: nil, wantNull: 2,
		},
		{
			name: "NULL set on update under FULL", identity: 'f', keys: []string{"user:email:{email}"},
			change: func(r *replication.Relation) *replication.Change {
				return update(r, 'O', tup(txt("42"), txt("a@x"), txt("b")), tup(txt("42"), null, txt("b")))
			},
			want: []string{"user:email:a@x"}, wantNull: 1,
		},
		{
			name: "stale old keys allowed: update without old tuple", identity: 'd', allowStale: true,
			keys: []string{"user:{id}", "user:email:{email}"},
			change: func(r *replication.Relation) *replication.Change {
				return update(r, 0, tup(), tup(txt("42"), txt("new@x"), txt("b")))
			},
			want: []string{"user:42", "user:email:new@x"}, wantSkip: 1,
		},
		{
			name: "stale old keys allowed: delete with K", identity: 'd', allowStale: true,
			keys: []string{"user:{id}", "user:email:{email}"},
			change: func(r *replication.Relation) *replication.Change {
				return del(r, 'K', tup(txt("42"), null, null))
			},
			want: []string{"user:42"}, wantSkip: 1,
		},
		{
			name: "values inserted literally", identity: 'f', keys: []string{"user:{id}", "user:email:{email}", "bio:{bio}"},
			change: func(r *replication.Relation) *replication.Change {
				return insert(r, tup(txt("a:b*c"), txt("{id} {email}"), txt("héllo wörld ✓ ?[x]")))
			},
			want: []string{"user:a:b*c", "user:email:{id} {email}", "bio:héllo wörld ✓ ?[x]"},
		},
		{
			name: "empty value", identity: 'f', keys: []string{"user:email:{email}"},
			change: func(r *replication.Relation) *replication.Change {
				return insert(r, tup(txt("42"), txt(""), txt("b")))
			},
			want: []string{"user:email:"},
		},
		{
			name: "binary value", identity: 'f', keys: []string{"user:{id}"},
			change: func(r *replication.Relation) *replication.Change {
				return insert(r, tup(replication.Value{Kind: replication.ValueBinary, Data: []byte{0, 0, 0, 42}}, null, null))
			},
			want: []string{"user:\x00\x00\x00*"},
		},
		{
			name: "repeated column and several columns", identity: 'f', keys: []string{"k:{id}:{email}:{id}"},
			change: func(r *replication.Relation) *replication.Change {
				return insert(r, tup(txt("1"), txt("e"), txt("b")))
			},
			want: []string{"k:1:e:1"},
		},
		{
			name: "new tuple shorter than the relation", identity: 'f', keys: []string{"bio:{bio}"},
			change: func(r *replication.Relation) *replication.Change {
				return insert(r, tup(txt("1")))
			},
			wantErr: ErrOldValueUnavailable,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := newMapper(t, usersRule(t, tc.allowStale, tc.keys...))
			rel := usersRel(tc.identity)
			if err := m.Bind(rel); err != nil {
				t.Fatalf("Bind: %v", err)
			}
			prefix := []string{"earlier"}
			got, err := m.AppendKeys(slices.Clone(prefix), tc.change(rel))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("AppendKeys error = %v, want %v", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Errorf("error %q does not mention %q", err, tc.errHas)
				}
				if !strings.Contains(err.Error(), "REPLICA IDENTITY FULL") {
					t.Errorf("error %q does not name the fix", err)
				}
			} else if err != nil {
				t.Fatalf("AppendKeys: %v", err)
			} else if !slices.Equal(got[1:], tc.want) || got[0] != "earlier" {
				t.Errorf("AppendKeys = %q, want %q", got, append(prefix, tc.want...))
			}
			if got := m.NullKeys(); got != tc.wantNull {
				t.Errorf("NullKeys() = %d, want %d", got, tc.wantNull)
			}
			if got := m.SkippedOldKeys(); got != tc.wantSkip {
				t.Errorf("SkippedOldKeys() = %d, want %d", got, tc.wantSkip)
			}
		})
	}
}

// Keys already in dst before the call are not deduplicated against (only
// keys within one call are unique), and keys survive buffer reuse.
func TestAppendKeysReusesBufferSafely(t *testing.T) {
	t.Parallel()
	m := newMapper(t, usersRule(t, false, "user:{id}", "user:{id}:x"))
	rel := usersRel('d')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, id := range []string{"1", "22", "1", "333"} {
		var err error
		keys, err = m.AppendKeys(keys, insert(rel, tup(txt(id), txt("e"), txt("b"))))
		if err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"user:1", "user:1:x", "user:22", "user:22:x", "user:1", "user:1:x", "user:333", "user:333:x"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys = %q, want %q", keys, want)
	}
}

// The change's values may be reused by the decoder after AppendKeys returns:
// keys must not alias them.
func TestAppendKeysCopiesValues(t *testing.T) {
	t.Parallel()
	m := newMapper(t, usersRule(t, false, "k:{id}"+":k"))
	rel := usersRel('d')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	data := []byte("42")
	keys, err := m.AppendKeys(nil, insert(rel, tup(replication.Value{Kind: 't', Data: data}, null, null)))
	if err != nil {
		t.Fatal(err)
	}
	copy(data, "99")
	if !slices.Equal(keys, []string{"k:42:k"}) {
		t.Errorf("keys = %q after the input changed, want [k:42:k]", keys)
	}
}

func TestBind(t *testing.T) {
	t.Parallel()
	dropped := func(*testing.T) *replication.Relation {
		r := usersRel('d')
		r.Columns = slices.Delete(r.Columns, 1, 2) // drop email
		return r
	}
	tests := []struct {
		name       string
		allowStale bool
		keys       []string
		rel        func(*testing.T) *replication.Relation
		wantErr    []string // substrings; nil = success
	}{
		{name: "key columns under DEFAULT", keys: []string{"user:{id}"}, rel: func(*testing.T) *replication.Relation { return usersRel('d') }},
		{name: "any column under FULL", keys: []string{"user:{id}", "user:email:{email}"}, rel: func(*testing.T) *replication.Relation { return usersRel('f') }},
		{
			name: "non-key column under DEFAULT", keys: []string{"user:{id}", "user:email:{email}"},
			rel:     func(*testing.T) *replication.Relation { return usersRel('d') },
			wantErr: []string{"user:email:{email}", "REPLICA IDENTITY FULL", "unsafe_allow_stale_old_keys", "public.users", "rules[0] (test)"},
		},
		{
			name: "non-key column under USING INDEX", keys: []string{"user:email:{email}"},
			rel:     func(*testing.T) *replication.Relation { return usersRel('i') },
			wantErr: []string{"REPLICA IDENTITY FULL", "USING INDEX"},
		},
		{
			name: "non-key column under NOTHING", keys: []string{"user:{id}"},
			rel: func(*testing.T) *replication.Relation {
				r := usersRel('n')
				r.Columns[0].Key = false
				return r
			},
			wantErr: []string{"REPLICA IDENTITY FULL", "NOTHING"},
		},
		{name: "non-key column allowed stale", allowStale: true, keys: []string{"user:email:{email}"}, rel: func(*testing.T) *replication.Relation { return usersRel('d') }},
		{
			name: "dropped column", keys: []string{"user:{id}", "user:email:{email}"}, rel: dropped,
			wantErr: []string{`no column "email"`, "user:email:{email}", "dropped or renamed"},
		},
		{
			name: "dropped column, allowed stale", allowStale: true, keys: []string{"user:email:{email}"}, rel: dropped,
			wantErr: []string{`no column "email"`},
		},
		{
			name: "several problems together", keys: []string{"user:{nope}", "user:bio:{bio}"},
			rel:     func(*testing.T) *replication.Relation { return usersRel('d') },
			wantErr: []string{`no column "nope"`, "user:bio:{bio}", "; "},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := newMapper(t, usersRule(t, tc.allowStale, tc.keys...))
			rel := tc.rel(t)
			err := m.Bind(rel)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Bind: %v", err)
				}
				if m.bound[rel.ID] == nil {
					t.Error("relation not bound after a successful Bind")
				}
				return
			}
			if !errors.Is(err, ErrRuleBinding) {
				t.Fatalf("Bind error = %v, want ErrRuleBinding", err)
			}
			for _, s := range tc.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Bind error %q does not mention %q", err, s)
				}
			}
			if m.bound[rel.ID] != nil {
				t.Error("relation still bound after a failed Bind")
			}
			// A failed Bind must not leave an older binding in use.
			keys, err := m.AppendKeys(nil, insert(rel, tup(txt("1"), txt("2"), txt("3"))))
			if err != nil || len(keys) != 0 {
				t.Errorf("AppendKeys after failed Bind = %q, %v; want nothing", keys, err)
			}
		})
	}
}

// A relation re-announced without a column that was there before fails and
// unbinds the relation.
func TestRebindAfterDrop(t *testing.T) {
	t.Parallel()
	m := newMapper(t, usersRule(t, false, "user:{id}", "user:bio:{bio}"))
	if err := m.Bind(usersRel('f')); err != nil {
		t.Fatal(err)
	}
	rel := usersRel('f')
	rel.Columns = rel.Columns[:2]
	err := m.Bind(rel)
	if !errors.Is(err, ErrRuleBinding) || !strings.Contains(err.Error(), `"bio"`) {
		t.Fatalf("Bind after drop = %v, want an error naming bio", err)
	}
	if m.bound[rel.ID] != nil {
		t.Error("old binding kept")
	}
}

func TestNoRules(t *testing.T) {
	t.Parallel()
	m := newMapper(t, usersRule(t, false, "user:{id}"))
	other := &replication.Relation{ID: 99, Namespace: "public", Name: "other", ReplicaIdentity: 'n',
		Columns: []replication.Column{{Name: "x"}}}
	if err := m.Bind(other); err != nil {
		t.Fatalf("Bind of a table without rules: %v", err)
	}
	for _, ch := range []*replication.Change{
		insert(other, tup(txt("1"))),
		update(other, 0, tup(), tup(unchanged)),
		del(other, 'K', tup(null)),
	} {
		keys, err := m.AppendKeys([]string{"a"}, ch)
		if err != nil || !slices.Equal(keys, []string{"a"}) {
			t.Errorf("AppendKeys(%v) = %q, %v; want [a], nil", ch.Op, keys, err)
		}
	}
	if g := m.AppendGlobs(nil, other); len(g) != 0 {
		t.Errorf("AppendGlobs = %q, want none", g)
	}
	// A change of a relation never bound produces nothing either.
	unbound := usersRel('d')
	unbound.ID = 7
	if keys, err := m.AppendKeys(nil, insert(unbound, tup(txt("1"), null, null))); err != nil || len(keys) != 0 {
		t.Errorf("AppendKeys of unbound relation = %q, %v", keys, err)
	}
}

// A table renamed to a name without rules is unbound, and Bind says so
// (issue 11: silently unbinding it confirmed its changes unapplied).
func TestRenamedAwayUnbinds(t *testing.T) {
	t.Parallel()
	m := newMapper(t, usersRule(t, false, "user:{id}"))
	rel := usersRel('d')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	renamed := usersRel('d')
	renamed.Name = "users_old"
	var ue *replication.UnboundError
	if err := m.Bind(renamed); !errors.As(err, &ue) || ue.Table != "public.users" || ue.Now != "public.users_old" || !slices.Equal(ue.Globs, []string{"user:*"}) {
		t.Fatalf("Bind of the renamed table = %v, want an UnboundError from public.users to public.users_old with pattern user:*", err)
	}
	if keys, _ := m.AppendKeys(nil, insert(renamed, tup(txt("1"), null, null))); len(keys) != 0 {
		t.Errorf("keys for a renamed table: %q", keys)
	}
}

func TestAppendKeysUnknownOp(t *testing.T) {
	t.Parallel()
	m := newMapper(t, usersRule(t, false, "user:{id}"))
	rel := usersRel('d')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AppendKeys(nil, &replication.Change{Op: 'X', Rel: rel}); err == nil {
		t.Error("AppendKeys accepted an unknown op")
	}
}

func TestAppendGlobs(t *testing.T) {
	t.Parallel()
	m := newMapper(t,
		Rule{Table: "users", Templates: mustTemplates(t, "user:{id}", "user:{email}", "user:{id}:x{a}{b}")},
		Rule{Table: "users", Templates: mustTemplates(t, "user:{tenant}", "a*b:{id}")},
		Rule{Table: "orders", Templates: mustTemplates(t, "order:{id}")},
	)
	got := m.AppendGlobs([]string{"user:*"}, usersRel('d'))
	want := []string{"user:*", "user:*", "user:*:x*", `a\*b:*`}
	if !slices.Equal(got, want) {
		t.Errorf("AppendGlobs = %q, want %q", got, want)
	}
	orders := &replication.Relation{ID: 2, Namespace: "public", Name: "orders"}
	if got := m.AppendGlobs(nil, orders); !slices.Equal(got, []string{"order:*"}) {
		t.Errorf("AppendGlobs(orders) = %q", got)
	}
}

func TestMultipleRulesSameTable(t *testing.T) {
	t.Parallel()
	m := newMapper(t,
		Rule{Table: "users", Templates: mustTemplates(t, "user:{id}"), Where: "rules[0]"},
		Rule{Table: "users", Templates: mustTemplates(t, "user:{id}", "user:email:{email}"), AllowStaleOldKeys: true, Where: "rules[1]"},
	)
	rel := usersRel('d')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	keys, err := m.AppendKeys(nil, del(rel, 'K', tup(txt("5"), null, null)))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(keys, []string{"user:5"}) {
		t.Errorf("keys = %q, want [user:5]", keys)
	}
	if m.SkippedOldKeys() != 1 {
		t.Errorf("SkippedOldKeys = %d, want 1", m.SkippedOldKeys())
	}
}

// The counters of rules given in no table order stay each rule's own (Bind
// keeps a table's counters side by side), and a change that arrives with
// another *Relation than the one bound (same ID and columns) maps the same.
func TestRuleCountersByTableAndRebind(t *testing.T) {
	rel := func(id uint32, name string) *replication.Relation {
		return &replication.Relation{ID: id, Namespace: "public", Name: name, ReplicaIdentity: 'd',
			Columns: []replication.Column{{Name: "id", Key: true, TypeOID: 20}, {Name: "n", TypeOID: 20}}}
	}
	m := newMapper(t,
		Rule{Table: "b", Templates: mustTemplates(t, "b:{id}"), Where: "rules[0]"},
		Rule{Table: "a", Templates: mustTemplates(t, "a:{id}"), Where: "rules[1]"},
		Rule{Table: "b", Templates: mustTemplates(t, "b2:{id}"), Where: "rules[2]"})
	a, b := rel(1, "a"), rel(2, "b")
	for _, r := range []*replication.Relation{a, b} {
		if err := m.Bind(r); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := m.AppendKeys(nil, update(b, 0, replication.Tuple{}, tup(txt("7"), txt("3"))))
	if err != nil || strings.Join(keys, " ") != "b:7 b2:7" {
		t.Fatalf("keys %q, err %v", keys, err)
	}
	// The same relation announced in another *Relation, not bound again.
	keys, err = m.AppendKeys(keys[:0], update(rel(2, "b"), 0, replication.Tuple{}, tup(txt("8"), txt("4"))))
	if err != nil || strings.Join(keys, " ") != "b:8 b2:8" {
		t.Fatalf("keys %q, err %v", keys, err)
	}
	var got []string
	for _, st := range m.Stats() {
		got = append(got, fmt.Sprintf("%s:%d/%d", st.Rule.Where, st.Applied, st.Outputs))
	}
	if want := "rules[0]:2/2 rules[1]:0/0 rules[2]:2/2"; strings.Join(got, " ") != want {
		t.Fatalf("stats %s, want %s", strings.Join(got, " "), want)
	}
}
