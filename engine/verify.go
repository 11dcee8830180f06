package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"reflect"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/mapping"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// The offline audit (`cdcinvalidate verify`): read a sample of rows of
// every rule table in a read-only session, compute the keys the rules give
// them, and look at those keys in Redis. It changes nothing.
//
// What it can judge: a refreshed value (the `refresh` action) must equal
// its row field by field; anything else present in Redis (a value filled
// by the application, a version key) cannot be judged from the row and is
// counted as unverifiable, never as consistent. A value counts as stale
// only when it still differs from its row after VerifyOptions.Settle, read
// again on both sides, so an invalidation in flight is not reported.

// VerifyOptions tune the audit.
type VerifyOptions struct {
	// Sample is the number of rows read per rule table (default 1,000).
	Sample int
	// Table limits the audit to the rules of one table (table or
	// schema.table); "" audits every rule.
	Table string
	// Settle is how long a suspect value gets to catch up before it counts
	// as stale (default 2 s).
	Settle time.Duration
}

// Defaults of VerifyOptions.
const (
	DefaultVerifySample = 1000
	DefaultVerifySettle = 2 * time.Second
)

// RuleAudit is what the audit found for one rule.
type RuleAudit struct {
	Rule  string // where the rule is, e.g. "rules[0] (table users in rules.yaml)"
	Table string
	Rows  int // rows sampled
	Keys  int // distinct keys the sampled rows map to
	// Absent keys are consistent: the next reader loads the row.
	Absent int
	// Fresh are refreshed values equal to their row.
	Fresh int
	// Stale are refreshed values that differ from their row.
	Stale int
	// Unverifiable are present values the row cannot judge: values filled
	// by the application and version keys.
	Unverifiable int
}

// StaleKey is one stale value and why.
type StaleKey struct {
	Key    string
	Rule   string
	Reason string
}

// VerifyReport is the audit's outcome.
type VerifyReport struct {
	Rules []RuleAudit
	Stale []StaleKey
}

// Failed reports whether a stale value was found.
func (r *VerifyReport) Failed() bool { return len(r.Stale) > 0 }

// Print writes every stale key on its own line prefixed "STALE " (scripts
// rely on it), then a table per rule and the reasons.
func (r *VerifyReport) Print(w io.Writer) {
	for _, s := range r.Stale {
		fmt.Fprintf(w, "STALE %s\n", s.Key)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tTABLE\tROWS\tKEYS\tABSENT\tFRESH\tSTALE\tUNVERIFIABLE")
	for _, a := range r.Rules {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", a.Rule, a.Table, a.Rows, a.Keys, a.Absent, a.Fresh, a.Stale, a.Unverifiable)
	}
	_ = tw.Flush()
	for _, s := range r.Stale {
		fmt.Fprintf(w, "stale %q (%s): %s\n", s.Key, s.Rule, s.Reason)
	}
	if !r.Failed() {
		fmt.Fprintln(w, "no stale value found")
	}
}

// VerifySetupError is a configuration or connection problem: the audit
// could not run (exit status 2).
type VerifySetupError struct{ Err error }

func (e *VerifySetupError) Error() string { return e.Err.Error() }
func (e *VerifySetupError) Unwrap() error { return e.Err }

func setupErr(format string, args ...any) error {
	return &VerifySetupError{fmt.Errorf(format, args...)}
}

// Verify runs the offline audit. file names the configuration in messages.
// A *VerifySetupError means it could not run.
func Verify(ctx context.Context, cfg *config.Config, file string, opts VerifyOptions) (*VerifyReport, error) {
	if opts.Sample <= 0 {
		opts.Sample = DefaultVerifySample
	}
	if opts.Settle <= 0 {
		opts.Settle = DefaultVerifySettle
	}
	rules, err := auditedRules(cfg.MappingRules(file), opts.Table)
	if err != nil {
		return nil, &VerifySetupError{err}
	}
	conn, err := readOnlyConn(ctx, cfg.Postgres.DSN, "cdcinvalidate-verify")
	if err != nil {
		return nil, &VerifySetupError{err}
	}
	defer conn.Close(context.Background())
	rdb, err := newRedisClient(cfg.Redis, 3)
	if err != nil {
		return nil, &VerifySetupError{err}
	}
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return nil, setupErr("redis %s: PING failed: %v (check redis.addr, that Redis runs, and redis.username / redis.password)", cfg.Redis.Describe(), err)
	}

	rep := &VerifyReport{}
	var suspects []suspect
	for i := range rules {
		a, s, err := auditRule(ctx, conn, rdb, &rules[i], opts.Sample)
		if err != nil {
			return nil, err
		}
		rep.Rules = append(rep.Rules, a)
		suspects = append(suspects, s...)
	}
	if len(suspects) == 0 {
		return rep, nil
	}
	// Give invalidations in flight time to land, then read both sides again.
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(opts.Settle):
	}
	for _, s := range suspects {
		reason, stale, err := recheck(ctx, conn, rdb, s)
		if err != nil {
			return nil, err
		}
		a := &rep.Rules[s.ruleIdx]
		if stale {
			a.Stale++
			rep.Stale = append(rep.Stale, StaleKey{Key: s.key, Rule: a.Rule, Reason: reason})
		} else if reason == "" {
			a.Fresh++
		} else {
			a.Absent++
		}
	}
	sort.Slice(rep.Stale, func(i, j int) bool { return rep.Stale[i].Key < rep.Stale[j].Key })
	return rep, nil
}

