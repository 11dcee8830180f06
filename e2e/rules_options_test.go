package e2e

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// rulesConfig is a configuration for the fixture's servers with the given
// rules (YAML list items) plus the barrier rule the fixture needs.
func (f *fixture) rulesConfig(rules string) string {
	return fmt.Sprintf("postgres:\n  dsn: %q\n  status_interval: 1s\nredis:\n%srules:\n  - table: barrier\n    keys: [\"barrier:{id}\"]\n%s",
		f.pg.DSN("postgres"), f.redisYAML(), rules)
}

// startRules starts the engine in process with the given rules.
func (f *fixture) startRules(rules string) *engineRun {
	f.t.Helper()
	r := f.startWith(f.writeConfig(f.rulesConfig(rules)), zaptest.NewLogger(f.t, zaptest.Level(zap.InfoLevel)))
	f.barrier()
	return r
}

func sha1Hex(s string) string {
	h := sha1.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}

// TestRulesWhenChangedWithTOAST checks when_changed against real pgoutput
// images: a TOASTed column left unchanged arrives as 'u' and counts as
// unchanged under REPLICA IDENTITY FULL and DEFAULT; a column whose old
// value the change does not carry (DEFAULT) counts as changed.
func TestRulesWhenChangedWithTOAST(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	for _, tbl := range []string{"docs_full", "docs_def"} {
		// STORAGE EXTERNAL: stored out of line, uncompressed, once the row
		// passes about 2 kB, so an UPDATE that leaves it alone sends 'u'.
		f.exec(fmt.Sprintf(`CREATE TABLE %s (id bigint PRIMARY KEY, title text, body text);
ALTER TABLE %[1]s ALTER COLUMN body SET STORAGE EXTERNAL`, tbl))
	}
	f.exec(`ALTER TABLE docs_full REPLICA IDENTITY FULL`)
	body := strings.Repeat("0123456789abcdef", 400) // 6.4 kB
	f.startRules(`  - table: docs_full
    keys: ["docf:{id}"]
    when_changed: [body]
  - table: docs_full
    keys: ["docf:title:{id}"]
    when_changed: [title]
  - table: docs_full
    keys: ["docf:body:{body|sha1}"]
    ops: [update]
  - table: docs_def
    keys: ["docd:{id}"]
    when_changed: [body]
  - table: docs_def
    keys: ["docd:title:{id}"]
    when_changed: [title]
`)
	f.exec(`INSERT INTO docs_full VALUES (1, 'a', $1)`, body)
	f.exec(`INSERT INTO docs_def VALUES (1, 'a', $1)`, body)
	f.barrier()

	// Only the title changes: the TOASTed body is sent as unchanged.
	keys := []string{"docf:1", "docf:title:1", "docf:body:" + sha1Hex(body), "docd:1", "docd:title:1"}
	f.set(keys...)
	f.exec(`UPDATE docs_full SET title = 'b' WHERE id = 1`)
	f.exec(`UPDATE docs_def SET title = 'b' WHERE id = 1`)
	f.barrier()
	f.wantGone("docf:title:1", "docd:title:1")
	// The body's key, from the old row's value (FULL), for old and new row.
	f.wantGone("docf:body:" + sha1Hex(body))
	f.wantKept("docf:1", "docd:1")

	// Only the body changes.
	f.set(keys...)
	body2 := strings.Repeat("fedcba9876543210", 400)
	f.exec(`UPDATE docs_full SET body = $1 WHERE id = 1`, body2)
	f.exec(`UPDATE docs_def SET body = $1 WHERE id = 1`, body2)
	f.barrier()
	f.wantGone("docf:1", "docd:1", "docf:body:"+sha1Hex(body), "docf:body:"+sha1Hex(body2))
	f.wantKept("docf:title:1") // FULL: the old title is known and equal
	// DEFAULT: the old title is not in the change, so it counts as changed.
	f.wantGone("docd:title:1")

	// Neither changes (another UPDATE of the same values): FULL skips both.
	f.set(keys...)
	f.exec(`UPDATE docs_full SET title = title WHERE id = 1`)
	f.barrier()
	f.wantKept("docf:1", "docf:title:1")

	// INSERT and DELETE are not filtered by when_changed.
	f.set("docf:1", "docf:title:1", "docd:1", "docd:title:1")
	f.exec(`DELETE FROM docs_full WHERE id = 1`)
	f.exec(`DELETE FROM docs_def WHERE id = 1`)
	f.barrier()
	f.wantGone("docf:1", "docf:title:1", "docd:1", "docd:title:1")
}

