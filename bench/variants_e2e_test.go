package bench

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// TestVariantsCheckedEndToEnd runs the action, fan-out and many-tables
// catch-ups at tiny sizes against throwaway servers and checks that each
// passes its own checks and sees its last effect in Redis. First, as a
// negative control, the checks of the variant "all" run over a workload
// that no engine applied: every action's check must report it, or the
// bench could measure a broken path without noticing.
func TestVariantsCheckedEndToEnd(t *testing.T) {
	opts := DefaultOptions()
	opts.Engine = harness.BuildEngine(t)
	opts.Rows, opts.Repeat, opts.Phases = 300, 1, []string{PhaseCatchUp}
	opts.Actions, opts.Fanouts, opts.Tables, opts.Rules = []string{ActionAll}, []int{1, 3}, 3, 6
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	b := &bench{opts: opts, stderr: io.Discard, cur: opts.reference()}
	defer b.cleanup()
	if err := b.setup(ctx, &Report{}); err != nil {
		t.Fatal(err)
	}

	all := opts.variants()[1]
	if all.action != ActionAll {
		t.Fatalf("variants %+v", opts.variants())
	}
	w := b.shapes(all)[0]
	from, end, err := b.prepareRange(ctx, w, engineSlot)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.prepareRedis(ctx, all); err != nil {
		t.Fatal(err)
	}
	rc, err := b.checkRun(ctx, w, from, end, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(rc.problems, "\n")
	for _, want := range []string{"left 300 of 300 prefilled keys", "version keys: 300 missing", "300 of 300 refreshed keys differ",
		"published messages name 0 keys", "stream cdcbench:stream: 0 entries", "generation cdcbench:gen is 0"} {
		if !strings.Contains(got, want) {
			t.Errorf("unapplied workload: no problem %q among:\n%s", want, got)
		}
	}
	if err := b.dropSlot(ctx, engineSlot); err != nil {
		t.Fatal(err)
	}

	// Both shapes of "all"; the batched one of the others (the single-row
	// shape differs only in the workload, which "all" covers), to stay cheap.
	for _, v := range opts.variants()[1:] {
		ws := b.shapes(v)
		if v.action != ActionAll {
			ws = ws[:1]
		}
		for _, w := range ws {
			c, err := b.catchUp(ctx, w)
			if err != nil {
				t.Fatalf("%s: %v", w.name, err)
			}
			run := c.Runs[0]
			if len(run.Problems) > 0 || run.Flushed {
				t.Errorf("%s: problems %q, flushed %v", w.name, run.Problems, run.Flushed)
			}
			if run.EngineAppliedSeconds <= 0 || run.EngineAppliedSeconds > run.EngineSeconds {
				t.Errorf("%s: applied after %.3f s, confirmed after %.3f s", w.name, run.EngineAppliedSeconds, run.EngineSeconds)
			}
			if run.EngineCPUSeconds <= 0 || run.EngineWalsenderCPU < 0 || run.RecvSeconds <= 0 {
				t.Errorf("%s: CPU or pg_recvlogical missing: %+v", w.name, run)
			}
		}
	}
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
}
