package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// reload rewrites the configuration file and sends SIGHUP to the engine
// process this test started, then waits until the engine logged msg once
// more than before.
func (f *fixture) reload(p *harness.Process, text, msg string) {
	f.t.Helper()
	if err := os.WriteFile(f.cfgPath, []byte(text), 0o600); err != nil {
		f.t.Fatal(err)
	}
	before := strings.Count(p.Output(), msg)
	if err := p.Signal(syscall.SIGHUP); err != nil {
		f.t.Fatalf("SIGHUP: %v", err)
	}
	harness.WaitFor(f.t, 60*time.Second, fmt.Sprintf("log %q after SIGHUP", msg), func() bool {
		select {
		case <-p.Done():
			f.t.Fatalf("engine exited (code %d) after SIGHUP; output:\n%s", p.ExitCode(), p.Output())
		default:
		}
		return strings.Count(p.Output(), msg) > before
	})
}

// logLine returns the last line of the engine's output containing msg.
func logLine(p *harness.Process, msg string) string {
	lines := strings.Split(p.Output(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], msg) {
			return lines[i]
		}
	}
	return ""
}

func (f *fixture) published(table string) bool {
	f.t.Helper()
	var n int
	if err := f.db.QueryRow(context.Background(), `SELECT count(*) FROM pg_publication_tables WHERE pubname = 'cdcinvalidate' AND tablename = $1`, table).Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n == 1
}

func metricsPort(t *testing.T) (string, int) {
	t.Helper()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("metrics:\n  listen: \"127.0.0.1:%d\"\n", port), port
}

const (
	msgReloaded = `"msg":"rules reloaded"`
	msgRejected = `"msg":"rules not reloaded; the running rules stay"`
	msgInvalid  = `"msg":"rules not reloaded: the configuration is invalid; the running rules stay"`
)

