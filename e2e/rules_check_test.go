package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// cli runs the engine binary with arguments and returns its output and
// exit status.
func cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, harness.BuildEngine(t), args...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return string(out), 0
}

func wantFindings(t *testing.T, out string, findings ...[]string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	for _, want := range findings {
		found := false
		for _, l := range lines {
			all := true
			for _, w := range want {
				all = all && strings.Contains(l, w)
			}
			found = found || all
		}
		if !found {
			t.Errorf("no line of the output has all of %q", want)
		}
	}
}

// TestRulesCheckCommand runs `cdcinvalidate check` on a database with every
// kind of problem (exit 1, each finding present), on one where the
// publication and slot are still to be created by a role that cannot (and
// checks that check created nothing), and on a good one (exit 0).
func TestRulesCheckCommand(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE ROLE checker LOGIN PASSWORD 'pw';
CREATE TABLE accounts (id bigint PRIMARY KEY, login text, seen timestamptz);
CREATE TABLE parted (id bigint, r text, PRIMARY KEY (id, r)) PARTITION BY LIST (r);
CREATE TABLE parted_a PARTITION OF parted FOR VALUES IN ('a');
CREATE PUBLICATION cdcinvalidate FOR TABLE users, parted, barrier WITH (publish = 'insert, update, delete', publish_via_partition_root = false);
SELECT pg_create_physical_replication_slot('cdcinvalidate');`)
	const rules = `rules:
  - table: users
    keys: ["user:{id}", "user:nick:{nickname}"]
    when_changed: [shoe]
  - table: nosuch
    keys: ["x:{id}"]
  - table: accounts
    keys: ["account:login:{login}"]
  - table: parted
    keys: ["p:{id}"]
  - table: accounts
    keys: ["account:{id}", "account:seen:{seen}"]
    when_changed: [login]
    unsafe_allow_stale_old_keys: true
`
	bad := f.writeConfig(fmt.Sprintf("postgres:\n  dsn: %q\nredis:\n  addr: \"127.0.0.1:1\"\n  dial_timeout: 1s\n%s", f.pg.UserDSN("checker", "pw", "postgres"), rules))
	out, code := cli(t, "check", "--config", bad)
	t.Logf("check output:\n%s", out)
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	wantFindings(t, out,
		[]string{"SEVERITY", "SUBJECT", "FINDING", "FIX"},
		[]string{"ERROR", "role checker", "neither REPLICATION nor superuser", `ALTER ROLE "checker" REPLICATION`},
		[]string{"ERROR", "rules[0]", `uses column "nickname", which table public.users does not have`},
		[]string{"ERROR", "rules[0]", `when_changed names column "shoe"`},
		[]string{"ERROR", "rules[1]", "table public.nosuch does not exist"},
		[]string{"ERROR", "rules[2]", `uses column "login", which is outside the replica identity of public.accounts`, "REPLICA IDENTITY FULL"},
		[]string{"WARN", "rules[4]", `when_changed column "login" is outside the replica identity`},
		[]string{"WARN", "rules[4]", `column "seen" of type timestamp with time zone, whose text form depends on the TimeZone and DateStyle settings`},
		[]string{"ERROR", "publication cdcinvalidate", "does not publish truncate", "SET (publish = 'insert, update, delete, truncate')"},
		[]string{"ERROR", "publication cdcinvalidate", "publish_via_partition_root is false", "SET (publish_via_partition_root = true)"},
		[]string{"ERROR", "publication cdcinvalidate", "does not include table public.accounts", "ADD TABLE public.accounts"},
		[]string{"ERROR", "slot cdcinvalidate", "is a physical slot", "pg_drop_replication_slot"},
		[]string{"ERROR", "redis 127.0.0.1:1", "PING failed"},
		[]string{"OK", "postgres checker@127.0.0.1"},
	)
	if strings.Contains(out, "does not include table public.nosuch") {
		t.Error("a missing table is also reported as missing from the publication")
	}

	// The publication and the slot do not exist yet, and the role may not
	// create the publication (it owns no table). check creates nothing.
	absent := f.writeConfig(fmt.Sprintf("postgres:\n  dsn: %q\n  slot: other_slot\n  publication: other_pub\nredis:\n  addr: %q\nrules:\n  - table: users\n    keys: [\"user:{id}\"]\n",
		f.pg.UserDSN("checker", "pw", "postgres"), f.rd.Addr()))
	out, code = cli(t, "check", "--config", absent)
	t.Logf("check output:\n%s", out)
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	wantFindings(t, out,
		[]string{"ERROR", "publication other_pub", "cannot create it: it does not own public.users", `CREATE PUBLICATION "other_pub" FOR TABLE "public"."users" WITH (publish_via_partition_root = true)`},
		[]string{"OK", "slot other_slot", "does not exist; the engine will create it"},
		[]string{"OK", "redis", "PING answered"},
	)
	var pubs, slots int
	if err := f.db.QueryRow(f.ctx(), `SELECT (SELECT count(*) FROM pg_publication WHERE pubname = 'other_pub')::int, (SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'other_slot')::int`).Scan(&pubs, &slots); err != nil {
		t.Fatal(err)
	}
	if pubs != 0 || slots != 0 {
		t.Errorf("check created %d publications and %d slots", pubs, slots)
	}

	// A good setup: no ERROR, exit 0, while an engine streams (a WARN).
	f.exec(`DROP PUBLICATION cdcinvalidate; SELECT pg_drop_replication_slot('cdcinvalidate')`)
	f.start()
	f.barrier()
	out, code = cli(t, "check", "--config", f.cfgPath)
	t.Logf("check output:\n%s", out)
	if code != 0 {
		t.Errorf("exit status %d, want 0", code)
	}
	if strings.Contains(out, "ERROR  ") || !strings.Contains(out, " 0 ERROR") {
		t.Errorf("a good setup has errors:\n%s", out)
	}
	wantFindings(t, out,
		[]string{"OK", "role postgres", "superuser"},
		[]string{"OK", "rules[0] public.users", "replica identity FULL"},
		[]string{"OK", "publication cdcinvalidate", "exists"},
		[]string{"OK", "slot cdcinvalidate", "logical slot with plugin pgoutput"},
		[]string{"WARN", "slot cdcinvalidate", "is active"},
		[]string{"OK", "slot cdcinvalidate", "retains"},
		[]string{"OK", "redis", "PING answered"},
	)
}

// TestRulesCheckWalLevel runs check against a server without
// wal_level=logical.
func TestRulesCheckWalLevel(t *testing.T) {
	t.Parallel()
	pg := harness.PostgresT(t, harness.PostgresOptions{Settings: map[string]string{"wal_level": "replica"}})
	rd := harness.RedisT(t, harness.RedisOptions{})
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	text := fmt.Sprintf("postgres:\n  dsn: %q\nredis:\n  addr: %q\nrules:\n  - table: nosuch\n    keys: [\"x:{id}\"]\n", pg.DSN("postgres"), rd.Addr())
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := cli(t, "check", "--config", cfg)
	t.Logf("check output:\n%s", out)
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	wantFindings(t, out,
		[]string{"ERROR", "server", "wal_level=replica", "ALTER SYSTEM SET wal_level = logical"},
		[]string{"ERROR", "rules[0] public.nosuch", "does not exist"},
	)
}

// TestRulesExplainCommand runs `cdcinvalidate explain` as the binary: it
// connects to nothing, prints the keys of a change, and exits 2 on bad input.
func TestRulesExplainCommand(t *testing.T) {
	t.Parallel()
	cfg := filepath.Join(t.TempDir(), "rules.yaml")
	text := `postgres:
  dsn: "postgres://nobody@127.0.0.1:1/none"
redis:
  addr: "127.0.0.1:1"
rules:
  - table: users
    keys: ["user:{id}", "user:email:{email|trim|lower}"]
  - table: users
    keys: ["user:list"]
    ops: [insert, delete]
  - table: users
    keys: ["user:status:{id}"]
    when_changed: [status]
  - table: users
    keys: ["user:pub:{id}"]
    when: new.published == "t"
`
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := cli(t, "explain", "--config", cfg, "--table", "users",
		"--old", `{"id": 1, "email": " A@X ", "status": "a", "published": true}`, "--new", `{"id": 1, "email": "b@x", "published": false}`)
	t.Logf("explain output:\n%s", out)
	if code != 0 {
		t.Fatalf("exit status %d", code)
	}
	for _, want := range []string{
		"UPDATE of public.users",
		`user:email:a@x  from "user:email:{email|trim|lower}"  (old row)`,
		"rules[1] (table users in " + cfg + "): skipped: ops [insert, delete] do not include update",
		"rules[2] (table users in " + cfg + "): skipped: when_changed [status]",
		`skipped: when "new.published == \"t\"" is false`,
		"keys to delete (3):\n  user:1\n  user:email:a@x\n  user:email:b@x\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	out, code = cli(t, "explain", "--config", cfg, "--table", "users", "--op", "truncate")
	if code != 0 || !strings.Contains(out, "patterns to delete (SCAN MATCH, then UNLINK) (4):") {
		t.Errorf("truncate: exit %d, output:\n%s", code, out)
	}
	for _, args := range [][]string{
		{"--table", "users", "--new", "{bad"},
		{"--table", "nosuch", "--new", `{"id":1}`},
		{"--table", "users", "--op", "insert", "--old", `{"id":1}`, "--new", `{"id":1}`},
		{"--table", "users"},
		{"--new", `{"id":1}`},
	} {
		out, code := cli(t, append([]string{"explain", "--config", cfg}, args...)...)
		if code != 2 || !strings.Contains(out, "explain") {
			t.Errorf("explain %q: exit %d, output %q; want 2 and a message", args, code, out)
		}
	}
}
