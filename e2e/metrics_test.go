package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue returns the value of the sample whose name and labels start with prefix.
func metricValue(t *testing.T, body, series string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no sample %s in /metrics", series)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMetricsAndHealth(t *testing.T) {
	t.Parallel()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, fixtureOpts{
		extra: fmt.Sprintf("metrics:\n  listen: \"127.0.0.1:%d\"\n  slot_poll_interval: 1s\n  ready_max_lag: 30s\n", port),
	})
	f.set("user:1")
	f.start()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	f.barrier()
	f.exec(`INSERT INTO users VALUES (1, 'a@x', '', ''), (2, 'b@x', '', '')`)
	f.exec(`UPDATE users SET email = 'c@x' WHERE id = 1`)
	f.exec(`DELETE FROM users WHERE id = 2`)
	f.barrier()

	if code, body := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz = %d %q", code, body)
	}
	var body string
	harness.WaitFor(t, 10*time.Second, "slot statistics in /metrics", func() bool {
		_, body = httpGet(t, base+"/metrics")
		return strings.Contains(body, "\ncdcinvalidate_slot_active 1\n")
	})
	checks := map[string]float64{
		`cdcinvalidate_changes_total{op="insert",table="public.users"}`: 2,
		`cdcinvalidate_changes_total{op="update",table="public.users"}`: 1,
		`cdcinvalidate_changes_total{op="delete",table="public.users"}`: 1,
		// 2 inserts x 2 keys, update: user:1 + old and new email, delete: 2 keys.
		`cdcinvalidate_keys_rendered_total{table="public.users"}`: 9,
		`cdcinvalidate_state{state="streaming"}`:                  1,
		`cdcinvalidate_slot_active`:                               1,
		`cdcinvalidate_errors_total{class="redis_permanent"}`:     0,
		// Per rule: users is rules[0]; all 4 changes applied, 9 keys.
		`cdcinvalidate_rule_changes_total{result="applied",rule="0",table="public.users"}`: 4,
		`cdcinvalidate_rule_changes_total{result="skipped",rule="0",table="public.users"}`: 0,
		`cdcinvalidate_rule_outputs_total{rule="0",table="public.users"}`:                  9,
		`cdcinvalidate_actions_total{action="version"}`:                                    0,
		`cdcinvalidate_refresh_fallbacks_total`:                                            0,
	}
	for series, want := range checks {
		if got := metricValue(t, body, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if v := metricValue(t, body, "cdcinvalidate_keys_deleted_total"); v < 1 {
		t.Errorf("keys_deleted_total = %v, want >= 1 (user:1 existed)", v)
	}
	if v := metricValue(t, body, "cdcinvalidate_commit_to_apply_seconds_count"); v < 4 {
		t.Errorf("commit_to_apply_seconds_count = %v, want >= 4 transactions", v)
	}
	if v := metricValue(t, body, "cdcinvalidate_applied_lsn"); v <= 0 {
		t.Errorf("applied_lsn = %v", v)
	}

	// Redis stalled: not ready (invalidations wait), still healthy.
	if err := f.rd.Pause(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.rd.Resume() }()
	f.exec(`INSERT INTO users VALUES (3, 'd@x', '', '')`)
	harness.WaitFor(t, 30*time.Second, "/readyz to report Redis unavailable", func() bool {
		code, body := httpGet(t, base+"/readyz")
		return code == 503 && strings.Contains(body, "redis_unavailable")
	})
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz = %d while Redis stalls, want 200 (alive, retrying)", code)
	}
	_, body = httpGet(t, base+"/metrics")
	if v := metricValue(t, body, `cdcinvalidate_errors_total{class="redis_transient"}`); v < 1 {
		t.Errorf("redis_transient errors = %v, want >= 1", v)
	}
	if err := f.rd.Resume(); err != nil {
		t.Fatal(err)
	}
	f.barrier()
	harness.WaitFor(t, 10*time.Second, "/readyz back to 200", func() bool {
		code, _ := httpGet(t, base+"/readyz")
		return code == 200
	})
}

func TestStatusCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	bin := harness.BuildEngine(t)
	status := func() string {
		out, err := exec.Command(bin, "status", "--config", f.cfgPath).CombinedOutput()
		if err != nil {
			t.Fatalf("status: %v\n%s", err, out)
		}
		return string(out)
	}
	out := status()
	for _, want := range []string{"does not exist (the engine creates it at its first start)", "server WAL position"} {
		if !strings.Contains(out, want) {
			t.Errorf("status before the first start lacks %q:\n%s", want, out)
		}
	}
	f.start()
	f.barrier()
	out = status()
	for _, want := range []string{
		"streaming", "yes, walsender PID", "confirmed position", "WAL retained by the slot",
		"publication", "public.users", "watermark", "cdcinvalidate:cdcinvalidate:lsn = ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	t.Logf("status:\n%s", out)
}