// auditedRule is the audit of one rule: the mapper it runs rows through, and
// how to read its table.
type auditedRule struct {
	rule mapping.Rule
	m    *mapping.Mapper
	rel  *replication.Relation
	pk   []int // columns that find a row again
	idx  int
}

// auditedRules keeps the rules of table (all when ""), one mapper each so
// that every key is charged to its rule. A row's keys are its keys whatever
// operation changed it last, so ops and when_changed are dropped; when
// conditions stay (a row they exclude has no managed keys).
func auditedRules(all []mapping.Rule, table string) ([]auditedRule, error) {
	if table != "" && !strings.Contains(table, ".") {
		table = "public." + table
	}
	var out []auditedRule
	for _, r := range all {
		if table != "" && r.QualifiedTable() != table {
			continue
		}
		r.Ops = 0
		r.WhenChanged = nil
		r.AllowStaleOldKeys = true // only new rows are mapped
		m, err := mapping.New([]mapping.Rule{r})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.Where, err)
		}
		out = append(out, auditedRule{rule: r, m: m, idx: len(out)})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no rule covers table %q: name one of the rules' tables with --table", table)
	}
	return out, nil
}

// readOnlyConn opens a session that cannot write.
func readOnlyConn(ctx context.Context, dsn, appName string) (*pgx.Conn, error) {
	ccfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres.dsn: %s", config.Redact(err.Error()))
	}
	if ccfg.RuntimeParams == nil {
		ccfg.RuntimeParams = map[string]string{}
	}
	ccfg.RuntimeParams["application_name"] = appName
	ccfg.RuntimeParams["default_transaction_read_only"] = "on"
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, ccfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: cannot connect: %s (check postgres.dsn, that the server runs, and pg_hba.conf)", config.Redact(explainPgError(err).Error()))
	}
	return conn, nil
}

// suspect is a refreshed value that differed from its row.
type suspect struct {
	rule    *auditedRule
	ruleIdx int
	key     string
	pkVals  []*string
}

// relationOf reads the table's columns as pgoutput would announce them.
func relationOf(ctx context.Context, conn *pgx.Conn, qualified string) (*replication.Relation, []int, error) {
	schema, table := config.SplitTable(qualified)
	rel := &replication.Relation{Namespace: schema, Name: table, ReplicaIdentity: 'f'}
	var pkNames []string
	err := conn.QueryRow(ctx, `
SELECT c.oid,
       array(SELECT a.attname::text FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = c.oid AND i.indisprimary)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2`, schema, table).Scan(&rel.ID, &pkNames)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, setupErr("table %s does not exist (fix the rule's table, or create it)", qualified)
	}
	if err != nil {
		return nil, nil, setupErr("read catalog of %s: %v", qualified, err)
	}
	var names []string
	var types []uint32
	if err := conn.QueryRow(ctx, `
SELECT array(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       array(SELECT a.atttypid FROM pg_attribute a
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum)`, rel.ID).Scan(&names, &types); err != nil {
		return nil, nil, setupErr("read columns of %s: %v", qualified, err)
	}
	var pk []int
	for i, n := range names {
		key := slices.Contains(pkNames, n)
		rel.Columns = append(rel.Columns, replication.Column{Name: n, Key: key, TypeOID: types[i]})
		if key {
			pk = append(pk, i)
		}
	}
	return rel, pk, nil
}

