package metrics

import (
	"testing"

	"github.com/cdcinvalidate/cdcinvalidate/sink"
)

// fencedByWhat reads cdcinvalidate_late_writes_fenced_total from a scrape.
func fencedByWhat(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	return countersBy(t, m, "late_writes_fenced_total", "what")
}

// countersBy reads the counter ns_name from a scrape, by the value of
// label ("" for a counter without labels).
func countersBy(t *testing.T, m *Metrics, name, label string) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != ns+"_"+name {
			continue
		}
		for _, s := range mf.GetMetric() {
			if label == "" {
				got[""] = s.GetCounter().GetValue()
			}
			for _, l := range s.GetLabel() {
				if l.GetName() == label {
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

// The sink's flights and waits reach the scrape: sent batches in
// sink_flights_total, waits by reason (both reasons present from zero).
func TestFlightsCounted(t *testing.T) {
	m := New("test", 0)
	if got := countersBy(t, m, "sink_flight_waits_total", "reason"); len(got) != 2 || got["slots_full"] != 0 || got["drain"] != 0 {
		t.Fatalf("before any flight: %v, want slots_full and drain at 0", got)
	}
	for _, ev := range []sink.FlightEvent{sink.FlightSent, sink.FlightSent, sink.FlightSlotWait, sink.FlightSent, sink.FlightDrain, sink.FlightSlotWait} {
		m.Flight(ev)
	}
	if got := countersBy(t, m, "sink_flights_total", ""); got[""] != 3 {
		t.Errorf("sink_flights_total %v, want 3", got)
	}
	if got := countersBy(t, m, "sink_flight_waits_total", "reason"); got["slots_full"] != 2 || got["drain"] != 1 {
		t.Errorf("sink_flight_waits_total %v, want slots_full 2, drain 1", got)
	}
}
