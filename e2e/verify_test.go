package e2e

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// staleLines returns the keys of the output's "STALE key" lines.
func staleLines(out string) []string {
	var keys []string
	for _, l := range strings.Split(out, "\n") {
		if k, ok := strings.CutPrefix(l, "STALE "); ok {
			keys = append(keys, k)
		}
	}
	return keys
}

// wantAudit checks the counts (rows, keys, absent, fresh, stale,
// unverifiable) of a rule's line in verify's table.
func wantAudit(t *testing.T, out, rule, counts string) {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, rule+" ") {
			continue
		}
		f := strings.Fields(l)
		if got := strings.Join(f[len(f)-6:], " "); got != counts {
			t.Errorf("%s: counts %q, want %q\n%s", rule, got, counts, out)
		}
		return
	}
	t.Errorf("no line for %s in\n%s", rule, out)
}

// TestVerifyCommand runs the offline audit: exit 0 while the engine keeps
// refreshed values equal to their rows (application-filled keys counted as
// unverifiable), exit 1 with one "STALE key" line per stale value when a
// value was tampered with, updated or deleted while the engine was stopped,
// exit 0 again once the restarted engine caught up, and exit 2 on a bad
// configuration or a wrong password (which never appears in the output).
func TestVerifyCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE products (id bigint PRIMARY KEY, sku text, price numeric(10,2), active boolean, attrs jsonb, seen timestamptz);
ALTER TABLE products REPLICA IDENTITY FULL`)
	const rules = `  - table: products
    keys: ["product:{id}"]
    actions: [refresh]
  - table: products
    keys: ["product:card:{id}"]
    actions: [refresh]
    refresh_columns: [id, price]
  - table: users
    keys: ["user:{id}"]
`
	cfgPath := f.writeConfig(f.rulesConfig(rules))
	run := f.startWith(cfgPath, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	f.exec(`INSERT INTO products SELECT g, 'S-' || g, g * 1.5, g % 2 = 0, jsonb_build_object('g', g), '2026-01-02 03:04:05+00'
FROM generate_series(1, 40) g`)
	f.exec(`INSERT INTO users SELECT g, 'u' || g || '@x', 'n', 'b' FROM generate_series(1, 10) g`)
	f.barrier()
	f.set("user:1", "user:2") // filled by the application: the row cannot judge them

	out, code := cli(t, "verify", "--config", cfgPath, "--settle", "300ms")
	if code != 0 || len(staleLines(out)) != 0 || !strings.Contains(out, "no stale value found") {
		t.Fatalf("verify on a consistent cache: exit %d\n%s", code, out)
	}
	wantAudit(t, out, "rules[1]", "40 40 0 40 0 0")
	wantAudit(t, out, "rules[2]", "40 40 0 40 0 0")
	wantAudit(t, out, "rules[3]", "10 10 8 0 0 2")

	// A value written behind the engine's back.
	if err := f.rdb.Set(context.Background(), "product:card:3", `{"id":3,"price":1}`, 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Changes the engine does not see while it is stopped.
	if err := run.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	f.exec(`UPDATE products SET price = 99 WHERE id = 5`)
	f.exec(`DELETE FROM products WHERE id = 7`)              // a row sample cannot find its keys
	f.exec(`UPDATE products SET sku = 'moved' WHERE id = 9`) // product:9 holds the old sku

	out, code = cli(t, "verify", "--config", cfgPath, "--settle", "300ms", "--table", "products")
	got := strings.Join(staleLines(out), " ")
	want := "product:5 product:9 product:card:3 product:card:5"
	if code != 1 || got != want {
		t.Fatalf("verify with stale values: exit %d, STALE %q, want exit 1 and %q\n%s", code, got, want, out)
	}
	wantFindings(t, out,
		[]string{`"product:card:3"`, "differs from its row: fields price"},
		[]string{`"product:9"`, "fields sku"})
	if strings.Contains(out, "users") {
		t.Errorf("--table products audited other tables:\n%s", out)
	}

	// The restarted engine applies what it missed; the tampered value stays
	// until its row changes.
	f.startWith(cfgPath, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	f.exec(`UPDATE products SET price = price WHERE id = 3`)
	f.barrier()
	out, code = cli(t, "verify", "--config", cfgPath, "--settle", "300ms")
	if code != 0 {
		t.Fatalf("verify after the engine caught up: exit %d\n%s", code, out)
	}

	// Could not run: exit 2, and the password stays out of the output.
	bad := f.writeConfig("postgres:\n  dsn: " + `"postgres://postgres:s3cr3t-pw@127.0.0.1:1/postgres?connect_timeout=2"` + "\nredis:\n  addr: \"" + f.rd.Addr() + "\"\nrules:\n  - table: users\n    keys: [\"user:{id}\"]\n")
	out, code = cli(t, "verify", "--config", bad)
	if code != 2 || !strings.Contains(out, "cannot connect") || strings.Contains(out, "s3cr3t-pw") {
		t.Errorf("verify with an unreachable database: exit %d, want 2 naming the problem without the password\n%s", code, out)
	}
	out, code = cli(t, "verify", "--config", cfgPath, "--table", "nosuch")
	if code != 2 || !strings.Contains(out, `no rule covers table "public.nosuch"`) {
		t.Errorf("verify --table nosuch: exit %d\n%s", code, out)
	}
}
