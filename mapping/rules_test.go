package mapping

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

func mustCondition(t testing.TB, src string) *Condition {
	t.Helper()
	c, err := CompileCondition(src)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestOpSet(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		set  OpSet
		has  []OpSet
		not  []OpSet
		text string
	}{
		{0, []OpSet{OnInsert, OnUpdate, OnDelete, OnTruncate}, nil, "[insert, update, delete, truncate]"},
		{AllOps, []OpSet{OnInsert, OnUpdate, OnDelete, OnTruncate}, nil, "[insert, update, delete, truncate]"},
		{OnInsert | OnDelete, []OpSet{OnInsert, OnDelete}, []OpSet{OnUpdate, OnTruncate}, "[insert, delete]"},
		{OnTruncate, []OpSet{OnTruncate}, []OpSet{OnInsert, OnUpdate, OnDelete}, "[truncate]"},
	} {
		for _, o := range tc.has {
			if !tc.set.Has(o) {
				t.Errorf("%v.Has(%v) = false", tc.set, o)
			}
		}
		for _, o := range tc.not {
			if tc.set.Has(o) {
				t.Errorf("%v.Has(%v) = true", tc.set, o)
			}
		}
		if got := tc.set.String(); got != tc.text {
			t.Errorf("String() = %q, want %q", got, tc.text)
		}
	}
	for _, n := range strings.Split(OpNames, ", ") {
		if _, ok := ParseOp(n); !ok {
			t.Errorf("ParseOp(%q) failed", n)
		}
	}
	if _, ok := ParseOp("INSERT"); ok {
		t.Error("ParseOp is case-insensitive")
	}
}