// TestRulesWhenCondition checks when: against real changes, including the
// unknown old row of an INSERT, and that an evaluation error stops the
// engine instead of skipping the change.
func TestRulesWhenCondition(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE TABLE articles (id bigint PRIMARY KEY, status text, published boolean, title text, n text);
ALTER TABLE articles REPLICA IDENTITY FULL`)
	run := f.startRules(`  - table: articles
    keys: ["article:{id}"]
    when: new.status != old.status || new.published == "t"
  - table: articles
    keys: ["article:list"]
    ops: [insert, update, delete]
    when: op != "update"
  - table: articles
    keys: ["article:n:{id}"]
    when: op == "update" && int(new.n) > 10
`)
	// INSERT: old is unknown, so the first condition is unknown and fires.
	f.set("article:1", "article:list", "article:n:1")
	f.exec(`INSERT INTO articles VALUES (1, 'draft', false, 'x', '1')`)
	f.barrier()
	f.wantGone("article:1", "article:list")
	f.wantKept("article:n:1") // op == "update" is false on an INSERT

	// Neither the status nor publication: nothing.
	f.set("article:1", "article:list")
	f.exec(`UPDATE articles SET title = 'y' WHERE id = 1`)
	f.barrier()
	f.wantKept("article:1", "article:list", "article:n:1")

	// The status changes.
	f.exec(`UPDATE articles SET status = 'review' WHERE id = 1`)
	f.barrier()
	f.wantGone("article:1")
	f.wantKept("article:list")

	// Published (booleans are "t" and "f").
	f.set("article:1")
	f.exec(`UPDATE articles SET published = true WHERE id = 1`)
	f.barrier()
	f.wantGone("article:1")

	// NULL makes the conversion fail only when evaluated: n = 20 fires.
	f.set("article:1", "article:n:1")
	f.exec(`UPDATE articles SET n = '20' WHERE id = 1`)
	f.barrier()
	f.wantGone("article:1", "article:n:1") // published is still t

	// DELETE: new is unknown, so the first rule fires; the list rule too.
	f.set("article:1", "article:list")
	f.exec(`DELETE FROM articles WHERE id = 1`)
	f.barrier()
	f.wantGone("article:1", "article:list")

	// An evaluation error (int("abc")) stops the engine, naming the rule.
	f.exec(`INSERT INTO articles VALUES (2, 'draft', false, 'x', '1')`)
	f.exec(`UPDATE articles SET n = 'abc' WHERE id = 2`)
	err := run.wait(t, 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), "when condition") || !strings.Contains(err.Error(), "rules[3]") {
		t.Fatalf("engine error = %v, want a failed when condition of rules[3]", err)
	}
	t.Logf("engine stopped with: %v", err)
}

// TestRulesOpsFiltersAndSchemas checks per-rule ops, template filters and
// rules for tables of several schemas.
func TestRulesOpsFiltersAndSchemas(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.exec(`CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id bigint PRIMARY KEY, ref text, email text);
ALTER TABLE billing.invoices REPLICA IDENTITY FULL;
CREATE TABLE events (id bigint PRIMARY KEY, kind text);
ALTER TABLE events REPLICA IDENTITY FULL`)
	f.startRules(`  - table: events
    keys: ["ev:{id}"]
    ops: [insert]
  - table: events
    keys: ["ev:del:{id}"]
    ops: [delete]
  - table: events
    keys: ["evall:list"]
    ops: [truncate]
  - table: billing.invoices
    keys: ["invoice:{id}", "invoice:ref:{ref|urlencode}", "invoice:email:{email|trim|lower}", "invoice:kind:{email|default:none}"]
  - table: users
    keys: ["user:{id}"]
`)
	f.set("ev:1", "ev:del:1", "evall:list")
	f.exec(`INSERT INTO events VALUES (1, 'a')`)
	f.barrier()
	f.wantGone("ev:1")
	f.wantKept("ev:del:1", "evall:list")

	f.set("ev:1")
	f.exec(`UPDATE events SET kind = 'b' WHERE id = 1`)
	f.barrier()
	f.wantKept("ev:1", "ev:del:1", "evall:list")

	f.exec(`DELETE FROM events WHERE id = 1`)
	f.barrier()
	f.wantGone("ev:del:1")
	f.wantKept("ev:1", "evall:list")

	// TRUNCATE: only the rule with truncate; ev:* stays.
	f.set("ev:1", "ev:del:1")
	f.exec(`TRUNCATE events`)
	f.barrier()
	f.wantGone("evall:list")
	f.wantKept("ev:1", "ev:del:1")

	// Filters and another schema.
	f.set("invoice:7", "invoice:ref:A+B%2FC", "invoice:email:ann@x.org", "invoice:kind:none", "invoice:kind:", "user:1")
	f.exec(`INSERT INTO billing.invoices VALUES (7, 'A B/C', '  Ann@X.org ')`)
	f.exec(`INSERT INTO users VALUES (1, 'a@x', '', '')`)
	f.barrier()
	f.wantGone("invoice:7", "invoice:ref:A+B%2FC", "invoice:email:ann@x.org", "user:1")
	f.wantKept("invoice:kind:none", "invoice:kind:") // the email is not NULL
	f.set("invoice:kind:none", "invoice:email:ann@x.org")
	f.exec(`UPDATE billing.invoices SET email = NULL WHERE id = 7`)
	f.barrier()
	f.wantGone("invoice:kind:none", "invoice:email:ann@x.org")
}
