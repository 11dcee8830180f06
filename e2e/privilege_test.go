package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestLeastPrivilegeRole runs the engine as a role with LOGIN REPLICATION
// and nothing else: not a superuser, owning no table, no SELECT granted;
// the publication is created beforehand by the tables' owner. This is the
// set-up the README recommends.
func TestLeastPrivilegeRole(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE ROLE cdc LOGIN REPLICATION PASSWORD 'cdc-pass'`)
	f.exec(`CREATE PUBLICATION cdcinvalidate FOR TABLE users, orders, big, barrier`)
	cfg := fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\nredis:\n  addr: %q\n%s", f.pg.UserDSN("cdc", "cdc-pass", "postgres"), f.rd.Addr(), rules)
	p := f.startBinaryStreaming(f.writeConfig(cfg))
	f.set("user:1")
	f.exec(`INSERT INTO users VALUES (1, 'a@x', '', '')`)
	f.barrier()
	f.wantGone("user:1")
	var super bool
	if err := f.db.QueryRow(f.ctx(), `SELECT rolsuper FROM pg_roles WHERE rolname = 'cdc'`).Scan(&super); err != nil || super {
		t.Fatalf("role cdc superuser=%v (%v)", super, err)
	}
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d; output:\n%s", code, p.Output())
	}

	// Without the pre-created publication the role cannot create one (it
	// owns no table): the start-up error says so and how to fix it.
	f.exec(`DROP PUBLICATION cdcinvalidate`)
	f.startFails(cfg, []string{"create publication", "must own the tables"})
}