// TestRuleOptions covers ops, when_changed and when on every kind of change.
func TestRuleOptions(t *testing.T) {
	t.Parallel()
	ins := func(r *replication.Relation) *replication.Change {
		return insert(r, tup(txt("1"), txt("a@x"), txt("bio")))
	}
	upd := func(oldKind byte, old, n replication.Tuple) func(r *replication.Relation) *replication.Change {
		return func(r *replication.Relation) *replication.Change { return update(r, oldKind, old, n) }
	}
	dele := func(r *replication.Relation) *replication.Change {
		return del(r, 'O', tup(txt("1"), txt("a@x"), txt("bio")))
	}
	tests := []struct {
		name        string
		identity    byte
		ops         OpSet
		whenChanged []string
		when        string
		change      func(*replication.Relation) *replication.Change
		want        []string // nil: the rule skipped the change
		wantErr     error
	}{
		// ops
		{name: "ops insert: insert", identity: 'f', ops: OnInsert, change: ins, want: []string{"user:1"}},
		{name: "ops insert: update skipped", identity: 'f', ops: OnInsert, change: upd('O', tup(txt("1"), txt("a"), txt("b")), tup(txt("1"), txt("c"), txt("b")))},
		{name: "ops insert: delete skipped", identity: 'f', ops: OnInsert, change: dele},
		{name: "ops update+delete: insert skipped", identity: 'f', ops: OnUpdate | OnDelete, change: ins},
		{name: "ops update+delete: delete", identity: 'f', ops: OnUpdate | OnDelete, change: dele, want: []string{"user:1"}},
		{name: "ops truncate only: delete skipped", identity: 'f', ops: OnTruncate, change: dele},

		// when_changed under FULL: exact
		{name: "when_changed: changed column", identity: 'f', whenChanged: []string{"email"},
			change: upd('O', tup(txt("1"), txt("a"), txt("b")), tup(txt("1"), txt("c"), txt("b"))), want: []string{"user:1"}},
		{name: "when_changed: other column changed", identity: 'f', whenChanged: []string{"email"},
			change: upd('O', tup(txt("1"), txt("a"), txt("b")), tup(txt("1"), txt("a"), txt("c")))},
		{name: "when_changed: one of two changed", identity: 'f', whenChanged: []string{"email", "bio"},
			change: upd('O', tup(txt("1"), txt("a"), txt("b")), tup(txt("1"), txt("a"), txt("c"))), want: []string{"user:1"}},
		{name: "when_changed: unchanged TOAST is unchanged (FULL)", identity: 'f', whenChanged: []string{"bio"},
			change: upd('O', tup(txt("1"), txt("a"), txt("long")), tup(txt("1"), txt("b"), unchanged))},
		{name: "when_changed: NULL to value", identity: 'f', whenChanged: []string{"email"},
			change: upd('O', tup(txt("1"), null, txt("b")), tup(txt("1"), txt("a"), txt("b"))), want: []string{"user:1"}},
		{name: "when_changed: value to NULL", identity: 'f', whenChanged: []string{"email"},
			change: upd('O', tup(txt("1"), txt("a"), txt("b")), tup(txt("1"), null, txt("b"))), want: []string{"user:1"}},
		{name: "when_changed: NULL to NULL", identity: 'f', whenChanged: []string{"email"},
			change: upd('O', tup(txt("1"), null, txt("b")), tup(txt("1"), null, txt("c")))},
		{name: "when_changed: empty string to NULL", identity: 'f', whenChanged: []string{"email"},
			change: upd('O', tup(txt("1"), txt(""), txt("b")), tup(txt("1"), null, txt("b"))), want: []string{"user:1"}},
		{name: "when_changed does not filter INSERT", identity: 'f', whenChanged: []string{"email"}, change: ins, want: []string{"user:1"}},
		{name: "when_changed does not filter DELETE", identity: 'f', whenChanged: []string{"email"}, change: dele, want: []string{"user:1"}},

		// when_changed under DEFAULT: an unknown old value counts as changed
		{name: "when_changed DEFAULT: no old image, non-key column counts as changed", identity: 'd', whenChanged: []string{"email"},
			change: upd(0, tup(), tup(txt("1"), txt("a"), txt("b"))), want: []string{"user:1"}},
		{name: "when_changed DEFAULT: no old image, key column is unchanged", identity: 'd', whenChanged: []string{"id"},
			change: upd(0, tup(), tup(txt("1"), txt("a"), txt("b")))},
		{name: "when_changed DEFAULT: K image, key column changed", identity: 'd', whenChanged: []string{"id"},
			change: upd('K', tup(txt("1"), null, null), tup(txt("2"), txt("a"), txt("b"))), want: []string{"user:1", "user:2"}},
		{name: "when_changed DEFAULT: K image without the column counts as changed", identity: 'd', whenChanged: []string{"email"},
			change: upd('K', tup(txt("1"), null, null), tup(txt("2"), txt("a"), txt("b"))), want: []string{"user:1", "user:2"}},
		{name: "when_changed DEFAULT: unchanged TOAST without old image is unchanged", identity: 'd', whenChanged: []string{"bio"},
			change: upd(0, tup(), tup(txt("1"), txt("a"), unchanged))},

		// when
		{name: "when true", identity: 'f', when: `new.email != old.email`,
			change: upd('O', tup(txt("1"), txt("a"), txt("b")), tup(txt("1"), txt("c"), txt("b"))), want: []string{"user:1"}},
		{name: "when false", identity: 'f', when: `new.email != old.email`,
			change: upd('O', tup(txt("1"), txt("a"), txt("b")), tup(txt("1"), txt("a"), txt("c")))},
		{name: "when op", identity: 'f', when: `op == "delete"`, change: dele, want: []string{"user:1"}},
		{name: "when op false", identity: 'f', when: `op == "delete"`, change: ins},
		{name: "when old unknown on insert counts as true", identity: 'f', when: `new.email != old.email`, change: ins, want: []string{"user:1"}},
		{name: "when decided by known values on insert", identity: 'f', when: `op == "update" && new.email != old.email`, change: ins},
		{name: "when new unknown on delete counts as true", identity: 'f', when: `new.bio == "x"`, change: dele, want: []string{"user:1"}},
		{name: "when old outside K image is unknown", identity: 'd', when: `old.email == "a"`,
			change: upd('K', tup(txt("1"), null, null), tup(txt("2"), txt("b"), txt("b"))), want: []string{"user:1", "user:2"}},
		{name: "when key column of K image is known", identity: 'd', when: `old.id == "7"`,
			change: upd('K', tup(txt("1"), null, null), tup(txt("2"), txt("b"), txt("b")))},
		{name: "when NULL is null", identity: 'f', when: `new.email == null`, change: func(r *replication.Relation) *replication.Change {
			return insert(r, tup(txt("1"), null, txt("b")))
		}, want: []string{"user:1"}},
		{name: "when unchanged TOAST reads the old value", identity: 'f', when: `new.bio == "long"`,
			change: upd('O', tup(txt("1"), txt("a"), txt("long")), tup(txt("1"), txt("b"), unchanged)), want: []string{"user:1"}},
		{name: "when booleans are t and f", identity: 'f', when: `new.bio == "t"`, change: func(r *replication.Relation) *replication.Change {
			return insert(r, tup(txt("1"), null, txt("f")))
		}},
		{name: "when evaluation error stops", identity: 'f', when: `new.email > "a"`, change: func(r *replication.Relation) *replication.Change {
			return insert(r, tup(txt("1"), null, txt("b")))
		}, wantErr: ErrCondition},
		{name: "when conversion error stops", identity: 'f', when: `int(new.email) > 3`, change: ins, wantErr: ErrCondition},

		// combined: all must let the change through
		{name: "ops, when_changed and when together", identity: 'f', ops: OnUpdate, whenChanged: []string{"email"}, when: `new.bio == "b"`,
			change: upd('O', tup(txt("1"), txt("a"), txt("b")), tup(txt("1"), txt("c"), txt("b"))), want: []string{"user:1"}},
		{name: "when_changed passes, when fails", identity: 'f', whenChanged: []string{"email"}, when: `new.bio == "z"`,
			change: upd('O', tup(txt("1"), txt("a"), txt("b")), tup(txt("1"), txt("c"), txt("b")))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := usersRule(t, false, "user:{id}")
			r.Ops, r.WhenChanged = tc.ops, tc.whenChanged
			if tc.when != "" {
				r.When = mustCondition(t, tc.when)
			}
			m := newMapper(t, r)
			rel := usersRel(tc.identity)
			if err := m.Bind(rel); err != nil {
				t.Fatal(err)
			}
			got, err := m.AppendKeys(nil, tc.change(rel))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error = %v, want %v", err, tc.wantErr)
				}
				for _, s := range []string{"rules[0] (test)", strconv.Quote(tc.when), "public.users", "not skipped"} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not mention %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("keys = %q, want %q", got, tc.want)
			}
			if skipped := m.SkippedRules(); (tc.want == nil) != (skipped == 1) {
				t.Errorf("SkippedRules = %d", skipped)
			}
		})
	}
}

