package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// activePID returns the walsender PID streaming from the slot, 0 if none.
func (f *fixture) activePID() int {
	f.t.Helper()
	var pid *int
	if err := f.db.QueryRow(context.Background(), `SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&pid); err != nil {
		f.t.Fatal(err)
	}
	if pid == nil {
		return 0
	}
	return *pid
}

// invalidationWorks commits a change and waits until its key is gone.
func (f *fixture) invalidationWorks(id int, within time.Duration) time.Duration {
	f.t.Helper()
	key := fmt.Sprintf("user:%d", id)
	f.set(key)
	start := time.Now()
	f.exec(`UPDATE users SET name = name || 'x' WHERE id = $1`, id)
	harness.WaitFor(f.t, within, key+" invalidated", func() bool { return !f.exists(key) })
	return time.Since(start)
}

// TestStandbyTakesOverAfterKill9 runs two engines on one slot: one streams,
// the other waits as a standby and takes over when the leader is killed.
// The takeover time is reported.
func TestStandbyTakesOverAfterKill9(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.seedUsers(100)
	a := f.startBinaryStreaming(f.cfgPath)
	b := f.startBinary(f.cfgPath)
	harness.WaitFor(t, 30*time.Second, "the second engine to wait as standby", func() bool {
		return strings.Contains(b.Output(), "waiting as standby")
	})
	f.invalidationWorks(1, 10*time.Second)
	leaderPID := f.activePID()

	a.KillT(t)
	killed := time.Now()
	harness.WaitFor(t, 30*time.Second, "the standby to take the slot", func() bool {
		pid := f.activePID()
		return pid != 0 && pid != leaderPID
	})
	took := f.invalidationWorks(2, 30*time.Second)
	t.Logf("takeover after kill -9 of the leader: slot taken %s after the kill; first invalidation %s after its commit",
		time.Since(killed)-took, took)
	f.barrier()
	if code, _ := b.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("standby-turned-leader exit code %d", code)
	}
}

// TestStandbyTakesOverAfterLeaderFreezes stops the leader with SIGSTOP. Its
// walsender is dropped after wal_sender_timeout (set per connection by the
// engine), the standby takes over, and when the old leader wakes up it
// becomes a standby without undoing anything.
func TestStandbyTakesOverAfterLeaderFreezes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{pgExtra: "  wal_sender_timeout: 3s\n"})
	f.seedUsers(100)
	a := f.startBinaryStreaming(f.cfgPath)
	b := f.startBinary(f.cfgPath)
	harness.WaitFor(t, 30*time.Second, "the second engine to wait as standby", func() bool {
		return strings.Contains(b.Output(), "waiting as standby")
	})
	leaderPID := f.activePID()
	if err := a.Signal(sigStop); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	harness.WaitFor(t, 30*time.Second, "the standby to take the slot from the frozen leader", func() bool {
		pid := f.activePID()
		return pid != 0 && pid != leaderPID
	})
	t.Logf("takeover after SIGSTOP of the leader (wal_sender_timeout 3s): %s", time.Since(frozen).Round(10*time.Millisecond))
	for i := 3; i < 20; i++ {
		f.invalidationWorks(i, 30*time.Second)
	}
	if err := a.Signal(sigCont); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 30*time.Second, "the woken leader to step back as standby", func() bool {
		return strings.Contains(a.Output(), "waiting as standby")
	})
	for i := 20; i < 30; i++ {
		f.invalidationWorks(i, 30*time.Second)
	}
	f.barrier()
	for _, p := range []*harness.Process{a, b} {
		if code, _ := p.TermT(t, 30*time.Second); code != 0 {
			t.Fatalf("exit code %d; output:\n%s", code, p.Output())
		}
	}
}

// TestStandbyReadiness checks the readiness the Kubernetes manifests use
// (deploy/kubernetes): on two engines sharing a slot, plain /readyz is 200
// only on the leader, /readyz?standby=ok is 200 on both, and /healthz is
// 200 on both; after the leader stops, the former standby streams and is
// ready on plain /readyz too.
func TestStandbyReadiness(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.seedUsers(10)
	listen := func() (string, string) {
		port, err := harness.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("CDC_METRICS_LISTEN=127.0.0.1:%d", port), fmt.Sprintf("http://127.0.0.1:%d", port)
	}
	envA, baseA := listen()
	envB, baseB := listen()
	a := f.startBinaryStreaming(f.cfgPath, envA)
	b := f.startBinary(f.cfgPath, envB)
	harness.WaitFor(t, 30*time.Second, "the second engine to wait as standby", func() bool {
		return strings.Contains(b.Output(), "waiting as standby")
	})
	status := func(url string) int {
		resp, err := http.Get(url)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// The standby's state reaches the metrics a moment after its log line.
	harness.WaitFor(t, 10*time.Second, "the standby's plain /readyz to answer 503", func() bool {
		return status(baseB+"/readyz") == 503
	})
	for _, c := range []struct {
		url  string
		want int
	}{
		{baseA + "/healthz", 200}, {baseA + "/readyz", 200}, {baseA + "/readyz?standby=ok", 200},
		{baseB + "/healthz", 200}, {baseB + "/readyz", 503}, {baseB + "/readyz?standby=ok", 200},
	} {
		if got := status(c.url); got != c.want {
			t.Errorf("GET %s = %d, want %d", c.url, got, c.want)
		}
	}
	if code, _ := a.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("leader exit code %d", code)
	}
	harness.WaitFor(t, 30*time.Second, "the former standby to stream and be ready on plain /readyz", func() bool {
		return status(baseB+"/readyz") == 200
	})
	f.invalidationWorks(1, 30*time.Second)
	if code, _ := b.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("standby-turned-leader exit code %d", code)
	}
}
