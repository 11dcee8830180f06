package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// verifierConfig is a configuration with the online verifier checking
// every key once, window after it was applied, and metrics on port; the
// engine fences the library's leases (client.leases).
func (f *fixture) verifierConfig(port int, window string, rules string) string {
	return f.writeConfig(strings.Replace(f.rulesConfig(rules), "rules:\n",
		fmt.Sprintf("client:\n  leases: true\nmetrics:\n  listen: \"127.0.0.1:%d\"\nverify:\n  enabled: true\n  sample_rate: 1\n  windows: [%s]\nrules:\n", port, window), 1))
}

// verifyCounts scrapes cdcinvalidate_verify_checks_total of one rule by result.
func verifyCounts(t *testing.T, port int, rule string) map[string]float64 {
	t.Helper()
	_, body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	out := map[string]float64{}
	for _, l := range strings.Split(body, "\n") {
		if !strings.HasPrefix(l, "cdcinvalidate_verify_checks_total{") || !strings.Contains(l, `rule="`+rule+`"`) {
			continue
		}
		i := strings.Index(l, `result="`)
		res := l[i+8 : i+8+strings.Index(l[i+8:], `"`)]
		var v float64
		fmt.Sscan(l[strings.LastIndex(l, " ")+1:], &v)
		out[res] += v
	}
	return out
}

// waitCounts waits until rule has n finished checks.
func waitCounts(t *testing.T, port int, rule string, n float64) map[string]float64 {
	t.Helper()
	var got map[string]float64
	harness.WaitFor(t, 30*time.Second, fmt.Sprintf("%v checks of %s", n, rule), func() bool {
		got = verifyCounts(t, port, rule)
		sum := 0.0
		for _, v := range got {
			sum += v
		}
		return sum >= n
	})
	time.Sleep(200 * time.Millisecond) // nothing more must come
	return verifyCounts(t, port, rule)
}