// TestReloadAddsRulesKeepingPosition reloads rules that add a key template
// to a streamed table and a rule for a table the publication lacks, while
// single-row transactions commit before, during and after the reload. The
// engine adds the table to the publication it created, keeps its
// replication connection (no change is lost or replayed from elsewhere),
// flushes the keys of the new templates (they may be stale) and no others,
// and the new rules invalidate from then on.
func TestReloadAddsRulesKeepingPosition(t *testing.T) {
	t.Parallel()
	metricsYAML, port := metricsPort(t)
	f := newFixture(t, fixtureOpts{extra: metricsYAML})
	f.exec(`CREATE TABLE accounts (id bigint PRIMARY KEY, login text)`)
	const n = 20000
	f.seedUsers(n)
	base := mustRead(t, f.cfgPath)
	p := f.startBinaryStreaming(f.cfgPath)
	f.barrier()
	var comment string
	if err := f.db.QueryRow(f.ctx(), `SELECT coalesce(obj_description(oid, 'pg_publication'), '') FROM pg_publication WHERE pubname = 'cdcinvalidate'`).Scan(&comment); err != nil {
		t.Fatal(err)
	}
	if comment != "managed by cdcinvalidate" {
		t.Fatalf("the publication the engine created has comment %q", comment)
	}
	if f.published("accounts") {
		t.Fatal("accounts published before any rule names it")
	}
	walsender := f.walsenderPID()

	// Stale values under the templates the reload adds, and values under
	// kept templates and of other applications, which must stay.
	f.set("user:name:stale", "account:7", "order:5", "unmanaged:1")
	f.set(userKeys(1, n)...)

	// A writer updates users 1, 2, 3, ... one per transaction until told
	// to stop, across the reload.
	var written atomic.Int64
	stop := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		for i := 1; i <= n; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := f.db.Exec(context.Background(), `UPDATE users SET name = $2 WHERE id = $1`, i, fmt.Sprintf("n%d", i)); err != nil {
				errc <- err
				return
			}
			written.Store(int64(i))
		}
	}()
	harness.WaitFor(t, 10*time.Second, "the writer to start", func() bool { return written.Load() >= 50 })
	next := base + `  - table: users
    keys: ["user:name:{name}"]
  - table: accounts
    keys: ["account:{id}"]
sink:
  max_batch_keys: 5000
`
	atReload := written.Load()
	f.reload(p, next, msgReloaded)
	atSwitch := written.Load()
	harness.WaitFor(t, 30*time.Second, "more writes after the reload", func() bool { return written.Load() >= atSwitch+200 })
	close(stop)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	last := int(written.Load())
	t.Logf("updates: %d before SIGHUP, %d when the new rules ran, %d in all", atReload, atSwitch, last)
	if last >= n {
		t.Fatal("the writer ran out of rows")
	}

	f.barrier()
	f.wantGone(userKeys(1, last)...) // every write: before, during and after the reload
	f.wantKept(userKeys(last+1, last+100)...)
	f.wantGone("user:name:stale", "account:7")
	f.wantKept("order:5", "unmanaged:1")
	if pid := f.walsenderPID(); pid != walsender {
		t.Errorf("walsender PID %d after the reload, %d before: the engine reconnected", pid, walsender)
	}
	if !f.published("accounts") {
		t.Error("accounts not added to the publication")
	}
	line := logLine(p, msgReloaded)
	for _, want := range []string{`"public.accounts"`, `"public.users"`, `"added_to_publication":["public.accounts"]`, `"flushed_patterns":["account:*","user:name:*"]`} {
		if !strings.Contains(line, want) {
			t.Errorf("reload log lacks %s: %s", want, line)
		}
	}
	if w := logLine(p, "restart to apply"); !strings.Contains(w, `"sections":["sink"]`) {
		t.Errorf("no warning that the sink section needs a restart: %q", w)
	}

	// The new rules run.
	f.set("account:1", "user:name:n1", "user:name:renamed", "user:name:n2")
	f.exec(`INSERT INTO accounts VALUES (1, 'a')`)
	f.exec(`UPDATE users SET name = 'renamed' WHERE id = 1`)
	f.barrier()
	f.wantGone("account:1", "user:name:n1", "user:name:renamed")
	f.wantKept("user:name:n2")
	before := f.confirmed()
	harness.WaitFor(t, 20*time.Second, "the confirmed position to move on", func() bool { return f.confirmed() > before })

	_, body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if v := metricValue(t, body, `cdcinvalidate_rule_reloads_total{result="ok"}`); v != 1 {
		t.Errorf("rule_reloads_total{ok} = %v, want 1", v)
	}
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
}

