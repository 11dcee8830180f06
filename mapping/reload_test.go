package mapping

import (
	"slices"
	"testing"
)

func TestNewlyManagedGlobs(t *testing.T) {
	t.Parallel()
	cond := func(src string) *Condition {
		c, err := CompileCondition(src)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	users := func(mod func(r *Rule), tpls ...string) Rule {
		r := Rule{Table: "users", Templates: mustTemplates(t, tpls...)}
		if mod != nil {
			mod(&r)
		}
		return r
	}
	base := []Rule{
		users(nil, "user:{id}", "user:email:{email}"),
		{Table: "orders", Templates: mustTemplates(t, "order:{id}"), Ops: OnInsert | OnDelete, WhenChanged: []string{"a", "b"}},
		{Table: "feeds", Templates: mustTemplates(t, "feed:{id}"), When: cond(`new.kind == "x"`)},
		{Table: "stale", Templates: mustTemplates(t, "stale:{id}:{v}"), AllowStaleOldKeys: true},
	}
	tests := []struct {
		name string
		next []Rule
		want []string
	}{
		{"same rules", base, nil},
		{"rules removed", base[:1], nil},
		{"new template on a table", []Rule{users(nil, "user:{id}", "user:email:{email}", "user:name:{name|lower}")}, []string{"user:name:*"}},
		{"template moved to a second rule", []Rule{users(nil, "user:{id}"), users(nil, "user:email:{email}")}, nil},
		{"new table", append(slices.Clone(base), Rule{Table: "accounts", Templates: mustTemplates(t, "account:{id}")}), []string{"account:*"}},
		{"same template, other schema", []Rule{{Schema: "crm", Table: "users", Templates: mustTemplates(t, "user:{id}")}}, []string{"user:*"}},
		{"narrower ops", []Rule{{Table: "orders", Templates: mustTemplates(t, "order:{id}"), Ops: OnDelete, WhenChanged: []string{"a"}}}, nil},
		{"wider ops", []Rule{{Table: "orders", Templates: mustTemplates(t, "order:{id}"), Ops: OnInsert | OnUpdate | OnDelete, WhenChanged: []string{"a"}}}, []string{"order:*"}},
		{"all ops", []Rule{{Table: "orders", Templates: mustTemplates(t, "order:{id}"), WhenChanged: []string{"a"}}}, []string{"order:*"}},
		{"ops now limited on a rule that had all", []Rule{users(func(r *Rule) { r.Ops = OnUpdate }, "user:{id}")}, nil},
		{"when_changed dropped", []Rule{{Table: "orders", Templates: mustTemplates(t, "order:{id}"), Ops: OnInsert}}, []string{"order:*"}},
		{"when_changed widened", []Rule{{Table: "orders", Templates: mustTemplates(t, "order:{id}"), Ops: OnInsert, WhenChanged: []string{"a", "c"}}}, []string{"order:*"}},
		{"when_changed added", []Rule{users(func(r *Rule) { r.WhenChanged = []string{"email"} }, "user:{id}")}, nil},
		{"same when", []Rule{{Table: "feeds", Templates: mustTemplates(t, "feed:{id}"), When: cond(`new.kind == "x"`)}}, nil},
		{"other when", []Rule{{Table: "feeds", Templates: mustTemplates(t, "feed:{id}"), When: cond(`new.kind == "y"`)}}, []string{"feed:*"}},
		{"when dropped", []Rule{{Table: "feeds", Templates: mustTemplates(t, "feed:{id}")}}, []string{"feed:*"}},
		{"when added", []Rule{users(func(r *Rule) { r.When = cond(`new.id != "0"`) }, "user:{id}")}, nil},
		{"stale old keys no longer allowed", []Rule{{Table: "stale", Templates: mustTemplates(t, "stale:{id}:{v}")}}, []string{"stale:*:*"}},
		{"stale old keys still allowed", []Rule{{Table: "stale", Templates: mustTemplates(t, "stale:{id}:{v}"), AllowStaleOldKeys: true}}, nil},
		{"template with other filters, same glob", []Rule{users(nil, "user:{id|lower}")}, []string{"user:*"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prev, err := New(slices.Clone(base))
			if err != nil {
				t.Fatal(err)
			}
			next, err := New(slices.Clone(tc.next))
			if err != nil {
				t.Fatal(err)
			}
			if got := NewlyManagedGlobs(prev, next); !slices.Equal(got, tc.want) {
				t.Errorf("NewlyManagedGlobs = %q, want %q", got, tc.want)
			}
		})
	}
}

// Actions count: a rule that only versioned its keys did not keep them, so
// a reload that makes it delete them flushes them; a rule that does not
// delete or refresh has nothing to flush; new generation keys are named.
func TestNewlyManagedGlobsActions(t *testing.T) {
	t.Parallel()
	rule := func(a Actions, keys ...string) Rule {
		r := usersRule(t, false, keys...)
		r.Actions = a
		return r
	}
	prev := newMapper(t, rule(Actions{Version: true}, "user:{id}"), rule(Actions{Refresh: true}, "card:{id}"))
	next := newMapper(t, rule(Actions{Delete: true}, "user:{id}"), rule(Actions{}, "card:{id}"),
		rule(Actions{Publish: true, PublishChannel: "c"}, "pub:{id}"), rule(Actions{Generation: true, GenerationKey: "gen:users"}))
	if got, want := NewlyManagedGlobs(prev, next), []string{"user:*"}; !slices.Equal(got, want) {
		t.Errorf("NewlyManagedGlobs = %q, want %q", got, want)
	}
	if got := NewGenerations(prev, next); !slices.Equal(got, []string{"gen:users"}) {
		t.Errorf("NewGenerations = %q", got)
	}
	if got := NewGenerations(next, next); len(got) != 0 {
		t.Errorf("NewGenerations of the same rules = %q", got)
	}
}
