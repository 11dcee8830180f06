//go:build failpoints

package faults

import "testing"

// TestNegativeTableRenamedIgnored is the negative control of
// TestTableRenamedWhileStreaming: an engine that skips the changes of the
// renamed table silently (the bug of issue 11) must leave stale keys the
// checker finds.
func TestNegativeTableRenamedIgnored(t *testing.T) {
	sc := newScenario(t, "NEGATIVE: CDC_UNSAFE=ignore-unbound + table renamed while streaming", "the checker sees the renamed table's lost invalidations", true)
	f := newFixture(t, fixtureOpts{})
	p := f.startStreaming("CDC_UNSAFE=ignore-unbound")
	for i := 1; i <= runs(1); i++ {
		var r checkResult
		r, p = renameRun(t, sc, f, p, i, "ignore-unbound")
		if r.stale() == 0 {
			t.Fatalf("negative control run %d: the broken engine skipped the renamed table's updates, but the checker found no stale key (%s)", i, r)
		}
		sc.note("run %d: checker found %d stale keys, e.g. %s", i, r.stale(), r.examples(1)[0])
	}
}

// TestNegativeNewPartitionIgnored is the negative control of
// TestNewPartitionWhileStreaming: an engine that skips the changes through
// the narrow partition silently must leave the old tenant key stale.
func TestNegativeNewPartitionIgnored(t *testing.T) {
	sc := newScenario(t, "NEGATIVE: CDC_UNSAFE=ignore-unbound + partition created while streaming", "the check sees the partition's lost invalidation", true)
	f := newFixture(t, fixtureOpts{partitions: true})
	p := f.startStreaming("CDC_UNSAFE=ignore-unbound")
	r, _ := partitionRun(t, sc, f, p, 1, "ignore-unbound")
	if r.stale() == 0 {
		t.Fatal("negative control: the broken engine skipped the partition's changes, but the old tenant key is gone")
	}
	sc.note("found %s", r.examples(1)[0])
}
