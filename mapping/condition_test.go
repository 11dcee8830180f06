package mapping

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestCompileConditionErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		src       string
		line, col int
		msg       string
	}{
		{`new.status == `, 1, 15, "Syntax error"},
		{`nope == "x"`, 1, 1, "undeclared reference to 'nope'"},
		{`new.status == "a" &&` + "\n" + `  bogus(old.x)`, 2, 8, "undeclared reference to 'bogus'"},
		{`op == 1`, 1, 4, "no matching overload"},
		{`new.status`, 1, 1, "must be a boolean"},
		{`"x"`, 1, 1, "must be a boolean"},
		{`   `, 1, 1, "empty condition"},
		{``, 1, 1, "empty condition"},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			t.Parallel()
			c, err := CompileCondition(tc.src)
			if c != nil {
				t.Fatal("condition returned with an error")
			}
			var ce *ConditionError
			if !errors.As(err, &ce) || len(ce.Issues) == 0 {
				t.Fatalf("error %v is not a *ConditionError with issues", err)
			}
			is := ce.Issues[0]
			if is.Line != tc.line || is.Column != tc.col || !strings.Contains(is.Msg, tc.msg) {
				t.Errorf("issue %d:%d %q, want %d:%d containing %q", is.Line, is.Column, is.Msg, tc.line, tc.col, tc.msg)
			}
			if !strings.Contains(err.Error(), "when condition") {
				t.Errorf("error text %q", err)
			}
		})
	}
}

func TestConditionColumns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		src          string
		oldCs, newCs []string
	}{
		{`new.status != old.status || new.published == "t"`, []string{"status"}, []string{"published", "status"}},
		{`old["weird name"] == "x" && new["opt"] == ""`, []string{"weird name"}, []string{"opt"}},
		{`op == "insert"`, nil, nil},
		{`has(new.a) && new.b.startsWith("x") && size(old.c) > 0`, []string{"c"}, []string{"a", "b"}},
		{`[1].exists(x, new.z == "1")`, nil, []string{"z"}},
	}
	for _, tc := range tests {
		c, err := CompileCondition(tc.src)
		if err != nil {
			t.Fatalf("%s: %v", tc.src, err)
		}
		o, n := c.Columns()
		if !slices.Equal(o, tc.oldCs) || !slices.Equal(n, tc.newCs) {
			t.Errorf("%s: Columns() = %q, %q; want %q, %q", tc.src, o, n, tc.oldCs, tc.newCs)
		}
		if c.String() != tc.src {
			t.Errorf("String() = %q", c.String())
		}
	}
}

// TestConditionUnknowns pins the semantics of values a change does not
// carry: whatever depends on them is unknown, which counts as true.
func TestConditionUnknowns(t *testing.T) {
	t.Parallel()
	vars := func() map[string]any {
		return map[string]any{
			"op":  "update",
			"old": map[string]any{"status": unknownValue, "id": "1", "gone": nil},
			"new": map[string]any{"status": "b", "id": "1", "gone": nil, "published": "t"},
		}
	}
	tests := []struct {
		src  string
		want condResult
	}{
		{`new.status != old.status`, condUnknown},
		{`new.status != old.status || new.published == "t"`, condTrue},
		{`new.status != old.status && new.published == "f"`, condFalse},
		{`op == "insert" && old.status == "a"`, condFalse},
		{`!(old.status == "a")`, condUnknown},
		{`has(old.status)`, condUnknown},
		{`old.status in ["a", "b"]`, condUnknown},
		{`old.id == new.id`, condTrue},
		{`new.gone == null`, condTrue},
		{`old.gone != null`, condFalse},
		{`int(new.id) + 1 == 2`, condTrue},
		{`new.status.upperAscii() == "B"`, condTrue}, // the strings extension
	}
	for _, tc := range tests {
		c := mustCondition(t, tc.src)
		got, err := c.eval(vars())
		if err != nil {
			t.Errorf("%s: %v", tc.src, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s = %v, want %v", tc.src, got, tc.want)
		}
	}
	for _, src := range []string{`new.gone > "a"`, `new.nothere == "a"`, `int(new.status) > 0`} {
		if _, err := mustCondition(t, src).eval(vars()); err == nil {
			t.Errorf("%s: no evaluation error", src)
		}
	}
}
