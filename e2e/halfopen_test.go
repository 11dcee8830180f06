package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// TestHalfOpenReplicationConnectionIsReplaced puts a proxy between the
// engine and PostgreSQL and makes the replication connection half-open:
// the proxy swallows everything and never closes the engine's side, as a
// dead peer behind a lost NAT mapping does. The kernel would take many
// minutes to notice (or never, as here). The engine must take the silence
// (about twice wal_sender_timeout) for a dead connection, reconnect, and
// apply what was committed meanwhile.
func TestHalfOpenReplicationConnectionIsReplaced(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	proxy := harness.StartProxy(t, fmt.Sprintf("127.0.0.1:%d", f.pg.Port()))
	dsn := strings.Replace(f.pg.DSN("postgres"), fmt.Sprintf("127.0.0.1:%d", f.pg.Port()), proxy.Addr(), 1)
	cfg := f.writeConfig(fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\n  wal_sender_timeout: 2s\nredis:\n  addr: %q\n%s", dsn, f.rd.Addr(), rules))
	f.startWith(cfg, zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.barrier()
	pid := f.walsenderPID()

	if n := proxy.Blackhole(); n == 0 {
		t.Fatal("no connection through the proxy to make half-open")
	}
	f.set("user:1", "order:1")
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'n', '')`)
	f.exec(`INSERT INTO orders VALUES (1, 1, 'n')`)
	start := time.Now()
	// Generous: the engine's bound is 4s (twice the 2s wal_sender_timeout)
	// plus a reconnect; the kernel's would be many minutes.
	f.barrierTimeout(90 * time.Second)
	f.wantGone("user:1", "order:1", "user:email:a@x", "user:1:orders")
	if now := f.walsenderPID(); now == pid {
		t.Errorf("the walsender (pid %d) is the one from before the blackhole", pid)
	}
	t.Logf("invalidations applied %s after the connection went half-open", time.Since(start).Round(time.Millisecond))
}
