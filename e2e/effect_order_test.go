package e2e

import (
	"testing"
)

// TestRefreshAndDeleteInStatementOrder: within one transaction a refresh
// write of a key and another rule's delete of the same key (or an explicit
// invalidation of it) end as the statements' order says: a delete after
// the write leaves the key gone, a write after the delete leaves the new
// row.
func TestRefreshAndDeleteInStatementOrder(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	f.startRules(`  - table: users
    keys: ["user:{id}"]
    actions: [refresh]
    refresh_columns: [id, name]
  - table: orders
    keys: ["user:{user_id}"]
`)
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'A', '')`)
	f.barrier()
	if got := f.get("user:1"); got != `{"id":1,"name":"A"}` {
		t.Fatalf("user:1 = %q after the insert", got)
	}
	step := func(name, want string, stmts ...string) {
		t.Helper()
		tx := f.begin(stmts...)
		if err := tx.Commit(f.ctx()); err != nil {
			t.Fatal(err)
		}
		f.barrier()
		if got := f.get("user:1"); got != want {
			t.Errorf("%s: user:1 = %q, want %q", name, got, want)
		}
	}
	step("refresh, then the orders rule deletes", "",
		`UPDATE users SET name = 'B' WHERE id = 1`, `INSERT INTO orders VALUES (10, 1, 'n')`)
	step("the orders rule deletes, then refresh", `{"id":1,"name":"C"}`,
		`UPDATE orders SET note = 'm' WHERE id = 10`, `UPDATE users SET name = 'C' WHERE id = 1`)
	step("refresh, then an explicit invalidation", "",
		`UPDATE users SET name = 'D' WHERE id = 1`, `SELECT pg_logical_emit_message(true, 'cdcinvalidate', 'user:1')`)
	step("an explicit invalidation, then refresh", `{"id":1,"name":"E"}`,
		`SELECT pg_logical_emit_message(true, 'cdcinvalidate', 'user:1')`, `UPDATE users SET name = 'E' WHERE id = 1`)
}