// TestReloadRejectsInvalidRules: a file that does not parse, and rules the
// catalog contradicts (a missing column, a missing table), are rejected
// with an error in the log; the engine keeps streaming with the old rules
// and flushes nothing.
func TestReloadRejectsInvalidRules(t *testing.T) {
	t.Parallel()
	metricsYAML, port := metricsPort(t)
	f := newFixture(t, fixtureOpts{extra: metricsYAML})
	f.seedUsers(3)
	base := mustRead(t, f.cfgPath)
	p := f.startBinaryStreaming(f.cfgPath)
	f.barrier()
	walsender := f.walsenderPID()
	f.set("user:nick:x", "ghost:1")

	// A YAML error.
	f.reload(p, base+"  - table: users\n    keys: [\"user:x:{id}\"\n", msgInvalid)
	line := logLine(p, msgInvalid)
	if !strings.Contains(line, "config.yaml:") {
		t.Errorf("the error does not name the file and line: %s", line)
	}
	// An invalid DSN quoting a password, which must not reach the log.
	dsnLine := regexp.MustCompile(`(?m)^  dsn: .*$`)
	f.reload(p, dsnLine.ReplaceAllString(base, `  dsn: "postgres://u:hunter2@127.0.0.1:notaport/x"`), msgInvalid)
	line = logLine(p, msgInvalid)
	if strings.Contains(p.Output(), "hunter2") || !strings.Contains(line, "postgres.dsn") {
		t.Errorf("the password is not redacted, or the problem not named: %s", line)
	}
	f.set("user:1")
	f.exec(`UPDATE users SET name = 'a' WHERE id = 1`)
	f.barrier()
	f.wantGone("user:1")

	// Rules that do not fit the database.
	f.reload(p, base+"  - table: users\n    keys: [\"user:nick:{nickname}\"]\n  - table: ghosts\n    keys: [\"ghost:{id}\"]\n", msgRejected)
	line = logLine(p, msgRejected)
	for _, want := range []string{`nickname`, `table public.ghosts does not exist`} {
		if !strings.Contains(line, want) {
			t.Errorf("the rejection lacks %q: %s", want, line)
		}
	}
	f.set("user:2")
	f.exec(`UPDATE users SET name = 'b' WHERE id = 2`)
	f.barrier()
	f.wantGone("user:2")
	f.wantKept("user:nick:x", "ghost:1") // nothing flushed for rules that never ran
	if pid := f.walsenderPID(); pid != walsender {
		t.Errorf("walsender PID %d after the rejected reloads, %d before", pid, walsender)
	}
	_, body := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if v := metricValue(t, body, `cdcinvalidate_rule_reloads_total{result="rejected"}`); v != 3 {
		t.Errorf("rule_reloads_total{rejected} = %v, want 3", v)
	}
	if v := metricValue(t, body, `cdcinvalidate_rule_reloads_total{result="ok"}`); v != 0 {
		t.Errorf("rule_reloads_total{ok} = %v, want 0", v)
	}
}

// TestReloadUserPublicationNeedsAlter: the publication was created by the
// user, so the engine does not change it. A reload naming a table it lacks
// is rejected with the ALTER PUBLICATION to run; once the user ran it,
// the same reload succeeds.
func TestReloadUserPublicationNeedsAlter(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE accounts (id bigint PRIMARY KEY, login text);
CREATE PUBLICATION cdcinvalidate FOR TABLE users, orders, big, barrier;`)
	f.seedUsers(3)
	base := mustRead(t, f.cfgPath)
	p := f.startBinaryStreaming(f.cfgPath)
	f.barrier()
	f.set("account:1")
	next := base + "  - table: accounts\n    keys: [\"account:{id}\"]\n"

	f.reload(p, next, msgRejected)
	line := logLine(p, msgRejected)
	for _, want := range []string{`ALTER PUBLICATION \"cdcinvalidate\" ADD TABLE \"public\".\"accounts\"`, "did not create this publication"} {
		if !strings.Contains(line, want) {
			t.Errorf("the rejection lacks %s: %s", want, line)
		}
	}
	if f.published("accounts") {
		t.Fatal("the engine changed a publication it did not create")
	}
	f.set("user:1")
	f.exec(`UPDATE users SET name = 'a' WHERE id = 1`)
	f.barrier()
	f.wantGone("user:1")
	f.wantKept("account:1")

	f.exec(`ALTER PUBLICATION cdcinvalidate ADD TABLE accounts`)
	f.reload(p, next, msgReloaded)
	f.barrier()
	f.wantGone("account:1") // a new template's keys are flushed
	f.set("account:2")
	f.exec(`INSERT INTO accounts VALUES (2, 'b')`)
	f.barrier()
	f.wantGone("account:2")
}

