package mapping

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"
)

// A Condition is a rule's compiled `when:` expression, in CEL
// (https://cel.dev). It sees three variables:
//
//	op   "insert", "update" or "delete"
//	old  the old row: a map from column name to its text value
//	new  the new row, the same way
//
// Values are PostgreSQL's text output of the column (booleans are "t" and
// "f", numbers as psql prints them), so compare with strings or convert:
// int(new.qty) > 10. A NULL column is null (new.deleted_at == null).
//
// A value the change does not carry is unknown: every column of old on an
// INSERT, every column of new on a DELETE, an old column outside the replica
// identity when the table is not REPLICA IDENTITY FULL, and an unchanged
// TOASTed new column with no old image. Whatever depends on an unknown
// value is unknown (`old.status != new.status` is unknown on an INSERT),
// except where the known values decide alone (`op == "update" && ...` is
// false on an INSERT, `... || new.published == "t"` is true when the new
// row is published). A condition whose result is unknown counts as true:
// the rule invalidates, because a key deleted needlessly costs one cache
// miss while a key kept wrongly stays stale. has(old.status) is unknown
// when the value is unknown, so it is of no use; compare with null instead.
//
// An evaluation error (such as comparing null with "<") stops the engine:
// a change is never skipped because its condition failed.
type Condition struct {
	src     string
	prg     cel.Program
	oldCols []string
	newCols []string
}

// ConditionIssue is one compile error of a condition, at a 1-based line and
// column of its source.
type ConditionIssue struct {
	Line, Column int
	Msg          string
}

// ConditionError lists the compile errors of a condition.
type ConditionError struct {
	Src    string
	Issues []ConditionIssue
}

func (e *ConditionError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "when condition %q: ", e.Src)
	for i, is := range e.Issues {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%d:%d: %s", is.Line, is.Column, is.Msg)
	}
	return b.String()
}

var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("op", cel.StringType),
		cel.Variable("old", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("new", cel.MapType(cel.StringType, cel.DynType)),
		ext.Strings(),
	)
})

// unknownValue stands for a value the change does not carry.
var unknownValue = types.NewUnknown(0, types.NewAttributeTrail("row"))

// CompileCondition compiles a `when:` expression; it must be boolean.
// Errors are a *ConditionError.
func CompileCondition(src string) (*Condition, error) {
	env, err := celEnv()
	if err != nil {
		return nil, fmt.Errorf("CEL environment: %w", err)
	}
	if strings.TrimSpace(src) == "" {
		return nil, &ConditionError{Src: src, Issues: []ConditionIssue{{Line: 1, Column: 1, Msg: "empty condition"}}}
	}
	a, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		ce := &ConditionError{Src: src}
		for _, e := range iss.Errors() {
			ce.Issues = append(ce.Issues, ConditionIssue{Line: e.Location.Line(), Column: e.Location.Column() + 1, Msg: e.Message})
		}
		return nil, ce
	}
	if !a.OutputType().IsExactType(cel.BoolType) {
		return nil, &ConditionError{Src: src, Issues: []ConditionIssue{{Line: 1, Column: 1,
			Msg: fmt.Sprintf("the condition has type %s, it must be a boolean (values are strings: write new.published == \"t\", not new.published)", a.OutputType())}}}
	}
	prg, err := env.Program(a)
	if err != nil {
		return nil, &ConditionError{Src: src, Issues: []ConditionIssue{{Line: 1, Column: 1, Msg: err.Error()}}}
	}
	c := &Condition{src: src, prg: prg}
	c.oldCols, c.newCols = referencedColumns(a.NativeRep())
	return c, nil
}

// referencedColumns returns the columns the expression names literally, as
// old.col, old["col"] (and the same for new), sorted and unique.
func referencedColumns(a *ast.AST) (oldCols, newCols []string) {
	add := func(v, col string) {
		switch v {
		case "old":
			oldCols = append(oldCols, col)
		case "new":
			newCols = append(newCols, col)
		}
	}
	ast.PostOrderVisit(a.Expr(), ast.NewExprVisitor(func(e ast.Expr) {
		switch e.Kind() {
		case ast.SelectKind:
			s := e.AsSelect()
			if s.Operand().Kind() == ast.IdentKind {
				add(s.Operand().AsIdent(), s.FieldName())
			}
		case ast.CallKind:
			c := e.AsCall()
			if (c.FunctionName() == operators.Index || c.FunctionName() == operators.OptIndex) && len(c.Args()) == 2 &&
				c.Args()[0].Kind() == ast.IdentKind && c.Args()[1].Kind() == ast.LiteralKind {
				if s, ok := c.Args()[1].AsLiteral().(types.String); ok {
					add(c.Args()[0].AsIdent(), string(s))
				}
			}
		}
	}))
	slices.Sort(oldCols)
	slices.Sort(newCols)
	return slices.Compact(oldCols), slices.Compact(newCols)
}

// String returns the source of the condition.
func (c *Condition) String() string { return c.src }

// Columns returns the columns the condition names literally in old and
// in new.
func (c *Condition) Columns() (oldCols, newCols []string) { return c.oldCols, c.newCols }

// condResult is the outcome of one evaluation.
type condResult uint8

const (
	condTrue condResult = iota
	condFalse
	condUnknown
)

// eval evaluates the condition; vars holds op, old and new.
func (c *Condition) eval(vars map[string]any) (condResult, error) {
	out, _, err := c.prg.Eval(vars)
	if err != nil {
		return condTrue, err
	}
	if types.IsUnknown(out) {
		return condUnknown, nil
	}
	b, ok := out.(types.Bool)
	if !ok {
		return condTrue, fmt.Errorf("result %v is not a boolean", out.Type())
	}
	if b {
		return condTrue, nil
	}
	return condFalse, nil
}
