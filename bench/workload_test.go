package bench

import (
	"bufio"
	"reflect"
	"strings"
	"testing"

	"github.com/cdcinvalidate/cdcinvalidate/config"
)

func TestWorkloadFlags(t *testing.T) {
	o, err := parseFlags(t)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o.Actions, []string{"delete"}) || !reflect.DeepEqual(o.Fanouts, []int{1}) || o.Tables != 1 || o.Rules != 1 || o.VerifyRate != 0 {
		t.Errorf("defaults = %+v, want delete, fan-out 1, 1 table, 1 rule, no verifier", o.WorkloadOptions)
	}
	o, err = parseFlags(t, "--actions", "Version, all,version", "--fanout", "1,10,1", "--tables", "500", "--rules", "1000", "--verify-rate", "1000")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o.Actions, []string{"version", "all"}) || !reflect.DeepEqual(o.Fanouts, []int{1, 10}) || o.Tables != 500 || o.Rules != 1000 || o.VerifyRate != 1000 {
		t.Errorf("parsed = %+v", o.WorkloadOptions)
	}
	for _, bad := range [][]string{{"--actions", "purge"}, {"--actions", ""}, {"--fanout", "0"}, {"--fanout", "x"}, {"--fanout", "1,,2"}} {
		if _, err := parseFlags(t, bad...); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestValidateWorkload(t *testing.T) {
	tests := []struct {
		name   string
		change func(*WorkloadOptions)
		want   string
	}{
		{"defaults", func(*WorkloadOptions) {}, ""},
		{"many", func(o *WorkloadOptions) { o.Tables, o.Rules = 500, 1000 }, ""},
		{"rules on one table", func(o *WorkloadOptions) { o.Rules = 5 }, ""},
		{"no actions", func(o *WorkloadOptions) { o.Actions = nil }, "--actions"},
		{"no fanout", func(o *WorkloadOptions) { o.Fanouts = nil }, "--fanout"},
		{"fanout", func(o *WorkloadOptions) { o.Fanouts = []int{1, 5000} }, "--fanout 5000"},
		{"tables", func(o *WorkloadOptions) { o.Tables = 0 }, "--tables 0"},
		{"rules", func(o *WorkloadOptions) { o.Rules = 0 }, "--rules 0"},
		{"table without rule", func(o *WorkloadOptions) { o.Tables, o.Rules = 10, 5 }, "every table needs a rule"},
		{"verify rate", func(o *WorkloadOptions) { o.VerifyRate = -1 }, "--verify-rate -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			tt.change(&o.WorkloadOptions)
			err := o.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestVariants(t *testing.T) {
	o := defaultWorkloadOptions()
	if got := o.variants(); len(got) != 1 || got[0] != (variant{action: "delete", fanout: 1, tables: 1, rules: 1}) {
		t.Errorf("default variants = %+v, want the delete rule alone", got)
	}
	o = WorkloadOptions{Actions: []string{"version", "all"}, Fanouts: []int{1, 10}, Tables: 500, Rules: 1000, VerifyRate: 100}
	var names []string
	for _, v := range o.variants() {
		names = append(names, v.name(o.VerifyRate))
	}
	// The reference (the delete rule, with the verifier) runs first even
	// when --actions does not name delete; "verifier off" last.
	want := []string{"", "version", "all", "fanout 10", "500 tables 1000 rules", "verifier off"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("variants = %q, want %q", names, want)
	}
	for _, v := range o.variants()[:5] {
		if v.verify != 100 {
			t.Errorf("variant %q runs without the verifier", v.name(100))
		}
	}
	b := &bench{opts: Options{Batch: 1000, WorkloadOptions: o}}
	ws := b.workloads()
	if len(ws) != 12 || ws[0].name != "batched" || ws[1].name != "single" || ws[2].name != "batched version" || ws[11].desc != "single-row txns, verifier off" {
		t.Errorf("workloads = %+v", ws)
	}
}

// TestVariantConfigs checks that the engine configuration of every
// variant is one the engine accepts, with the rules the variant means.
func TestVariantConfigs(t *testing.T) {
	o := WorkloadOptions{Actions: allActions, Fanouts: []int{1, 3}, Tables: 4, Rules: 8, VerifyRate: 10}
	env := func(k string) (string, bool) {
		if k == "CDC_POSTGRES_DSN" {
			return "postgres://bench@127.0.0.1:1/postgres", true
		}
		return "", false
	}
	for _, v := range o.variants() {
		t.Run(v.action+v.name(10), func(t *testing.T) {
			b := &bench{opts: Options{WorkloadOptions: o}, tmp: t.TempDir(), redisAddr: "127.0.0.1:1", cur: v}
			path, err := b.engineConfig(engineSlot, "")
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(path, env)
			if err != nil {
				t.Fatalf("the engine would refuse the configuration of %+v: %v", v, err)
			}
			if cfg.Verify.Enabled != (v.verify > 0) || (v.verify > 0 && cfg.Verify.SampleRate != v.verify) {
				t.Errorf("verify = %+v, want rate %d", cfg.Verify, v.verify)
			}
			wantRules := 1
			switch {
			case v.action == ActionAll:
				wantRules = 2
			case v.tables > 1:
				wantRules = v.rules
			}
			if len(cfg.Rules) != wantRules {
				t.Fatalf("%d rules, want %d", len(cfg.Rules), wantRules)
			}
			r := cfg.Rules[0]
			if v.action != ActionGeneration && len(r.Keys) != v.fanout {
				t.Errorf("rule keys %q, want %d per row", r.Keys, v.fanout)
			}
			if v.tables > 1 && (cfg.Rules[0].Table != "cdcbench_t1" || cfg.Rules[len(cfg.Rules)-1].Table != "cdcbench_t4") {
				t.Errorf("rules over tables: first %s, last %s", cfg.Rules[0].Table, cfg.Rules[len(cfg.Rules)-1].Table)
			}
		})
	}
}

func TestRowDiffers(t *testing.T) {
	s := func(v string) *string { return &v }
	names := []string{"id", "price", "active", "attrs", "note", "ref"}
	row := []*string{s("7"), s("19.90"), s("true"), s(`{"a": 1, "b": [1, 2]}`), nil, s("0cc175b9-c0f1-b6a8-31c3-99e269772661")}
	good := `{"id":7,"price":19.90,"active":true,"attrs":{"a":1,"b":[1,2]},"note":null,"ref":"0cc175b9-c0f1-b6a8-31c3-99e269772661"}`
	if why := rowDiffers(names, row, good); why != "" {
		t.Errorf("equal row reported different: %s", why)
	}
	for _, bad := range []string{
		"cached",
		`{"id":7}`,
		strings.Replace(good, "19.90", "19.9", 1),
		strings.Replace(good, "true", "false", 1),
		strings.Replace(good, `"b":[1,2]`, `"b":[2,1]`, 1),
		strings.Replace(good, `"note":null`, `"note":"x"`, 1),
		strings.Replace(good, `"id":7`, `"idx":7`, 1),
	} {
		if rowDiffers(names, row, bad) == "" {
			t.Errorf("%s taken for the row", bad)
		}
	}
}

func TestCountMessageKeys(t *testing.T) {
	keys, bad := countMessageKeys([]string{
		`{"lsn":"0/16B3748","part":0,"last":false,"changes":[{"table":"public.cdcbench_items","op":"update","keys":["item:1","item:2"]}]}`,
		`{"lsn":"0/16B3748","part":1,"last":true,"changes":[{"table":"public.cdcbench_items","op":"update","keys":["item:3"]},{"table":"public.x","op":"truncate","patterns":["x:*"]}]}`,
		`not json`,
		`{"changes":[]}`,
	})
	if keys != 3 || bad != 2 {
		t.Errorf("keys %d, bad %d; want 3 and 2", keys, bad)
	}
}

func TestParseVerifyMetrics(t *testing.T) {
	text := `# HELP cdcinvalidate_verify_checks_total Consistency checks
# TYPE cdcinvalidate_verify_checks_total counter
cdcinvalidate_verify_checks_total{result="absent",rule="rules[0]",table="public.cdcbench_items",window="1s"} 200
cdcinvalidate_verify_checks_total{result="absent",rule="rules[1]",table="public.cdcbench_items",window="60s"} 5
cdcinvalidate_verify_checks_total{result="newer",rule="rules[0]",table="public.cdcbench_items",window="1s"} 3
cdcinvalidate_verify_checks_total{result="stale",rule="rules[0]",table="public.cdcbench_items",window="1s"} 1
cdcinvalidate_verify_checks_total{result="unverifiable",rule="rules[0]",table="public.cdcbench_items",window="1s"} 2
cdcinvalidate_verify_samples_dropped_total 4
cdcinvalidate_verify_consistency_ratio{window="1s"} 0.99
`
	f := parseVerifyMetrics(bufio.NewScanner(strings.NewReader(text)))
	if want := (VerifyFigures{Absent: 205, Newer: 3, Stale: 1, Unverifiable: 2, Dropped: 4}); f != want || f.Checks() != 211 {
		t.Errorf("figures %+v, want %+v", f, want)
	}
}

func TestCompareVariants(t *testing.T) {
	run := func(confirmed, applied float64) CatchUpRun {
		return CatchUpRun{EngineSeconds: confirmed, CatchUpRunApplied: CatchUpRunApplied{EngineAppliedSeconds: applied}}
	}
	cu := func(name, shape string, v VariantInfo, secs float64, runs ...CatchUpRun) CatchUp {
		return CatchUp{Workload: name, EngineSeconds: secs, Ratio: 0.9, Runs: runs, CatchUpVariant: CatchUpVariant{Shape: shape, Variant: v}}
	}
	del := VariantInfo{Action: "delete", Fanout: 1, Tables: 1, Rules: 1, VerifyRate: 100}
	version := del
	version.Name, version.Action = "version", "version"
	fan := del
	fan.Name, fan.Fanout = "fanout 10", 10
	many := del
	many.Name, many.Tables, many.Rules = "500 tables 1000 rules", 500, 1000
	off := del
	off.Name, off.VerifyRate = "verifier off", 0
	cs := []CatchUp{
		cu("batched", "batched", del, 2, run(2, 1.8), run(2.2, 2)),
		cu("single", "single", del, 4, run(4, 3)),
		cu("batched version", "batched", version, 3, run(3, 3)),
		cu("single version", "single", version, 4.4),
		cu("batched fanout 10", "batched", fan, 7),
		cu("batched 500 tables 1000 rules", "batched", many, 2.2),
		cu("batched verifier off", "batched", off, 1.92),
		cu("single verifier off", "single", off, 4, run(4, -1)),
	}
	compareVariants(cs)
	type want struct {
		ref            string
		vs, target     float64
		met            bool
		applied, trail float64
	}
	for i, w := range []want{
		{"", 0, 0, false, 1.9, (2/1.8+2.2/2)/2 - 1},
		{"", 0, 0, false, 3, 4.0/3 - 1},
		{"batched", 1.5, 1.3, false, 3, 0},
		{"single", 1.1, 1.3, true, -1, -1},
		{"batched", 3.5, 3, false, -1, -1},
		{"batched", 1.1, 1.2, true, -1, -1},
		{"batched", 2 / 1.92, 1.05, true, -1, -1}, // the verifier's overhead: with over without
		{"single", 1, 1.05, true, -1, -1},
	} {
		c := cs[i]
		if c.Reference != w.ref || !near(c.VsReference, w.vs) || c.TargetVsReference != w.target {
			t.Errorf("%s: reference %q %.3fx (target %.2f), want %q %.3fx (target %.2f)", c.Workload, c.Reference, c.VsReference, c.TargetVsReference, w.ref, w.vs, w.target)
		}
		if w.target > 0 && (c.MetVsReference == nil || *c.MetVsReference != w.met) {
			t.Errorf("%s: met %v, want %v", c.Workload, c.MetVsReference, w.met)
		}
		if !near(c.EngineAppliedSeconds, w.applied) || !near(c.ConfirmTrail, w.trail) {
			t.Errorf("%s: applied %.3f trail %.3f, want %.3f and %.3f", c.Workload, c.EngineAppliedSeconds, c.ConfirmTrail, w.applied, w.trail)
		}
	}

	var out strings.Builder
	r := &Report{CatchUp: cs}
	cs[0].Runs[0].Verify = &VerifyFigures{Absent: 10, Stale: 1}
	if err := r.writeVariants(&out); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"Against the delete rule",
		"batched version  3.00 s    batched  2.00 s  1.50x  <= 1.30x MISSED",
		"Done two ways",
		"batched   1.90 s     2.00 s  10.6%      <= 20% ok",
		"Online verifier",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
