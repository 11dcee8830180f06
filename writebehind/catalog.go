package writebehind

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

// tableInfo is a mapped table with one set of key columns, as the
// catalog describes it; the flusher builds its statements from it.
type tableInfo struct {
	qualified string            // sanitized schema.table
	keyCols   []string          // sorted
	keyPos    map[string]int    // column -> index in keyCols
	types     map[string]string // column -> format_type
	cats      map[string]string // column -> pg_type.typcategory
	sql       map[string]string // upsert text by column list
}

// errPermanent marks errors that retrying cannot cure (a mapping that does
// not fit the schema, a value the column refuses): Run returns them.
type errPermanent struct{ err error }

func (e errPermanent) Error() string { return e.err.Error() }
func (e errPermanent) Unwrap() error { return e.err }

func permanent(err error) error { return errPermanent{err} }

func isPermanent(err error) bool {
	var p errPermanent
	return errors.As(err, &p)
}

// loadTables checks every mapping against the catalog: the table exists,
// its columns exist, the key columns are exactly a unique index's (ON
// CONFLICT needs one), an Add column is numeric. It returns one tableInfo
// per mapping (shared by mappings of one table and key columns).
func loadTables(ctx context.Context, conn *pgx.Conn, ms []compiled) ([]*tableInfo, error) {
	out := make([]*tableInfo, len(ms))
	byKey := map[string]*tableInfo{}
	var errs []error
	for _, m := range ms {
		where := fmt.Sprintf("mapping %s -> %s.%s", m.Key, m.Table, m.Column)
		var oid uint32
		var schema, table string
		err := conn.QueryRow(ctx, `SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)`, pgx.Identifier(strings.Split(m.Table, ".")).Sanitize()).Scan(&oid, &schema, &table)
		if errors.Is(err, pgx.ErrNoRows) {
			errs = append(errs, fmt.Errorf("%s: table %s does not exist (create it, or fix the mapping)", where, m.Table))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: read the catalog: %w", where, err)
		}
		keyCols := slices.Clone(m.tmpl.cols)
		sort.Strings(keyCols)
		ck := fmt.Sprint(oid, keyCols)
		ti := byKey[ck]
		if ti == nil {
			ti = &tableInfo{
				qualified: pgx.Identifier{schema, table}.Sanitize(),
				keyCols:   keyCols,
				keyPos:    map[string]int{},
				types:     map[string]string{},
				cats:      map[string]string{},
				sql:       map[string]string{},
			}
			for i, c := range keyCols {
				ti.keyPos[c] = i
			}
			rows, err := conn.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory::text
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped`, oid)
			if err != nil {
				return nil, fmt.Errorf("%s: read columns: %w", where, err)
			}
			for rows.Next() {
				var name, typ, cat string
				if err := rows.Scan(&name, &typ, &cat); err != nil {
					rows.Close()
					return nil, fmt.Errorf("%s: read columns: %w", where, err)
				}
				ti.types[name], ti.cats[name] = typ, cat
			}
			if err := rows.Err(); err != nil {
				return nil, fmt.Errorf("%s: read columns: %w", where, err)
			}
			var unique bool
			err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL
AND i.indexprs IS NULL AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = $2::text[] AND cardinality(i.indkey::int2[]) = cardinality($2::text[]))`,
				oid, keyCols).Scan(&unique)
			if err != nil {
				return nil, fmt.Errorf("%s: read indexes: %w", where, err)
			}
			for _, c := range keyCols {
				if _, ok := ti.types[c]; !ok {
					errs = append(errs, fmt.Errorf("%s: key column %s is not a column of %s", where, c, ti.qualified))
				}
			}
			if !unique {
				errs = append(errs, fmt.Errorf("%s: no primary key or unique index on exactly (%s) of %s; the flusher upserts with ON CONFLICT (%s), so add one",
					where, strings.Join(keyCols, ", "), ti.qualified, strings.Join(keyCols, ", ")))
			}
			byKey[ck] = ti
		}
		if _, ok := ti.types[m.Column]; !ok {
			errs = append(errs, fmt.Errorf("%s: column %s is not a column of %s", where, m.Column, ti.qualified))
		} else if m.Mode == Add && ti.cats[m.Column] != "N" {
			errs = append(errs, fmt.Errorf("%s: column %s is %s, not numeric; an Add mapping needs a numeric column", where, m.Column, ti.types[m.Column]))
		}
		out[m.index] = ti
	}
	if err := errors.Join(errs...); err != nil {
		return nil, permanent(err)
	}
	return out, nil
}

// upsert returns the statement and arguments of one row's write:
//
//	INSERT INTO t AS t (k..., c...) VALUES ($1::text::type, ...)
//	ON CONFLICT (k...) DO UPDATE SET c = COALESCE(t.c, 0) + EXCLUDED.c  -- Add
//	                                 c = EXCLUDED.c                    -- Set
//
// Values go as text and are cast by PostgreSQL to the columns' types, so a
// key or value the column cannot take is an error of the window (22xxx),
// never a silent change.
func (ti *tableInfo) upsert(rw *rowWrite) (string, []any) {
	args := make([]any, 0, len(ti.keyCols)+len(rw.cols))
	for _, v := range rw.keyVals {
		args = append(args, v)
	}
	var sig strings.Builder
	for _, c := range rw.cols {
		sig.WriteString(c.col)
		sig.WriteByte(byte('0' + c.mode))
		sig.WriteByte(',')
		if c.mode == Add {
			args = append(args, c.sum.String())
		} else {
			args = append(args, c.value)
		}
	}
	if s, ok := ti.sql[sig.String()]; ok {
		return s, args
	}
	var cols, vals, sets []string
	n := 0
	for _, k := range ti.keyCols {
		n++
		cols = append(cols, pgx.Identifier{k}.Sanitize())
		vals = append(vals, fmt.Sprintf("$%d::text::%s", n, ti.types[k]))
	}
	for _, c := range rw.cols {
		n++
		q := pgx.Identifier{c.col}.Sanitize()
		cols = append(cols, q)
		vals = append(vals, fmt.Sprintf("$%d::text::%s", n, ti.types[c.col]))
		if c.mode == Add {
			sets = append(sets, fmt.Sprintf("%s = COALESCE(t.%s, 0) + EXCLUDED.%s", q, q, q))
		} else {
			sets = append(sets, fmt.Sprintf("%s = EXCLUDED.%s", q, q))
		}
	}
	s := fmt.Sprintf("INSERT INTO %s AS t (%s) VALUES (%s) ON CONFLICT (%s) DO UPDATE SET %s",
		ti.qualified, strings.Join(cols, ", "), strings.Join(vals, ", "),
		strings.Join(cols[:len(ti.keyCols)], ", "), strings.Join(sets, ", "))
	ti.sql[sig.String()] = s
	return s, args
}
