package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/mapping"
)

// The demo runs the repository's rules.yaml against examples/schema.sql:
// every rule table must be there, with every column its templates use, and
// with REPLICA IDENTITY FULL (the templates use non-key columns). This
// needs no servers; scripts/demo.sh runs the demo itself.
func TestRulesMatchSampleSchema(t *testing.T) {
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(filepath.Join(root, "rules.yaml"), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatalf("rules.yaml: %v", err)
	}
	schema, err := os.ReadFile(filepath.Join(root, "examples", "schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	tables := map[string][]string{}
	for _, m := range regexp.MustCompile(`(?s)CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\);`).FindAllStringSubmatch(string(schema), -1) {
		for _, line := range strings.Split(m[2], ",") {
			if f := strings.Fields(line); len(f) > 0 {
				tables[m[1]] = append(tables[m[1]], f[0])
			}
		}
	}
	if len(tables) == 0 {
		t.Fatal("examples/schema.sql has no CREATE TABLE IF NOT EXISTS statements")
	}
	for _, r := range cfg.Rules {
		schemaName, table := config.SplitTable(r.Table)
		if schemaName != "public" {
			t.Errorf("rule table %s: the sample schema only has public tables", r.Table)
			continue
		}
		cols, ok := tables[table]
		if !ok {
			t.Errorf("rules.yaml names table %s, which examples/schema.sql does not create", table)
			continue
		}
		if !strings.Contains(string(schema), "ALTER TABLE "+table+" REPLICA IDENTITY FULL;") {
			t.Errorf("examples/schema.sql does not set REPLICA IDENTITY FULL on %s", table)
		}
		for _, k := range r.Keys {
			tpl, err := mapping.ParseTemplate(k)
			if err != nil {
				t.Fatalf("template %q: %v", k, err)
			}
			for _, c := range tpl.Columns() {
				if !slices.Contains(cols, c) {
					t.Errorf("template %q uses column %q, which table %s in examples/schema.sql lacks (it has %v)", k, c, table, cols)
				}
			}
			// The demo's cache-aside loader must know every key the rules make.
			key := k
			for _, c := range tpl.Columns() {
				v := "42"
				if c == "email" {
					v = "someone@example.com"
				}
				key = strings.ReplaceAll(key, "{"+c+"}", v)
			}
			if !loadable(key) {
				t.Errorf("the demo has no loader for key %q (template %q)", key, k)
			}
		}
	}
}

func loadable(key string) bool {
	for _, re := range []*regexp.Regexp{userKeyRE, emailKeyRE, ordersKeyRE, orderKeyRE} {
		if re.MatchString(key) {
			return true
		}
	}
	return false
}

func TestLatencySummary(t *testing.T) {
	if got := latencySummary(nil); got != "no samples" {
		t.Errorf("latencySummary(nil) = %q", got)
	}
	got := latencySummary([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond})
	if want := "median 2.0 ms, max 3.0 ms"; got != want {
		t.Errorf("latencySummary = %q, want %q", got, want)
	}
	if got := fmtDur(-time.Millisecond); got != "0.0 ms" {
		t.Errorf("fmtDur(-1ms) = %q", got)
	}
}

// The leaderboard step's score keys must stay outside every rule of
// rules.yaml: the engine would otherwise delete scores holding increments
// not yet flushed.
func TestScoreKeysOutsideRules(t *testing.T) {
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkScoreKeys(root); err != nil {
		t.Fatalf("rules.yaml and the demo's write-behind mapping overlap: %v", err)
	}
}
