package mapping

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
)

func explainMapper(t *testing.T) *Mapper {
	t.Helper()
	return newMapper(t,
		Rule{Table: "users", Templates: mustTemplates(t, "user:{id}", "user:email:{email|lower}"), Where: "rules[0]"},
		Rule{Table: "users", Templates: mustTemplates(t, "user:list"), Ops: OnInsert | OnDelete, Where: "rules[1]"},
		Rule{Table: "users", Templates: mustTemplates(t, "user:{id}:status"), WhenChanged: []string{"status"}, Where: "rules[2]"},
		Rule{Table: "users", Templates: mustTemplates(t, "published:{id}"), When: mustCondition(t, `new.published == "t"`), Where: "rules[3]"},
		Rule{Table: "users", Templates: mustTemplates(t, "nick:{nick}"), Where: "rules[4]"},
		Rule{Schema: "app", Table: "orders", Templates: mustTemplates(t, "order:{id}"), Where: "rules[5]"},
	)
}

func TestExplain(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, table, op, old, new string
		keys                      []string
		out                       []string // substrings of the printed explanation
		failed                    bool
	}{
		{
			name: "update", table: "users", old: `{"id":1,"email":"A@X","status":"a","nick":null}`, new: `{"id":1,"email":"B@X","published":false,"nick":null}`,
			keys: []string{"user:1", "user:email:a@x", "user:email:b@x"},
			out: []string{
				"UPDATE of public.users",
				"rules[0]: applies", `user:email:a@x  from "user:email:{email|lower}"  (old row)`, `(new row)`,
				"rules[1]: skipped: ops [insert, delete] do not include update",
				"rules[2]: skipped: when_changed [status]: the UPDATE changes none of them",
				`rules[3]: skipped: when "new.published == \"t\"" is false`,
				`rules[4]: applies`, `template "nick:{nick}" makes no key for the old row: column "nick" is NULL`,
				"keys to delete (3):",
			},
		},
		{
			name: "insert", table: "public.users", new: `{"id":2,"email":"c@x","published":true,"nick":"n"}`,
			keys: []string{"user:2", "user:email:c@x", "user:list", "user:2:status", "published:2", "nick:n"},
			out:  []string{"INSERT of public.users", `when "new.published == \"t\"" is true`},
		},
		{
			name: "delete with only the key: unknowns are noted", table: "users", old: `{"id":3}`,
			keys: []string{"user:3", "user:list", "user:3:status", "published:3"},
			out: []string{"DELETE of public.users", `the change does not carry column "email"`,
				`is unknown (it depends on values the change does not carry), which counts as true`},
		},
		{
			name: "status changed, unknowns noted", table: "users", op: "update", old: `{"id":4,"status":"a"}`, new: `{"id":4,"status":"b"}`,
			keys: []string{"user:4", "user:4:status", "published:4"},
		},
		{
			name: "truncate", table: "users", op: "truncate",
			keys: []string{"user:*", "user:email:*", "user:*:status", "published:*", "nick:*"},
			out:  []string{"TRUNCATE of public.users", "patterns to delete (SCAN MATCH, then UNLINK) (5):", "(TRUNCATE pattern)", "rules[1]: skipped: ops [insert, delete] do not include truncate"},
		},
		{
			name: "numbers keep their text", table: "app.orders", new: `{"id": 40.00}`,
			keys: []string{"order:40.00"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := explainMapper(t)
			ch, err := m.ChangeFromJSON(tc.table, tc.op, tc.old, tc.new)
			if err != nil {
				t.Fatal(err)
			}
			var e *Explanation
			if tc.op == "truncate" {
				e = m.ExplainTruncate(ch.Rel)
			} else if e, err = m.Explain(ch); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(e.Keys, tc.keys) {
				t.Errorf("keys = %q, want %q", e.Keys, tc.keys)
			}
			if e.Failed != tc.failed {
				t.Errorf("Failed = %v", e.Failed)
			}
			var b bytes.Buffer
			e.Print(&b)
			for _, s := range tc.out {
				if !strings.Contains(b.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, b.String())
				}
			}
			// The engine's path produces the same keys (for changes it accepts).
			if tc.op != "truncate" && !strings.Contains(tc.name, "unknowns") {
				got, err := m.AppendKeys(nil, ch)
				if err != nil || !slices.Equal(got, tc.keys) {
					t.Errorf("AppendKeys = %q, %v; want %q", got, err, tc.keys)
				}
			}
		})
	}
}

func TestExplainConditionError(t *testing.T) {
	t.Parallel()
	m := newMapper(t, Rule{Table: "t", Templates: mustTemplates(t, "t:{id}"), When: mustCondition(t, `int(new.n) > 1`), Where: "rules[0]"})
	ch, err := m.ChangeFromJSON("t", "", "", `{"id":"1","n":"x"}`)
	if err != nil {
		t.Fatal(err)
	}
	e, err := m.Explain(ch)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	e.Print(&b)
	if !e.Failed || !strings.Contains(b.String(), "ERROR, the engine would stop on this change") {
		t.Errorf("Failed %v, output:\n%s", e.Failed, b.String())
	}
}

func TestExplainBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, table, op, old, new, want string
	}{
		{"unknown table", "nope", "", "", `{"id":1}`, "no rule covers table public.nope (rule tables: app.orders, public.users)"},
		{"nothing given", "users", "", "", "", "give --new"},
		{"bad op", "users", "upsert", "", `{"id":1}`, `--op "upsert"`},
		{"insert with old", "users", "insert", `{"id":1}`, `{"id":1}`, "an insert takes --new and no --old"},
		{"update without old", "users", "update", "", `{"id":1}`, "an update takes --old and --new"},
		{"delete with new", "users", "delete", `{"id":1}`, `{"id":1}`, "a delete takes --old and no --new"},
		{"truncate with rows", "users", "truncate", `{"id":1}`, "", "a truncate takes no"},
		{"not JSON", "users", "", "", `{id:1}`, "--new is not a JSON object"},
		{"array", "users", "", "", `[1]`, "--new is not a JSON object"},
		{"trailing text", "users", "", "", `{"id":1} x`, "text after its JSON object"},
		{"nested value", "users", "", "", `{"id":{"a":1}}`, `column "id" is a JSON object`},
		{"array value", "users", "", `{"id":[1]}`, "", `column "id" is a JSON array`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := explainMapper(t).ChangeFromJSON(tc.table, tc.op, tc.old, tc.new)
			if !errors.Is(err, ErrExplainInput) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want ErrExplainInput mentioning %q", err, tc.want)
			}
		})
	}
}