// Rules of one table decide independently; truncate patterns come only
// from rules whose ops include truncate.
func TestSeveralRulesWithOptions(t *testing.T) {
	t.Parallel()
	m := newMapper(t,
		Rule{Table: "users", Templates: mustTemplates(t, "user:{id}"), Where: "rules[0]"},
		Rule{Table: "users", Templates: mustTemplates(t, "user:email:{email}"), Ops: OnUpdate | OnDelete, WhenChanged: []string{"email"}, Where: "rules[1]"},
		Rule{Table: "users", Templates: mustTemplates(t, "bio:{id}", "user:{id}"), Ops: OnInsert | OnUpdate, When: mustCondition(t, `new.bio != ""`), Where: "rules[2]"},
		Rule{Table: "users", Templates: mustTemplates(t, "all-users"), Ops: OnTruncate, Where: "rules[3]"},
	)
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	keys, err := m.AppendKeys(nil, update(rel, 'O', tup(txt("1"), txt("a"), txt("")), tup(txt("1"), txt("a"), txt("x"))))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"user:1", "bio:1"}; !slices.Equal(keys, want) {
		t.Errorf("keys = %q, want %q", keys, want)
	}
	keys, err = m.AppendKeys(nil, update(rel, 'O', tup(txt("1"), txt("a"), txt("x")), tup(txt("1"), txt("b"), txt(""))))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"user:1", "user:email:a", "user:email:b"}; !slices.Equal(keys, want) { // new.bio is empty
		t.Errorf("keys = %q, want %q", keys, want)
	}
	if got, want := m.AppendGlobs(nil, rel), []string{"user:*", "all-users"}; !slices.Equal(got, want) {
		t.Errorf("globs = %q, want %q", got, want)
	}
	m2 := newMapper(t, Rule{Table: "users", Templates: mustTemplates(t, "user:{id}"), Ops: OnInsert | OnUpdate | OnDelete})
	if got := m2.AppendGlobs(nil, rel); len(got) != 0 {
		t.Errorf("globs of a rule without truncate = %q", got)
	}
}

