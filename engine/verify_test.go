package engine

import (
	"strings"
	"testing"

	"github.com/cdcinvalidate/cdcinvalidate/mapping"
)

func TestSameJSON(t *testing.T) {
	for _, c := range []struct {
		cached, row string
		same        bool
		diff        string
	}{
		{`{"id":1,"price":9.50}`, `{"id":1,"price":9.50}`, true, ""},
		{`{"price":9.5,"id":1}`, `{"id":1,"price":9.50}`, true, ""}, // order and scale do not matter
		{`{"id":1,"price":9.51}`, `{"id":1,"price":9.50}`, false, "fields price"},
		{`{"id":1}`, `{"id":1,"price":null}`, false, "fields price"},
		{`{"id":1,"x":2}`, `{"id":1}`, false, "fields x"},
		{`{"id":"1"}`, `{"id":1}`, false, "fields id"},
		{`{"a":{"b":[1,2.0]}}`, `{"a":{"b":[1,2]}}`, true, ""},
		{`{"a":{"b":[1,2]}}`, `{"a":{"b":[2,1]}}`, false, "fields a"},
		{`{"ok":true}`, `{"ok":false}`, false, "fields ok"},
		{`cached`, `{"id":1}`, false, "the cached value is not a JSON object"},
		{`[1]`, `{"id":1}`, false, "the cached value is not a JSON object"},
	} {
		if got := sameJSON(c.cached, c.row); got != c.same {
			t.Errorf("sameJSON(%s, %s) = %v, want %v", c.cached, c.row, got, c.same)
		}
		if !c.same {
			if got := jsonDiff(c.cached, c.row); got != c.diff {
				t.Errorf("jsonDiff(%s, %s) = %q, want %q", c.cached, c.row, got, c.diff)
			}
		}
	}
}

func TestAuditedRules(t *testing.T) {
	tpl := func(s string) []*mapping.Template {
		tp, err := mapping.ParseTemplate(s)
		if err != nil {
			t.Fatal(err)
		}
		return []*mapping.Template{tp}
	}
	ins, _ := mapping.ParseOp("insert")
	rules := []mapping.Rule{
		{Schema: "public", Table: "users", Templates: tpl("user:{id}"), Ops: ins, WhenChanged: []string{"email"}, Where: "rules[0]"},
		{Schema: "shop", Table: "orders", Templates: tpl("order:{id}"), Where: "rules[1]"},
	}
	all, err := auditedRules(rules, "")
	if err != nil || len(all) != 2 {
		t.Fatalf("auditedRules(all) = %d rules, %v", len(all), err)
	}
	if all[0].rule.Ops != 0 || all[0].rule.WhenChanged != nil {
		t.Errorf("ops and when_changed kept: %+v", all[0].rule)
	}
	if rules[0].Ops != ins || len(rules[0].WhenChanged) != 1 {
		t.Errorf("the caller's rules were changed: %+v", rules[0])
	}
	for table, want := range map[string]string{"users": "rules[0]", "public.users": "rules[0]", "shop.orders": "rules[1]"} {
		got, err := auditedRules(rules, table)
		if err != nil || len(got) != 1 || got[0].rule.Where != want || got[0].idx != 0 {
			t.Errorf("auditedRules(%q) = %v, %v; want %s", table, got, err, want)
		}
	}
	if _, err := auditedRules(rules, "orders"); err == nil || !strings.Contains(err.Error(), `no rule covers table "public.orders"`) {
		t.Errorf("auditedRules(orders) error = %v", err)
	}
}
