package bench

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
)

// WorkloadOptions choose the catch-up variants beyond the delete rule:
// other actions, fan-out, many tables and rules, and the online verifier.
// Every variant runs both catch-up shapes (batched and single-row) and is
// reported beside the delete rule's time of the same run.
type WorkloadOptions struct {
	// Actions are the rules' actions to measure, one catch-up variant
	// each: delete, version, refresh, publish, stream, generation, all
	// (every action at once). The delete variant always runs: it is the
	// reference of the others.
	Actions []string
	// Fanouts are keys per row (item:{id}, item:{id}:1, ...); each one
	// other than 1 is a delete variant measured against fan-out 1.
	Fanouts []int
	// Tables and Rules: with either above 1, a variant spreads the changes
	// over Tables bench tables with Rules rules over them.
	Tables, Rules int
	// VerifyRate, when above 0, runs every engine with the online verifier
	// sampling 1 in VerifyRate keys, and adds the delete variant without
	// it, to show its overhead.
	VerifyRate int
}

// Action names of --actions.
const (
	ActionDelete     = "delete"
	ActionVersion    = "version"
	ActionRefresh    = "refresh"
	ActionPublish    = "publish"
	ActionStream     = "stream"
	ActionGeneration = "generation"
	ActionAll        = "all"
)

var allActions = []string{ActionDelete, ActionVersion, ActionRefresh, ActionPublish, ActionStream, ActionGeneration, ActionAll}

func defaultWorkloadOptions() WorkloadOptions {
	return WorkloadOptions{Actions: []string{ActionDelete}, Fanouts: []int{1}, Tables: 1, Rules: 1}
}

// registerWorkloadFlags defines the flags of WorkloadOptions.
func (o *WorkloadOptions) registerWorkloadFlags(fs *flag.FlagSet) {
	fs.Var((*actionList)(&o.Actions), "actions", "catch-up `actions`, comma-separated: delete, version, refresh, publish, stream, generation, all "+
		"(every action at once); each is measured against the delete rule in the same run")
	fs.Var((*intList)(&o.Fanouts), "fanout", "keys per row, comma-separated `list` (e.g. 1,10): each fan-out other than 1 is a catch-up "+
		"measured against fan-out 1")
	fs.IntVar(&o.Tables, "tables", o.Tables, "bench tables of the many-tables catch-up (with --rules; 1 and 1: not run)")
	fs.IntVar(&o.Rules, "rules", o.Rules, "rules over --tables of the many-tables catch-up, measured against the one-rule run")
	fs.IntVar(&o.VerifyRate, "verify-rate", o.VerifyRate, "run the engines with the online verifier sampling 1 in `N` keys "+
		"(0: off), and add the delete catch-up without it")
}

// validateWorkload returns the problems of the workload options.
func (o *WorkloadOptions) validateWorkload() []error {
	var errs []error
	if len(o.Actions) == 0 {
		errs = append(errs, errors.New("--actions: give at least one of "+strings.Join(allActions, ", ")))
	}
	if len(o.Fanouts) == 0 {
		errs = append(errs, errors.New("--fanout: give at least one number of keys per row"))
	}
	for _, f := range o.Fanouts {
		if f < 1 || f > 1000 {
			errs = append(errs, fmt.Errorf("--fanout %d: keys per row must be 1 to 1000", f))
		}
	}
	if o.Tables < 1 || o.Tables > 10000 {
		errs = append(errs, fmt.Errorf("--tables %d: must be 1 to 10000", o.Tables))
	}
	if o.Rules < 1 {
		errs = append(errs, fmt.Errorf("--rules %d: must be at least 1", o.Rules))
	} else if o.Rules < o.Tables {
		errs = append(errs, fmt.Errorf("--rules %d with --tables %d: every table needs a rule, give --rules %d or more", o.Rules, o.Tables, o.Tables))
	}
	if o.VerifyRate < 0 {
		errs = append(errs, fmt.Errorf("--verify-rate %d: must be 0 (off) or more", o.VerifyRate))
	}
	return errs
}

