//go:build failpoints

package faults

import (
	"fmt"
	"testing"
)

// TestNegativeClusterReshardDroppingRedirects is the negative control of
// TestClusterReshardUnderLoad: the engine run with
// CDC_UNSAFE=drop-redirects follows no MOVED or ASK and takes a
// redirected command as done, so the deletes a migration redirects are
// lost, and the checker must find their keys stale.
func TestNegativeClusterReshardDroppingRedirects(t *testing.T) {
	sc := newScenario(t, "NEGATIVE: cluster resharding under load, CDC_UNSAFE=drop-redirects", "the checker sees deletes lost to MOVED and ASK", true)
	f := newFixture(t, fixtureOpts{cluster: true})
	rng := rngFor(t)
	p := f.startStreaming("CDC_UNSAFE=drop-redirects")
	// A run loses a few deletes (those sent before the client's slot map
	// caught up with a moved slot); a run that happens to lose none that
	// the checker can see is followed by another, up to 3.
	found := 0
	for i := 1; i <= runs(1) || (found == 0 && i <= 3); i++ {
		r := reshardRun(t, sc, f, rng, fmt.Sprintf("run %d", i))
		if r.stale() == 0 {
			sc.note("run %d: no stale key", i)
			continue
		}
		found++
		sc.note("run %d: checker found %d stale keys, e.g. %s", i, r.stale(), r.examples(1)[0])
	}
	if found == 0 {
		t.Fatalf("negative control: the checker found no stale key in 3 runs: the resharding scenario cannot see deletes lost to redirections; engine output:\n%s", p.Tail(20))
	}
}
