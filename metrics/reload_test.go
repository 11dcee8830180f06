package metrics

import (
	"testing"
	"time"
)

// reloads returns the rule_reloads_total samples by result.
func reloads(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "cdcinvalidate_rule_reloads_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "result" {
					out[l.GetValue()] = s.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

func TestRuleReloadCounter(t *testing.T) {
	m := New("test", time.Minute)
	if got := reloads(t, m); len(got) != 2 || got["ok"] != 0 || got["rejected"] != 0 {
		t.Fatalf("before any reload: %v, want ok and rejected at 0", got)
	}
	m.RuleReload(true)
	m.RuleReload(false)
	m.RuleReload(false)
	if got := reloads(t, m); got["ok"] != 1 || got["rejected"] != 2 {
		t.Errorf("%v, want ok 1 and rejected 2", got)
	}
}