// variant is one catch-up configuration of the rules: an action, a
// fan-out, a number of tables and rules, the verifier on or off.
type variant struct {
	action string
	fanout int
	tables int // 1: the bench table cdcbench_items; more: cdcbench_t1..N
	rules  int
	verify int // sample 1 in verify; 0 off
}

// name is the variant as the report shows it; "" for the reference (the
// delete rule, as the bench measured before it had variants).
func (v variant) name(verifyRate int) string {
	var parts []string
	switch {
	case v.action != ActionDelete:
		parts = append(parts, v.action)
	case v.fanout > 1:
		parts = append(parts, fmt.Sprintf("fanout %d", v.fanout))
	case v.tables > 1 || v.rules > 1:
		parts = append(parts, fmt.Sprintf("%d tables %d rules", v.tables, v.rules))
	}
	if verifyRate > 0 && v.verify == 0 {
		parts = append(parts, "verifier off")
	}
	return strings.Join(parts, ", ")
}

// reference is the variant every other is compared with: the delete rule,
// one key, one table, one rule, the verifier as --verify-rate says.
func (o *WorkloadOptions) reference() variant {
	return variant{action: ActionDelete, fanout: 1, tables: 1, rules: 1, verify: o.VerifyRate}
}

// variants lists the catch-up variants in the order they run, the
// reference first.
func (o *WorkloadOptions) variants() []variant {
	ref := o.reference()
	out := []variant{ref}
	for _, a := range o.Actions {
		if a != ActionDelete {
			v := ref
			v.action = a
			out = append(out, v)
		}
	}
	for _, f := range o.Fanouts {
		if f != 1 {
			v := ref
			v.fanout = f
			out = append(out, v)
		}
	}
	if o.Tables > 1 || o.Rules > 1 {
		v := ref
		v.tables, v.rules = o.Tables, o.Rules
		out = append(out, v)
	}
	if o.VerifyRate > 0 {
		v := ref
		v.verify = 0
		out = append(out, v)
	}
	return out
}

// actionList is the --actions flag.
type actionList []string

func (p *actionList) String() string {
	if p == nil {
		return ""
	}
	return strings.Join(*p, ",")
}

func (p *actionList) Set(s string) error {
	var out []string
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.ToLower(strings.TrimSpace(part))
		ok := false
		for _, known := range allActions {
			ok = ok || part == known
		}
		if !ok {
			return fmt.Errorf("unknown action %q (want %s)", part, strings.Join(allActions, ", "))
		}
		if !seen[part] {
			seen[part] = true
			out = append(out, part)
		}
	}
	*p = out
	return nil
}

// intList is a comma-separated list of positive integers (--fanout).
type intList []int

func (p *intList) String() string {
	if p == nil {
		return ""
	}
	parts := make([]string, len(*p))
	for i, n := range *p {
		parts[i] = strconv.Itoa(n)
	}
	return strings.Join(parts, ",")
}

func (p *intList) Set(s string) error {
	var out []int
	seen := map[int]bool{}
	for _, part := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil || n < 1 {
			return fmt.Errorf("%q is not a positive whole number (want e.g. 1,10)", strings.TrimSpace(part))
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	*p = out
	return nil
}

// VariantSettings are the variant options as the report shows them.
type VariantSettings struct {
	Actions    []string `json:"actions"`
	Fanouts    []int    `json:"fanouts"`
	Tables     int      `json:"tables"`
	Rules      int      `json:"rules"`
	VerifyRate int      `json:"verify_rate"`
}

func (o *WorkloadOptions) variantSettings() VariantSettings {
	return VariantSettings{Actions: o.Actions, Fanouts: o.Fanouts, Tables: o.Tables, Rules: o.Rules, VerifyRate: o.VerifyRate}
}
