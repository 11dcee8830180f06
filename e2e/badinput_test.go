package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// startFails runs the binary with a configuration and expects it to exit
// with status 2 and an output containing every wanted fragment.
func (f *fixture) startFails(cfg string, want []string, env ...string) string {
	f.t.Helper()
	p := f.startBinary(f.writeConfig(cfg), env...)
	code := p.ExitT(f.t, 60*time.Second)
	out := p.Output()
	if code != 2 {
		f.t.Fatalf("exit code %d, want 2; output:\n%s", code, out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			f.t.Errorf("output lacks %q; output:\n%s", w, out)
		}
	}
	return out
}

func (f *fixture) header() string {
	return fmt.Sprintf("postgres:\n  dsn: %q\nredis:\n  addr: %q\n", f.pg.DSN("postgres"), f.rd.Addr())
}

func TestBadConfigListsEveryProblemWithItsLine(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	cfg := f.header() + `
  colour: blue
rules:
  - table: users
    keys: ["user:{id", "{id}"]
  - table: orders
    keys: []
`
	f.startFails(cfg, []string{
		"4 problems",
		`unknown option "colour"`,
		":6:3", ":9:12", `"user:{id"`, "never closed",
		"must start with literal text",
		`rule for table "orders" has no keys`,
	})
	// Nothing was created on the database: a bad configuration touches nothing.
	var n int
	if err := f.db.QueryRow(f.ctx(), `SELECT count(*) FROM pg_replication_slots`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("slots after a failed start: %d (%v), want 0", n, err)
	}
	f.startFails("rules: [\n  - table: users\n", []string{"did not find expected"})
}

func TestRuleNamingMissingTableOrColumn(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.startFails(f.header()+`rules:
  - table: users
    keys: ["user:{id}", "user:nick:{nickname}"]
  - table: nosuch
    keys: ["x:{id}"]
`, []string{
		`"user:nick:{nickname}" uses column "nickname", which table public.users does not have`,
		"table public.nosuch does not exist",
	})
}

func TestColumnOutsideReplicaIdentityIsRefusedUnlessOptedIn(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE accounts (id bigint PRIMARY KEY, login text)`)
	rule := `rules:
  - table: accounts
    keys: ["account:{id}", "account:login:{login}"]
`
	out := f.startFails(f.header()+rule, []string{
		`"account:login:{login}"`, `column "login"`, "public.accounts",
		"ALTER TABLE public.accounts REPLICA IDENTITY FULL", "unsafe_allow_stale_old_keys",
	})
	t.Logf("refusal:\n%s", out)

	// Opting in starts; a changed login then deletes the new key and the id
	// key, and the old login key is knowingly left to its TTL.
	p := f.startBinaryStreaming(f.writeConfig(f.header() + strings.Replace(rule, `"]`, "\"]\n    unsafe_allow_stale_old_keys: true", 1)))
	f.exec(`INSERT INTO accounts VALUES (1, 'old')`)
	target := f.currentLSN()
	harness.WaitFor(t, 30*time.Second, "the insert to be applied", func() bool { return f.confirmed() >= target })
	f.set("account:1", "account:login:old", "account:login:new")
	f.exec(`UPDATE accounts SET login = 'new' WHERE id = 1`)
	harness.WaitFor(t, 30*time.Second, "new keys deleted", func() bool { return !f.exists("account:1") && !f.exists("account:login:new") })
	if !f.exists("account:login:old") {
		t.Fatal("old login key deleted although the change cannot carry it under REPLICA IDENTITY DEFAULT")
	}
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}

	// REPLICA IDENTITY NOTHING is refused with the fix.
	f.exec(`ALTER TABLE accounts REPLICA IDENTITY NOTHING`)
	f.startFails(f.header()+`rules:
  - table: accounts
    keys: ["account:{id}"]
`, []string{"REPLICA IDENTITY NOTHING", "ALTER TABLE public.accounts REPLICA IDENTITY FULL"})
}

func TestWrongPasswordIsClearAndNeverLogged(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE ROLE app LOGIN REPLICATION PASSWORD 'right-pass'`)
	const secret = "s3cr3t-Wr0ng"
	cfg := fmt.Sprintf("postgres:\n  dsn: %q\nredis:\n  addr: %q\n%s", f.pg.UserDSN("app", secret, "postgres"), f.rd.Addr(), rules)
	out := f.startFails(cfg, []string{"refused the login", "password"})
	if strings.Contains(out, secret) {
		t.Fatalf("the password appears in the output:\n%s", out)
	}
	// The same through the environment override.
	cfg = fmt.Sprintf("postgres:\n  dsn: \"postgres://app@127.0.0.1:1/postgres\"\nredis:\n  addr: %q\n%s", f.rd.Addr(), rules)
	out = f.startFails(cfg, []string{"refused the login"}, "CDC_POSTGRES_DSN="+f.pg.UserDSN("app", secret, "postgres"))
	if strings.Contains(out, secret) {
		t.Fatalf("the password appears in the output:\n%s", out)
	}
}

func TestPublicationMissingARuleTableIsRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE PUBLICATION cdcinvalidate FOR TABLE users`)
	f.startFails(f.header()+rules, []string{
		`publication "cdcinvalidate" does not include table public.orders`,
		"ALTER PUBLICATION cdcinvalidate ADD TABLE public.orders",
	})
}

// TestRedisPermissionErrorStopsWithTheFix: an ACL user without UNLINK is a
// permanent error: the engine stops (exit 1) and says what to grant; the
// Redis password never appears in the output.
func TestRedisPermissionErrorStopsWithTheFix(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	const secret = "redis-S3cret"
	// A first run with every permission creates the slot and the engine's
	// records; then the user loses UNLINK and DEL.
	if err := f.rdb.Do(f.ctx(), "ACL", "SETUSER", "cdc", "on", ">"+secret, "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("postgres:\n  dsn: %q\nredis:\n  addr: %q\n  username: cdc\n%s", f.pg.DSN("postgres"), f.rd.Addr(), rules)
	p := f.startBinaryStreaming(f.writeConfig(cfg), "CDC_REDIS_PASSWORD="+secret)
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("first run: exit code %d", code)
	}
	if err := f.rdb.Do(f.ctx(), "ACL", "SETUSER", "cdc", "-unlink", "-del").Err(); err != nil {
		t.Fatal(err)
	}
	p = f.startBinaryStreaming(f.writeConfig(cfg), "CDC_REDIS_PASSWORD="+secret)
	f.exec(`INSERT INTO users VALUES (1, 'a@x', '', '')`) // its delete is refused
	code := p.ExitT(t, 60*time.Second)
	out := p.Output()
	if code != 1 {
		t.Fatalf("exit code %d, want 1; output:\n%s", code, out)
	}
	for _, want := range []string{"NOPERM", "grant the ACL user the command, key or channel it names"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, secret) {
		t.Fatalf("the Redis password appears in the output:\n%s", out)
	}
}
