package faults

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// renameRun: with every key cached, table users is renamed, its rows are
// updated under the other name, and it is renamed back (a migration). The
// engine must stop on the first change under the other name (exit 1,
// naming both names), and its restart must leave no stale key: it flushes
// the table's patterns, then replays the changes made under the other
// name. With unsafe set (CDC_UNSAFE=ignore-unbound, the old behaviour)
// the engine skips those changes silently and streams on.
func renameRun(t *testing.T, sc *scenario, f *fixture, p *harness.Process, i int, unsafe string) (checkResult, *harness.Process) {
	t.Helper()
	sc.run()
	f.fill()
	f.exec(`ALTER TABLE users RENAME TO users_migrating`)
	sc.fault("ALTER TABLE users RENAME while streaming")
	f.exec(`UPDATE users_migrating SET name = name || '+', rev = rev + 1 WHERE id % 3 = $1`, i%3)
	f.exec(`UPDATE users_migrating SET rev = rev + 1 WHERE id % 7 = $1`, i%7)
	f.exec(`ALTER TABLE users_migrating RENAME TO users`)
	if unsafe == "" {
		if code := p.ExitT(t, 60*time.Second); code != 1 || !strings.Contains(p.Output(), "public.users_migrating") {
			t.Fatalf("run %d: engine ended with %s, want exit status 1 and an error naming public.users_migrating; output:\n%s", i, p.State(), p.Tail(20))
		}
		sc.note("run %d: the engine stopped with exit status 1 on the renamed table and named it", i)
		p = f.startStreaming()
	} else if !p.Running() {
		t.Fatalf("run %d: the broken engine (CDC_UNSAFE=%s) stopped: %s", i, unsafe, p.Tail(20))
	}
	r := f.quiesce()
	sc.record(fmt.Sprintf("run %d, after the rename back", i), r)
	return r, p
}

// TestTableRenamedWhileStreaming: fail closed on a renamed table, and no
// stale key after the rename back and the restart.
func TestTableRenamedWhileStreaming(t *testing.T) {
	sc := newScenario(t, "table renamed while streaming, updated, renamed back", "stop naming the table; the restart flushes its patterns", false)
	f := newFixture(t, fixtureOpts{})
	p := f.startStreaming()
	for i := 1; i <= runs(2); i++ {
		_, p = renameRun(t, sc, f, p, i, "")
	}
}