// TestVerifierOnline runs the engine with the consistency verifier and
// every key sampled, and writes behind its back what each result stands
// for: the library's stamped fill after the invalidation (newer), an
// unstamped value and a fill without a lease stamped before the delete but
// loaded after the commit (unverifiable: it is fresh, and was counted
// stale before), a fill whose stamp bounds its snapshot before the commit,
// a lowered version key and an overwritten refreshed value (stale);
// untouched keys are absent or newer.
func TestVerifierOnline(t *testing.T) {
	t.Parallel()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE products (id bigint PRIMARY KEY, name text)`)
	cfg := f.verifierConfig(port, "2s", `  - table: products
    keys: ["product:{id}"]
    actions: [refresh]
  - table: users
    keys: ["user:{id}"]
    actions: [delete, version]
`)
	f.startWith(cfg, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	f.barrier()
	f.exec(`INSERT INTO products SELECT g, 'p' || g FROM generate_series(1, 5) g`)
	beforeInsert := f.currentLSN() // a snapshot bound below the insert's commit
	f.exec(`INSERT INTO users SELECT g, 'u' || g || '@x', 'n', 'b' FROM generate_series(1, 5) g`)
	f.barrier()

	ctx := context.Background()
	lib, err := cacheaside.New(f.rdb, cacheaside.Options{StampKey: "cdcinvalidate:cdcinvalidate:lsn"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lib.Close() })
	if _, err := lib.Get(ctx, "user:1", func(context.Context) ([]byte, error) { return []byte("u1"), nil }); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.rdb.Set(ctx, "user:2", "filled without a stamp", 0).Err())
	// Both stamped below the watermark before the insert's deletes: the
	// first is a fill without a lease whose load began after the commit
	// (the row is there), the second says its snapshot preceded the commit.
	must(f.rdb.Set(ctx, "user:3", cacheaside.AppendStamp(nil, 0, []byte("loaded after the insert, no lease")), 0).Err())
	must(f.rdb.Set(ctx, "user:4", cacheaside.AppendLoadStamp(nil, 0, uint64(beforeInsert), []byte("loaded before the insert")), 0).Err())
	must(f.rdb.Set(ctx, "user:5:v", "0/1", 0).Err())
	must(f.rdb.Set(ctx, "product:2", `{"id":2,"name":"old"}`, 0).Err())

	// rules[0] is the fixture's barrier, rules[1] products, rules[2] users.
	users := waitCounts(t, port, "rules[2]", 10)
	want := map[string]float64{"newer": 5, "unverifiable": 2, "absent": 1, "stale": 2}
	if fmt.Sprint(users) != fmt.Sprint(want) {
		t.Errorf("users: %v, want %v (newer: user:1 and four version keys; unverifiable: user:2, user:3; stale: user:4, user:5:v)", users, want)
	}
	products := waitCounts(t, port, "rules[1]", 5)
	if want := map[string]float64{"newer": 4, "stale": 1}; fmt.Sprint(products) != fmt.Sprint(want) {
		t.Errorf("products: %v, want %v", products, want)
	}
	_, body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if v := metricValue(t, body, `cdcinvalidate_verify_consistency_ratio{window="2s"}`); v >= 1 || v < 0.5 {
		t.Errorf("consistency ratio %v, want below 1", v)
	}
	if v := metricValue(t, body, "cdcinvalidate_verify_stale_age_seconds_count"); v != 3 {
		t.Errorf("stale ages observed %v, want 3", v)
	}
}

// TestVerifierCatchesBrokenEngine is the negative control: an engine that
// skips its deletes (CDC_UNSAFE=skip-deletes, failpoints build) leaves the
// library's stamped values of updated rows in place, filled under leases
// taken before the deletes it claims to have fenced, and the verifier
// counts them stale in its first window; the same workload on a sound
// engine counts none.
func TestVerifierCatchesBrokenEngine(t *testing.T) {
	t.Parallel()
	for _, broken := range []bool{false, true} {
		t.Run(fmt.Sprintf("broken=%v", broken), func(t *testing.T) {
			port, err := harness.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			f := newFixture(t, fixtureOpts{})
			cfg := f.verifierConfig(port, "500ms", `  - table: users
    keys: ["user:{id}"]
`)
			var env []string
			if broken {
				env = append(env, "CDC_UNSAFE=skip-deletes")
			}
			p := f.startBinaryOfStreaming(harness.BuildEngineTags(t, "failpoints"), cfg, env...)
			// The broken engine deletes nothing, so barriers cannot tell
			// what it applied: its watermark can.
			applied := func() {
				t.Helper()
				at := f.currentLSN()
				harness.WaitFor(t, 30*time.Second, "the watermark at "+at.String(), func() bool {
					v, err := f.rdb.Get(context.Background(), "cdcinvalidate:cdcinvalidate:lsn").Result()
					return err == nil && v != "" && parseLSN(t, v) >= at
				})
			}
			f.exec(`INSERT INTO users SELECT g, 'u' || g || '@x', 'n', 'b' FROM generate_series(1, 20) g`)
			applied()
			lib, err := cacheaside.New(f.rdb, cacheaside.Options{StampKey: "cdcinvalidate:cdcinvalidate:lsn"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = lib.Close() })
			for i := 1; i <= 20; i++ {
				if _, err := lib.Get(context.Background(), fmt.Sprint("user:", i), func(context.Context) ([]byte, error) { return []byte("old"), nil }); err != nil {
					t.Fatal(err)
				}
			}
			// Move the watermark past the stamps, then change every row.
			f.exec(`INSERT INTO users VALUES (1000, '', '', '')`)
			applied()
			f.exec(`UPDATE users SET name = 'new' WHERE id <= 20`)
			got := waitCounts(t, port, "rules[1]", 41) // 20 inserts, 1 more, 20 updates
			if broken && got["stale"] < 20 {
				t.Errorf("broken engine: %v, want the 20 updated keys stale", got)
			}
			if !broken && got["stale"] != 0 {
				t.Errorf("sound engine: %v, want nothing stale", got)
			}
			p.TermT(t, 30*time.Second)
		})
	}
}
