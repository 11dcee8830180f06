package metrics

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/mapping"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
	"github.com/cdcinvalidate/cdcinvalidate/verifier"
)

type fakePositions struct{}

func (fakePositions) Applied() replication.LSN           { return 100 }
func (fakePositions) Lag(time.Time) (time.Duration, int) { return time.Second, 1 }
func (fakePositions) Received() replication.LSN          { return 120 }
func (fakePositions) ServerWALEnd() replication.LSN      { return 130 }

// exposed returns every metric family name the engine can expose, with the
// series names histograms add.
func exposed(t *testing.T) map[string]bool {
	t.Helper()
	m := New("test", time.Minute)
	m.Attach(fakePositions{}, fakePositions{})
	m.SetSlot(SlotStats{ConfirmedLSN: 1, RetainedBytes: 2, SafeWALSize: 3, WALStatus: "reserved", Active: true, At: time.Now()})
	m.Table("public.t").Change(replication.OpInsert, 1)
	m.Batch(1, 1, time.Millisecond)
	m.Applied(time.Now(), []time.Time{time.Now()})
	rules, err := mapping.New([]mapping.Rule{{Table: "t", Actions: mapping.Actions{Generation: true, GenerationKey: "gen:t"}}})
	if err != nil {
		t.Fatal(err)
	}
	m.AttachRules(RuleSource{Stats: rules.Stats, RefreshFallbacks: rules.RefreshFallbacks})
	m.Verifier().Checked(time.Second, "public.t", "rules[0]", verifier.Stale)
	m.Verifier().Ratio(time.Second, 0.5)
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		n := f.GetName()
		names[n] = true
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			names[n+suffix] = true
		}
	}
	return names
}

var metricRE = regexp.MustCompile(`cdcinvalidate_[a-z_]+`)

// TestDeployFilesUseExistingMetrics checks that the alert rules and the
// dashboard in deploy/ name only metrics the engine exposes, and that
// docs/operations.md (Observability) documents every metric.
func TestDeployFilesUseExistingMetrics(t *testing.T) {
	names := exposed(t)
	for _, file := range []string{"../deploy/prometheus-alerts.yaml", "../deploy/grafana-dashboard.json"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		used := metricRE.FindAllString(string(data), -1)
		if len(used) < 5 {
			t.Fatalf("%s uses only %d metrics", file, len(used))
		}
		for _, n := range used {
			if !names[n] {
				t.Errorf("%s uses %s, which the engine does not expose", file, n)
			}
		}
	}
	const doc = "docs/operations.md"
	readme, err := os.ReadFile("../" + doc)
	if err != nil {
		t.Fatal(err)
	}
	for n := range names {
		if !strings.HasPrefix(n, "cdcinvalidate_") || strings.HasSuffix(n, "_bucket") || strings.HasSuffix(n, "_sum") || strings.HasSuffix(n, "_count") {
			continue
		}
		if !strings.Contains(string(readme), n) {
			t.Errorf("%s does not document %s", doc, n)
		}
	}
}
