package metrics

import "testing"

// fencedByWhat reads cdcinvalidate_late_writes_fenced_total from a scrape.
func fencedByWhat(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != ns+"_late_writes_fenced_total" {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "what" {
					got[l.GetValue()] = s.GetCounter().GetValue()
				}
			}
		}
	}
	return got
}

// The sink's fenced late writes reach the scrape, by kind, from zero.
func TestFencedLateWritesCounted(t *testing.T) {
	m := New("test", 0)
	if got := fencedByWhat(t, m); len(got) != 2 || got["action"] != 0 || got["truncate"] != 0 {
		t.Fatalf("before any fence: %v, want action and truncate at 0", got)
	}
	m.Fenced("action", 3)
	m.Fenced("truncate", 1)
	m.Fenced("action", 2)
	if got := fencedByWhat(t, m); got["action"] != 5 || got["truncate"] != 1 {
		t.Errorf("after fences: %v, want action 5, truncate 1", got)
	}
}