// selectList names every column. Rows are read with the simple protocol,
// so values arrive in the types' text output, as pgoutput sends them (a
// ::text cast is not the same: true is "t" there, char(n) keeps its blanks).
func selectList(rel *replication.Relation) string {
	cols := make([]string, len(rel.Columns))
	for i, c := range rel.Columns {
		cols[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	return strings.Join(cols, ", ")
}

// textRows reads every row of q in the text format; nil is NULL.
func textRows(ctx context.Context, conn *pgx.Conn, q string, args ...any) ([][]*string, error) {
	rows, err := conn.Query(ctx, q, append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]*string
	for rows.Next() {
		raw := rows.RawValues()
		vals := make([]*string, len(raw))
		for i, b := range raw {
			if b != nil {
				s := string(b)
				vals[i] = &s
			}
		}
		out = append(out, vals)
	}
	return out, rows.Err()
}

func tableIdent(rel *replication.Relation) string {
	return pgx.Identifier{rel.Namespace, rel.Name}.Sanitize()
}

// sampleRows reads up to n rows: a Bernoulli sample of large tables, all
// rows in random order otherwise.
func sampleRows(ctx context.Context, conn *pgx.Conn, rel *replication.Relation, n int) ([][]*string, error) {
	var estimate float64
	if err := conn.QueryRow(ctx, `
SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::float8
FROM pg_class c
WHERE c.oid = $1 OR c.oid IN (
  WITH RECURSIVE down(relid) AS (SELECT $1::oid UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.relid)
  SELECT relid FROM down)`, rel.ID).Scan(&estimate); err != nil {
		return nil, fmt.Errorf("estimate rows of %s: %w", rel.QualifiedName(), err)
	}
	q := fmt.Sprintf("SELECT %s FROM %s ORDER BY random() LIMIT %d", selectList(rel), tableIdent(rel), n)
	if estimate > float64(20*n) {
		pct := 100 * 3 * float64(n) / estimate
		q = fmt.Sprintf("SELECT %s FROM %s TABLESAMPLE BERNOULLI (%g) LIMIT %d", selectList(rel), tableIdent(rel), pct, n)
	}
	rows, err := textRows(ctx, conn, q)
	if err != nil {
		return nil, fmt.Errorf("sample rows of %s: %w", rel.QualifiedName(), err)
	}
	return rows, nil
}

// rowChange is the row as an INSERT, which maps to the row's keys.
func rowChange(rel *replication.Relation, vals []*string) *replication.Change {
	ch := &replication.Change{Op: replication.OpInsert, Rel: rel, New: replication.Tuple{Values: make([]replication.Value, len(vals))}}
	for i, v := range vals {
		if v == nil {
			ch.New.Values[i] = replication.Value{Kind: replication.ValueNull}
		} else {
			ch.New.Values[i] = replication.Value{Kind: replication.ValueText, Data: []byte(*v)}
		}
	}
	return ch
}

// expected is what a row says about one key: the refreshed value it must
// hold, or "" when the row cannot judge its value.
type expected struct {
	value   string
	refresh bool
	pkVals  []*string
}

// rowKeys maps one row to its keys.
func (ar *auditedRule) rowKeys(vals []*string, into map[string]expected) error {
	keys, acts, err := ar.m.AppendChange(nil, nil, rowChange(ar.rel, vals))
	if err != nil {
		return err
	}
	var pkVals []*string
	for _, i := range ar.pk {
		pkVals = append(pkVals, vals[i])
	}
	for _, k := range keys {
		if _, ok := into[k]; !ok {
			into[k] = expected{pkVals: pkVals}
		}
	}
	for _, a := range acts {
		switch a.Kind {
		case replication.ActSet:
			into[a.Key] = expected{value: a.Value, refresh: true, pkVals: pkVals}
		case replication.ActUnlink, replication.ActDel, replication.ActDelete, replication.ActVersion:
			if _, ok := into[a.Key]; !ok {
				into[a.Key] = expected{pkVals: pkVals}
			}
		}
	}
	return nil
}

func auditRule(ctx context.Context, conn *pgx.Conn, rdb redis.UniversalClient, ar *auditedRule, sample int) (RuleAudit, []suspect, error) {
	a := RuleAudit{Rule: ar.rule.Where, Table: ar.rule.QualifiedTable()}
	rel, pk, err := relationOf(ctx, conn, ar.rule.QualifiedTable())
	if err != nil {
		return a, nil, err
	}
	if err := ar.m.Bind(rel); err != nil {
		return a, nil, &VerifySetupError{fmt.Errorf("%s: %w (run cdcinvalidate check)", ar.rule.Where, err)}
	}
	ar.rel, ar.pk = rel, pk
	rows, err := sampleRows(ctx, conn, rel, sample)
	if err != nil {
		return a, nil, err
	}
	a.Rows = len(rows)
	want := map[string]expected{}
	for _, vals := range rows {
		if err := ar.rowKeys(vals, want); err != nil {
			return a, nil, fmt.Errorf("%s: %w", ar.rule.Where, err)
		}
	}
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	a.Keys = len(keys)
	got, err := readKeys(ctx, rdb, keys)
	if err != nil {
		return a, nil, err
	}
	var suspects []suspect
	for i, k := range keys {
		v, present := got[i], got[i] != nil
		e := want[k]
		switch {
		case !present:
			a.Absent++
		case !e.refresh:
			a.Unverifiable++
		case sameJSON(*v, e.value):
			a.Fresh++
		default:
			suspects = append(suspects, suspect{rule: ar, ruleIdx: ar.idx, key: k, pkVals: e.pkVals})
		}
	}
	return a, suspects, nil
}

// readKeys GETs keys in pipelines of 500; nil is absent. A key holding
// another type than a string is reported as present with no value to compare.
func readKeys(ctx context.Context, rdb redis.UniversalClient, keys []string) ([]*string, error) {
	out := make([]*string, len(keys))
	for start := 0; start < len(keys); start += 500 {
		end := min(start+500, len(keys))
		pipe := rdb.Pipeline()
		cmds := make([]*redis.StringCmd, 0, end-start)
		for _, k := range keys[start:end] {
			cmds = append(cmds, pipe.Get(ctx, k))
		}
		_, _ = pipe.Exec(ctx)
		for i, c := range cmds {
			v, err := c.Result()
			switch {
			case errors.Is(err, redis.Nil):
			case err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE"):
				s := ""
				out[start+i] = &s
			case err != nil:
				return nil, fmt.Errorf("redis GET %q: %w", keys[start+i], err)
			default:
				out[start+i] = &v
			}
		}
	}
	return out, nil
}

// recheck reads a suspect's row and key again: stale when the value still
// differs from the row (or the row no longer maps to the key). reason is
// "" when the value now matches, and names the difference otherwise.
func recheck(ctx context.Context, conn *pgx.Conn, rdb redis.UniversalClient, s suspect) (reason string, stale bool, err error) {
	got, err := readKeys(ctx, rdb, []string{s.key})
	if err != nil {
		return "", false, err
	}
	if got[0] == nil {
		return "deleted since", false, nil
	}
	ar := s.rule
	if len(ar.pk) == 0 {
		return "differs from its row (the table has no primary key to read the row again)", true, nil
	}
	conds := make([]string, len(ar.pk))
	args := make([]any, len(ar.pk))
	for i, c := range ar.pk {
		conds[i] = fmt.Sprintf("%s = $%d", pgx.Identifier{ar.rel.Columns[c].Name}.Sanitize(), i+1)
		args[i] = s.pkVals[i]
	}
	q := fmt.Sprintf("SELECT %s FROM %s WHERE %s", selectList(ar.rel), tableIdent(ar.rel), strings.Join(conds, " AND "))
	rows, err := textRows(ctx, conn, q, args...)
	if err != nil {
		return "", false, fmt.Errorf("read %s again: %w", ar.rel.QualifiedName(), err)
	}
	if len(rows) == 0 {
		return "its row was deleted, the value is still there", true, nil
	}
	vals := rows[0]
	want := map[string]expected{}
	if err := ar.rowKeys(vals, want); err != nil {
		return "", false, err
	}
	e, ok := want[s.key]
	if !ok || !e.refresh {
		return "its row no longer maps to this key, the value is still there", true, nil
	}
	if sameJSON(*got[0], e.value) {
		return "", false, nil
	}
	return "differs from its row: " + jsonDiff(*got[0], e.value), true, nil
}

func decodeObject(s string) (map[string]any, bool) {
	d := json.NewDecoder(bytes.NewReader([]byte(s)))
	d.UseNumber()
	var m map[string]any
	if d.Decode(&m) != nil || m == nil {
		return nil, false
	}
	return m, true
}

// sameJSON compares a cached value with the row's JSON field by field.
func sameJSON(cached, row string) bool {
	a, okA := decodeObject(cached)
	b, okB := decodeObject(row)
	if !okA || !okB {
		return cached == row
	}
	return equalJSON(a, b)
}

// equalJSON compares decoded JSON values; numbers by value, so 9.5 equals
// 9.50 (numeric columns keep their scale in the row's JSON).
func equalJSON(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		rx, okx := new(big.Rat).SetString(string(x))
		ry, oky := new(big.Rat).SetString(string(y))
		if !okx || !oky {
			return x == y
		}
		return rx.Cmp(ry) == 0
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !equalJSON(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equalJSON(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

// jsonDiff names the fields that differ.
func jsonDiff(cached, row string) string {
	a, okA := decodeObject(cached)
	b, okB := decodeObject(row)
	if !okA {
		return "the cached value is not a JSON object"
	}
	if !okB {
		return "the row's JSON does not decode"
	}
	var fields []string
	for k, v := range b {
		if w, ok := a[k]; !ok || !equalJSON(v, w) {
			fields = append(fields, k)
		}
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			fields = append(fields, k)
		}
	}
	sort.Strings(fields)
	return "fields " + strings.Join(fields, ", ")
}