func TestBindChecksWhenColumns(t *testing.T) {
	t.Parallel()
	r := usersRule(t, false, "user:{id}")
	r.WhenChanged = []string{"email", "gone"}
	r.When = mustCondition(t, `new.nope == "x" || old["missing"] == "y" || new.email == "z"`)
	m := newMapper(t, r)
	err := m.Bind(usersRel('f'))
	if !errors.Is(err, ErrRuleBinding) {
		t.Fatalf("Bind = %v, want ErrRuleBinding", err)
	}
	for _, s := range []string{`"gone" named in when_changed`, `"nope" used by the when condition`, `"missing" used by the when condition`} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Bind error %q lacks %q", err, s)
		}
	}
	if strings.Contains(err.Error(), `"email"`) {
		t.Errorf("Bind error names an existing column: %v", err)
	}
}

// A 'K' old image carries only the replica identity: a NULL in it is a
// column it leaves out, even when the relation claims FULL (a partition
// published through its root, whose identity is narrower than the root's).
func TestKImageNullIsUnknown(t *testing.T) {
	t.Parallel()
	m := newMapper(t, usersRule(t, false, "user:{id}", "user:email:{email}"))
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	_, err := m.AppendKeys(nil, del(rel, 'K', tup(txt("1"), null, null)))
	if !errors.Is(err, ErrOldValueUnavailable) || !strings.Contains(err.Error(), `"email"`) {
		t.Fatalf("delete with a K image under a FULL relation = %v, want ErrOldValueUnavailable naming email", err)
	}
	if m.NullKeys() != 0 {
		t.Errorf("a K image's NULL was counted as a NULL value")
	}
}

// A NULL that makes no key is logged once per rule, at warn level, without
// the row's values.
func TestNullWarnedOncePerRule(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.InfoLevel)
	m, err := New([]Rule{
		{Table: "users", Templates: mustTemplates(t, "user:{id}", "user:email:{email}"), Where: "rules[0]"},
		{Table: "users", Templates: mustTemplates(t, "bio:{bio}"), Where: "rules[1]"},
		{Table: "users", Templates: mustTemplates(t, "e:{email|default:none}"), Where: "rules[2]"},
	}, WithLogger(zap.New(core)))
	if err != nil {
		t.Fatal(err)
	}
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := m.AppendKeys(nil, insert(rel, tup(txt("secret-id"), null, null))); err != nil {
			t.Fatal(err)
		}
	}
	entries := logs.All()
	if len(entries) != 2 {
		t.Fatalf("%d log entries, want 2 (one per rule with a NULL): %v", len(entries), entries)
	}
	for i, e := range entries {
		if e.Level != zapcore.WarnLevel {
			t.Errorf("entry %d at level %v", i, e.Level)
		}
		f := e.ContextMap()
		if f["rule"] != []string{"rules[0]", "rules[1]"}[i] || f["table"] != "public.users" {
			t.Errorf("entry %d fields %v", i, f)
		}
		for _, v := range f {
			if s, ok := v.(string); ok && strings.Contains(s, "secret-id") {
				t.Errorf("entry %d logs a row value: %v", i, f)
			}
		}
	}
	if m.NullKeys() != 10 {
		t.Errorf("NullKeys = %d, want 10", m.NullKeys())
	}
	// New without options keeps working and logs nothing.
	if _, err := New([]Rule{usersRule(t, false, "user:{id}")}); err != nil {
		t.Fatal(err)
	}
}

// Conditions are evaluated once per change and only for rules that have
// one; the variables are shared across the rules of the change.
func TestWhenEvaluatedOnlyForRulesWithIt(t *testing.T) {
	t.Parallel()
	m := newMapper(t,
		Rule{Table: "users", Templates: mustTemplates(t, "user:{id}"), Where: "rules[0]"},
		Rule{Table: "users", Templates: mustTemplates(t, "x:{id}"), Ops: OnDelete, When: mustCondition(t, `int(new.id) > 0`), Where: "rules[1]"},
	)
	rel := usersRel('f')
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	// The when of rules[1] would fail on this value, but the rule's ops
	// exclude insert, so it is never evaluated.
	keys, err := m.AppendKeys(nil, insert(rel, tup(txt("not-a-number"), null, null)))
	if err != nil || !slices.Equal(keys, []string{"user:not-a-number"}) {
		t.Fatalf("keys %q, err %v", keys, err)
	}
}
