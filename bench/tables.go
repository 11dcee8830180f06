package bench

import (
	"fmt"
	"strings"
)

// benchTableSQL creates the bench table: ten columns of the types rows
// usually have, so that a refresh writes a realistic row (the workload
// changes n). Autovacuum is off (see vacuum). The defaults fill the rows
// the latency and memory phases insert with (id, payload) alone.
const benchTableSQL = `CREATE TABLE ` + table + ` (
  id bigint PRIMARY KEY,
  n bigint NOT NULL DEFAULT 0,
  payload text NOT NULL,
  name varchar(64) NOT NULL DEFAULT '',
  price numeric(10,2) NOT NULL DEFAULT 0,
  qty integer NOT NULL DEFAULT 0,
  active boolean NOT NULL DEFAULT false,
  updated_at timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00',
  attrs jsonb,
  ref uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000'
) WITH (fillfactor = 90, autovacuum_enabled = false)`

// fillSQL fills the bench table with rows 1..rows (attrs NULL on every
// tenth).
func fillSQL(rows int) string {
	return fmt.Sprintf(`INSERT INTO %s (id, payload, name, price, qty, active, updated_at, attrs, ref)
SELECT g, 'item ' || g || ' ' || md5(g::text), 'name ' || g, (g %% 100000) / 100.0, g %% 1000, g %% 2 = 0,
  timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second',
  CASE WHEN g %% 10 = 0 THEN NULL ELSE jsonb_build_object('color', 'c' || (g %% 7), 'size', g %% 5, 'tags', jsonb_build_array('a', g %% 3)) END,
  md5(g::text)::uuid
FROM generate_series(1, %d) g`, table, rows)
}

// dropMultiTablesSQL drops the tables of the many-tables variant, also
// those of an earlier run with more of them.
const dropMultiTablesSQL = `DO $$
DECLARE t text;
BEGIN
  FOR t IN SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema() AND tablename ~ '^cdcbench_t[0-9]+$' LOOP
    EXECUTE 'DROP TABLE ' || t;
  END LOOP;
END
$$`

// tables are the bench tables: cdcbench_items, and cdcbench_t1..N for the
// many-tables variant (--tables above 1).
func (b *bench) tables() []string {
	out := []string{table}
	if b.opts.Tables > 1 {
		for t := 1; t <= b.opts.Tables; t++ {
			out = append(out, multiTable(t))
		}
	}
	return out
}

// setupSQL creates the bench tables and the publication. Table t of the
// many-tables variant holds the rows whose (id-1) mod N is t-1, so ids
// (and the keys item:{id}) stay unique over all of them.
func (b *bench) setupSQL() []string {
	sqls := []string{benchTableSQL, fillSQL(b.opts.Rows)}
	if n := b.opts.Tables; n > 1 {
		sqls = append(sqls, fmt.Sprintf(`DO $$
BEGIN
  FOR t IN 1..%d LOOP
    EXECUTE format('CREATE TABLE cdcbench_t%%s (LIKE %s INCLUDING ALL) WITH (fillfactor = 90, autovacuum_enabled = false)', t);
    EXECUTE format('INSERT INTO cdcbench_t%%s SELECT * FROM %s WHERE (id - 1) %%%% %d = %%s', t, t - 1);
  END LOOP;
END
$$`, n, table, table, n))
	}
	sqls = append(sqls,
		`VACUUM ANALYZE `+strings.Join(b.tables(), ", "),
		`CREATE PUBLICATION `+publication+` FOR TABLE `+strings.Join(b.tables(), ", "))
	return sqls
}

// multiTableWorkloadSQL updates rows 1..rows once each, row i in table
// (i-1) mod tables + 1, committing every batch rows: the changes of each
// transaction spread over the tables.
func multiTableWorkloadSQL(rows, batch, tables int) string {
	return fmt.Sprintf(`DO $$
BEGIN
  FOR i IN 1..%d LOOP
    EXECUTE format('UPDATE cdcbench_t%%s SET n = n + 1 WHERE id = $1', (i - 1) %% %d + 1) USING i::bigint;
    IF i %% %d = 0 OR i = %d THEN
      COMMIT;
    END IF;
  END LOOP;
END
$$`, rows, tables, batch, rows)
}