// TestReloadDuringStreamedTransaction: a large transaction is being
// streamed (in progress) when the rules gain a template. Its first chunks
// were mapped by the old rules, so the new template's keys of those rows
// were never rendered; a reader that cached them after the reload and
// before the commit would keep a stale value. The commit must delete the
// new template's keys.
func TestReloadDuringStreamedTransaction(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{pgSettings: map[string]string{"logical_decoding_work_mem": "64kB"}})
	f.seedUsers(5000)
	f.exec(`UPDATE users SET name = 'old' || id`)
	base := mustRead(t, f.cfgPath)
	p := f.startBinaryStreaming(f.cfgPath)
	f.barrier()

	ctx := f.ctx()
	tx := f.begin(`UPDATE users SET name = 'new' || id`)
	// The barrier commits after the update's changes in the WAL: once it
	// is applied, the decoder has streamed the open transaction's chunks.
	f.barrier()
	var streamed int64
	_ = f.db.QueryRow(ctx, `SELECT coalesce(sum(stream_txns), 0)::bigint FROM pg_stat_replication_slots WHERE slot_name = 'cdcinvalidate'`).Scan(&streamed)
	t.Logf("streamed transactions so far (statistics may lag): %d", streamed)

	f.reload(p, base+"  - table: users\n    keys: [\"user:name:{name}\"]\n", msgReloaded)
	// A reader fills keys of rows from the transaction's first chunk: it
	// still sees the old rows.
	keys := []string{"user:name:old1", "user:name:old2", "user:name:new1", "user:name:new2"}
	f.set(keys...)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	f.barrier()
	f.wantGone(keys...)
}

// TestReloadWaitsForOlderTransactions: a transaction that wrote to a table
// before the reload added it to the publication is decoded with the
// publication as it was, so those changes never reach the engine. The new
// rules (and the flush of their keys) must wait until it ended; else a
// value cached before its commit would stay stale.
func TestReloadWaitsForOlderTransactions(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE accounts (id bigint PRIMARY KEY, login text)`)
	base := mustRead(t, f.cfgPath)
	p := f.startBinaryStreaming(f.cfgPath)
	f.barrier()

	ctx := f.ctx()
	tx := f.begin(`INSERT INTO accounts VALUES (1, 'before the reload')`)
	if err := os.WriteFile(f.cfgPath, []byte(base+"  - table: accounts\n    keys: [\"account:{id}\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 30*time.Second, "the publication to include accounts", func() bool { return f.published("accounts") })
	time.Sleep(time.Second)
	if strings.Contains(p.Output(), msgReloaded) {
		t.Fatal("rules reloaded while a transaction older than the publication change was open")
	}
	// A reader caches account:1 as the database shows it before the commit.
	f.set("account:1")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 30*time.Second, "the reload", func() bool { return strings.Contains(p.Output(), msgReloaded) })
	f.barrier()
	f.wantGone("account:1")
	f.set("account:2")
	f.exec(`INSERT INTO accounts VALUES (2, 'after')`)
	f.barrier()
	f.wantGone("account:2")
}

// TestRestartAfterReloadRepeatsItsFlush: a reload records only what both
// rule sets manage, so the next start flushes the reload's new patterns
// again (the reload's own flush may not have reached Redis before a crash);
// the start after that flushes nothing.
func TestRestartAfterReloadRepeatsItsFlush(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	before := f.rulesConfig("  - table: users\n    keys: [\"user:{id}\"]\n")
	after := f.rulesConfig("  - table: users\n    keys: [\"user:{id}\", \"profile:{id}\"]\n")
	if err := os.WriteFile(f.cfgPath, []byte(before), 0o600); err != nil {
		t.Fatal(err)
	}
	p := f.startBinaryStreaming(f.cfgPath)
	f.reload(p, after, "rules reloaded")
	f.barrier()
	p.KillT(t) // as if the reload's flush had not reached Redis
	f.set("profile:1", "user:1")
	p = f.startBinaryStreaming(f.cfgPath)
	f.barrier()
	f.wantGone("profile:1")
	f.wantKept("user:1")
	if code, _ := p.TermT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	f.set("profile:2")
	p = f.startBinaryStreaming(f.cfgPath)
	f.barrier()
	f.wantKept("profile:2")
	_, _ = p.TermT(t, 30*time.Second)
}
