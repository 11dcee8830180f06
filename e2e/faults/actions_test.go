package faults

// Rule actions under faults: refresh, version and stream.
//
// The fixture option actions adds rules with these actions on key
// namespaces of their own (r:..., v:..., the stream s:changes) next to the
// plain delete rules, on the same tables and under the same workload, so a
// scenario checks both. Only the engine writes these keys: no reader fills
// them.
//
// The reference is a second logical slot on the same tables (pgoutput,
// protocol 1, read through pg_logical_slot_get_binary_changes and decoded
// here with pglogrepl, not by the engine's decoder). actionsRef replays it
// in commit order with the documented semantics of the actions and so
// knows what Redis must hold after quiescence:
//
//   - refresh: which keys hold a row (their last change wrote it), which
//     must be absent (the row was deleted or moved away, TRUNCATEd, or its
//     last change did not carry a refreshed column: an unchanged TOASTed
//     value, table big's doc). A present key must equal the row as the
//     database has it now (to_jsonb of a fresh read, compared field by
//     field), not the reference's idea of it.
//   - version: every version key ({key}:v) holds the highest commit LSN of
//     the transactions that touched a row with that key (old or new image),
//     no version key exists that no change raised, and a TRUNCATE's pattern
//     removed those of its table. Between faults, samples of every version
//     key must never go down (a replay that lowered one and a later commit
//     that raised it again would not show in the final comparison).
//   - stream: IDs strictly increase, each ID is <commit LSN>-<part>, the
//     entry's lsn field and event agree with it, no (lsn, part) appears
//     twice, the parts of a transaction are 0..n-1 with last only on n-1,
//     a part carries at most 1,000 keys, unique per table and operation;
//     and the transactions in the stream are exactly those of the
//     reference that touched the rules' tables, each with the same
//     (table, op, key) set: nothing missing, nothing extra.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// actionsSchema gives the tables of the action rules columns of the types
// refresh renders differently (numeric, boolean, jsonb, NULLs), derived by
// a trigger so that the shared workload keeps writing them, and a column
// of table big stored out of line (TOAST, no compression) in every tenth
// row: an UPDATE of payload leaves it unchanged, and without an old image
// (replica identity default) the change does not carry it, so refresh
// must delete instead of writing the row.
const actionsSchema = `
ALTER TABLE orders ADD COLUMN amount numeric, ADD COLUMN paid boolean, ADD COLUMN meta jsonb;
CREATE FUNCTION orders_derive() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.amount := round(NEW.id * 1.25 + length(NEW.note), 2);
  NEW.paid := NEW.user_id IS NOT NULL AND NEW.user_id % 2 = 0;
  NEW.meta := jsonb_build_object('note', NEW.note, 'user', NEW.user_id, 'tags', jsonb_build_array(length(NEW.note), 'q"é\'));
  RETURN NEW;
END $$;
CREATE TRIGGER orders_derive BEFORE INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION orders_derive();
UPDATE orders SET note = note;
ALTER TABLE big ADD COLUMN doc text;
ALTER TABLE big ALTER COLUMN doc SET STORAGE EXTERNAL;
UPDATE big SET doc = repeat(md5(id::text), 80) WHERE id % 10 = 0;
`

// actionStream is the stream every action rule appends to: a transaction
// that touches several tables is one entry (in parts).
const actionStream = "s:changes"

// actionRules are appended to the fixture's rules (stream_maxlen 0: no
// trimming, so the checker sees every entry).
const actionRules = `  - table: users
    keys: ["r:user:{id}"]
    actions: [refresh, version, stream]
    refresh_columns: [id, email, name]
    stream_key: "s:changes"
    stream_maxlen: 0
  - table: users
    keys: ["v:email:{email}"]
    actions: [version, stream]
    stream_key: "s:changes"
    stream_maxlen: 0
  - table: orders
    keys: ["r:order:{id}"]
    actions: [refresh, version, stream]
    stream_key: "s:changes"
    stream_maxlen: 0
  - table: big
    keys: ["r:big:{id}"]
    actions: [refresh, version, stream]
    stream_key: "s:changes"
    stream_maxlen: 0
`

// actionRule is one rule of actionRules as the reference sees it: the
// template is prefix + "{" + col + "}", every rule has version and stream.
type actionRule struct {
	table   string
	prefix  string
	col     string
	refresh bool
	cols    []string // refreshed columns, nil: all
}

var actionRuleList = []actionRule{
	{table: "users", prefix: "r:user:", col: "id", refresh: true, cols: []string{"id", "email", "name"}},
	{table: "users", prefix: "v:email:", col: "email"},
	{table: "orders", prefix: "r:order:", col: "id", refresh: true},
	{table: "big", prefix: "r:big:", col: "id", refresh: true},
}

// messageKeys is the most keys one stream entry may carry (sink.MessageKeys).
const messageKeys = 1000

// isActionKey reports whether key belongs to the action rules' namespaces.
func isActionKey(key string) bool {
	return strings.HasPrefix(key, "r:") || strings.HasPrefix(key, "v:") || key == actionStream
}

// docChange writes or clears the out-of-line column of a row of big (one
// the small writers use): a change that carries it, so refresh writes the
// row again.
func docChange(ctx context.Context, tx pgx.Tx, r *rand.Rand, bigRows int) error {
	id := bigRows - r.IntN(max(1, bigRows/10))
	if r.IntN(3) == 0 {
		return inSavepoint(ctx, tx, `UPDATE big SET doc = NULL WHERE id = $1`, id)
	}
	return inSavepoint(ctx, tx, `UPDATE big SET doc = repeat(md5($2), 80) WHERE id = $1`, id, strconv.Itoa(r.IntN(1_000_000)))
}

// ---- the reference

type refreshState uint8

const (
	refWritten  refreshState = iota + 1 // the row was written
	refDeleted                          // deleted, moved away or TRUNCATEd
	refFallback                         // deleted: the change did not carry every refreshed column
)

// actionsRef decodes the reference slot and keeps what the actions must
// have left in Redis.
type actionsRef struct {
	f          *fixture
	slot, pub  string
	rels       map[uint32]*pglogrepl.RelationMessage
	refresh    map[string]refreshState
	versions   map[string]pglogrepl.LSN
	txns       map[pglogrepl.LSN][][]string // commit LSN -> the parts of its stream event ("table|op|key")
	lsn        pglogrepl.LSN                // commit LSN of the open transaction
	cur        *eventParts
	decoded    int // transactions
	changes    int
	fallbacks  int
	truncates  int
	lastSample map[string]pglogrepl.LSN
	samples    int
	lowered    []string // version keys a sample found below the previous one
}

// newActionsRef creates the reference publication and slot. Call it before
// the workload starts and after the engine streams (its slot exists), so
// that both see the same transactions.
func (f *fixture) newActionsRef() *actionsRef {
	f.t.Helper()
	a := &actionsRef{f: f, slot: f.name + "_ref", pub: f.name + "_ref",
		rels: map[uint32]*pglogrepl.RelationMessage{}, refresh: map[string]refreshState{},
		versions: map[string]pglogrepl.LSN{}, txns: map[pglogrepl.LSN][][]string{}}
	f.exec(`CREATE PUBLICATION ` + a.pub + ` FOR TABLE users, orders, big`)
	f.exec(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, a.slot)
	f.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = f.db.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, a.slot)
	})
	return a
}

// consume decodes what the reference slot holds (everything committed so
// far) and applies it.
func (a *actionsRef) consume() {
	a.f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := pgx.BeginFunc(ctx, a.f.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = 0`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)`, a.slot, a.pub)
		if err != nil {
			return err
		}
		defer rows.Close()
		var data []byte
		for rows.Next() {
			if err := rows.Scan(&data); err != nil {
				return err
			}
			if err := a.apply(data); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	if err != nil {
		a.f.t.Fatalf("reference decoding: %v", err)
	}
}

func (a *actionsRef) apply(data []byte) error {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return err
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		a.rels[m.RelationID] = m
	case *pglogrepl.BeginMessage:
		a.lsn, a.cur = m.FinalLSN, &eventParts{seen: map[string]bool{}}
	case *pglogrepl.CommitMessage:
		if m.CommitLSN != a.lsn {
			return fmt.Errorf("commit at %s, begin said %s", m.CommitLSN, a.lsn)
		}
		if parts := a.cur.done(); len(parts) > 0 {
			a.txns[a.lsn] = parts
		}
		a.cur = nil
		a.decoded++
	case *pglogrepl.InsertMessage:
		return a.change(m.RelationID, "insert", nil, 0, m.Tuple)
	case *pglogrepl.UpdateMessage:
		return a.change(m.RelationID, "update", m.OldTuple, m.OldTupleType, m.NewTuple)
	case *pglogrepl.DeleteMessage:
		return a.change(m.RelationID, "delete", m.OldTuple, m.OldTupleType, nil)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			rel := a.rels[id]
			if rel == nil {
				return fmt.Errorf("TRUNCATE of unknown relation %d", id)
			}
			a.truncate(rel)
		}
	}
	return nil
}

type valState uint8

const (
	valOK valState = iota
	valNull
	valUnknown
)

// refChange is one row change; value mirrors what a change carries: an
// unchanged TOASTed value is the old image's when there is one, and an
// UPDATE without an old image kept its replica identity columns.
type refChange struct {
	rel      *pglogrepl.RelationMessage
	op       string
	old, new *pglogrepl.TupleData
	oldKind  uint8
}

func (c *refChange) value(newSide bool, idx int) (string, valState) {
	col := func(t *pglogrepl.TupleData) *pglogrepl.TupleDataColumn {
		if t == nil || idx >= len(t.Columns) {
			return nil
		}
		return t.Columns[idx]
	}
	if newSide {
		v := col(c.new)
		switch {
		case v == nil:
			return "", valUnknown
		case v.DataType == pglogrepl.TupleDataTypeText:
			return string(v.Data), valOK
		case v.DataType == pglogrepl.TupleDataTypeNull:
			return "", valNull
		}
		if o := col(c.old); o != nil && o.DataType == pglogrepl.TupleDataTypeText {
			return string(o.Data), valOK
		}
		return "", valUnknown
	}
	if c.old != nil {
		v := col(c.old)
		switch {
		case v == nil:
			return "", valUnknown
		case v.DataType == pglogrepl.TupleDataTypeText:
			return string(v.Data), valOK
		case v.DataType == pglogrepl.TupleDataTypeNull && c.oldKind == 'O':
			return "", valNull
		}
		return "", valUnknown
	}
	if c.op == "update" && idx < len(c.rel.Columns) && c.rel.Columns[idx].Flags&1 != 0 {
		return c.value(true, idx)
	}
	return "", valUnknown
}

func colIndex(rel *pglogrepl.RelationMessage, name string) int {
	for i, c := range rel.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// key renders rule r's key for one side; "" when the column is NULL.
func (c *refChange) key(r *actionRule, newSide bool) (string, error) {
	idx := colIndex(c.rel, r.col)
	v, st := c.value(newSide, idx)
	switch st {
	case valUnknown:
		return "", fmt.Errorf("%s of %s: the change does not carry column %s", c.op, c.rel.RelationName, r.col)
	case valNull:
		return "", nil
	}
	return r.prefix + v, nil
}

func (a *actionsRef) change(relID uint32, op string, old *pglogrepl.TupleData, oldKind uint8, new *pglogrepl.TupleData) error {
	rel := a.rels[relID]
	if rel == nil {
		return fmt.Errorf("%s of unknown relation %d", op, relID)
	}
	a.changes++
	c := &refChange{rel: rel, op: op, old: old, new: new, oldKind: oldKind}
	table := rel.Namespace + "." + rel.RelationName
	for i := range actionRuleList {
		r := &actionRuleList[i]
		if r.table != rel.RelationName {
			continue
		}
		var oldKey, newKey string
		var err error
		if op != "insert" {
			if oldKey, err = c.key(r, false); err != nil {
				return err
			}
		}
		if op != "delete" {
			if newKey, err = c.key(r, true); err != nil {
				return err
			}
		}
		var all []string
		for _, k := range []string{oldKey, newKey} {
			if k != "" && !slices.Contains(all, k) {
				all = append(all, k)
			}
		}
		for _, k := range all {
			if a.versions[k+":v"] < a.lsn {
				a.versions[k+":v"] = a.lsn
			}
		}
		for _, k := range all {
			a.cur.add(table + "|" + op + "|" + k)
		}
		if !r.refresh {
			continue
		}
		if oldKey != "" && oldKey != newKey {
			a.refresh[oldKey] = refDeleted
		}
		if newKey != "" {
			st := refWritten
			for ci, col := range rel.Columns {
				if r.cols != nil && !slices.Contains(r.cols, col.Name) {
					continue
				}
				if _, vs := c.value(true, ci); vs == valUnknown {
					st = refFallback
					a.fallbacks++
					break
				}
			}
			a.refresh[newKey] = st
		}
	}
	return nil
}

// truncate applies a TRUNCATE: the rules' patterns delete their keys (and
// the version keys, which the patterns match too), and the event lists
// the patterns.
func (a *actionsRef) truncate(rel *pglogrepl.RelationMessage) {
	a.truncates++
	table := rel.Namespace + "." + rel.RelationName
	for i := range actionRuleList {
		r := &actionRuleList[i]
		if r.table != rel.RelationName {
			continue
		}
		for k := range a.refresh {
			if strings.HasPrefix(k, r.prefix) {
				a.refresh[k] = refDeleted
			}
		}
		for k := range a.versions {
			if strings.HasPrefix(k, r.prefix) {
				delete(a.versions, k)
			}
		}
		a.cur.add(table + "|truncate|" + r.prefix + "*")
	}
}

// eventParts lays out the stream event of one transaction as the README
// describes it: its (table, op, key) in the order of the changes, unique
// within a part, a new part once one holds 1,000.
type eventParts struct {
	parts [][]string
	cur   []string
	seen  map[string]bool
}

func (e *eventParts) add(t string) {
	if e.seen[t] {
		return
	}
	if len(e.cur) >= messageKeys {
		e.parts = append(e.parts, e.cur)
		e.cur = nil
		clear(e.seen)
	}
	e.seen[t] = true
	e.cur = append(e.cur, t)
}

func (e *eventParts) done() [][]string {
	if len(e.cur) > 0 {
		e.parts = append(e.parts, e.cur)
	}
	return e.parts
}

// ---- samples of the version keys

// versionKeys reads every version key of the action rules.
func (f *fixture) versionKeys(ctx context.Context) (map[string]string, error) {
	var keys []string
	iter := f.rdb.Scan(ctx, 0, "*:v", 1000).Iterator()
	for iter.Next(ctx) {
		if k := iter.Val(); isActionKey(k) {
			keys = append(keys, k)
		}
	}
	if err := iter.Err(); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(keys))
	for i := 0; i < len(keys); i += 500 {
		batch := keys[i:min(i+500, len(keys))]
		vals, err := f.rdb.MGet(ctx, batch...).Result()
		if err != nil {
			return nil, err
		}
		for j, k := range batch {
			if v, ok := vals[j].(string); ok {
				out[k] = v
			}
		}
	}
	return out, nil
}

// sample reads every version key and compares it with the previous
// sample: a key present in both must not have gone down (one may vanish:
// a TRUNCATE's pattern deletes it). Take samples before and after faults.
func (a *actionsRef) sample() {
	a.f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vals, err := a.f.versionKeys(ctx)
	if err != nil {
		a.f.t.Fatalf("sample version keys: %v", err)
	}
	now := make(map[string]pglogrepl.LSN, len(vals))
	for k, v := range vals {
		l, err := pglogrepl.ParseLSN(v)
		if err != nil {
			a.lowered = append(a.lowered, fmt.Sprintf("%s: %q is not an LSN", k, v))
			continue
		}
		now[k] = l
		if prev, ok := a.lastSample[k]; ok && l < prev {
			a.lowered = append(a.lowered, fmt.Sprintf("%s: %s, earlier sample %s", k, l, prev))
		}
	}
	a.lastSample = now
	a.samples++
}

// ---- the checker

type actionsResult struct {
	refreshed, versions      int // keys compared
	entries, txns, multiPart int // stream entries, their transactions, those in parts
	maxParts                 int
	problems                 map[string][]string // kind -> descriptions
}

// Problem kinds.
const (
	pRefreshStale   = "refresh: value differs from the row"
	pRefreshGone    = "refresh: value of a row that does not exist"
	pRefreshMissing = "refresh: no value for a row its last change wrote"
	pRefreshExtra   = "refresh: value where the last change deleted or could not write"
	pRefreshBad     = "refresh: not a JSON object"
	pVersionWrong   = "version: not the highest commit LSN of its row"
	pVersionMissing = "version: missing"
	pVersionExtra   = "version: no change raised it"
	pVersionLowered = "version: went down between two samples"
	pStreamID       = "stream: ID, lsn field or event disagree"
	pStreamDup      = "stream: (lsn, part) twice"
	pStreamGap      = "stream: parts not 0..n-1 with last on n-1"
	pStreamPart     = "stream: part over 1000 keys or with a key twice"
	pStreamMissing  = "stream: transaction missing"
	pStreamExtra    = "stream: transaction the reference does not know"
	pStreamContent  = "stream: keys differ from the transaction's"
	pUnknownKey     = "unknown key in the actions' namespaces"
)

func (r *actionsResult) add(kind, format string, args ...any) {
	if r.problems == nil {
		r.problems = map[string][]string{}
	}
	r.problems[kind] = append(r.problems[kind], fmt.Sprintf(format, args...))
}

func (r actionsResult) total() int {
	n := 0
	for _, l := range r.problems {
		n += len(l)
	}
	return n
}

func (r actionsResult) kinds() []string {
	var ks []string
	for k := range r.problems {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (r actionsResult) String() string {
	s := fmt.Sprintf("actions: %d refreshed keys, %d version keys, %d stream entries of %d transactions (%d in parts, up to %d) compared with the reference, %d problems",
		r.refreshed, r.versions, r.entries, r.txns, r.multiPart, r.maxParts, r.total())
	for _, k := range r.kinds() {
		s += fmt.Sprintf("; %s: %d", k, len(r.problems[k]))
	}
	return s
}

// details lists up to n examples of each kind.
func (r actionsResult) details(n int) string {
	var b strings.Builder
	for _, k := range r.kinds() {
		l := r.problems[k]
		fmt.Fprintf(&b, "\n  %s (%d):", k, len(l))
		for _, d := range l[:min(n, len(l))] {
			fmt.Fprintf(&b, "\n    %s", d)
		}
	}
	return b.String()
}

// dbRows reads every row of the refreshed tables as to_jsonb gives it (the
// refresh JSON's types: numbers, booleans and jsonb as JSON, NULL as null,
// text as strings), in one snapshot, by key.
func (f *fixture) dbRows(ctx context.Context) (map[string]map[string]any, error) {
	out := map[string]map[string]any{}
	err := pgx.BeginTxFunc(ctx, f.db, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		for _, r := range actionRuleList {
			if !r.refresh {
				continue
			}
			rows, err := tx.Query(ctx, `SELECT id::text, to_jsonb(t)::text FROM `+r.table+` t`)
			if err != nil {
				return err
			}
			var id, doc string
			_, err = pgx.ForEachRow(rows, []any{&id, &doc}, func() error {
				m, err := decodeObject(doc)
				if err != nil {
					return fmt.Errorf("%s %s: %v", r.table, id, err)
				}
				if r.cols != nil {
					for k := range m {
						if !slices.Contains(r.cols, k) {
							delete(m, k)
						}
					}
				}
				out[r.prefix+id] = m
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

func decodeObject(s string) (map[string]any, error) {
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, fmt.Errorf("not an object: %.80s", s)
	}
	return m, nil
}

// rowDiff compares a refreshed value with the row, field by field.
func rowDiff(got, want map[string]any) string {
	var diffs []string
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("%s missing (database %s)", k, short(w)))
		} else if !reflect.DeepEqual(g, w) {
			diffs = append(diffs, fmt.Sprintf("%s: cached %s, database %s", k, short(g), short(w)))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: cached %s, not a refreshed column", k, short(g)))
		}
	}
	sort.Strings(diffs)
	return strings.Join(diffs, ", ")
}

func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 60 {
		return string(b[:57]) + "..."
	}
	return string(b)
}

// refreshRule is the refresh rule whose keys key belongs to.
func refreshRule(key string) *actionRule {
	for i := range actionRuleList {
		r := &actionRuleList[i]
		if r.refresh && strings.HasPrefix(key, r.prefix) {
			if _, err := strconv.ParseInt(key[len(r.prefix):], 10, 64); err == nil {
				return r
			}
		}
	}
	return nil
}

// versionBase reports whether key is a version key of a rule's key.
func versionBase(key string) bool {
	base, ok := strings.CutSuffix(key, ":v")
	if !ok {
		return false
	}
	for _, r := range actionRuleList {
		if strings.HasPrefix(base, r.prefix) && len(base) > len(r.prefix) {
			return true
		}
	}
	return false
}

// checkActions compares the actions' keys and stream with the reference
// and the database. The caller has made the system quiescent (quiesce).
func (a *actionsRef) checkActions() actionsResult {
	a.f.t.Helper()
	a.consume()
	f := a.f
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var r actionsResult
	for _, d := range a.lowered {
		r.add(pVersionLowered, "%s", d)
	}
	a.lowered = nil
	rows, err := f.dbRows(ctx)
	if err != nil {
		f.t.Fatalf("check actions: read rows: %v", err)
	}
	var keys []string
	iter := f.rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		if k := iter.Val(); isActionKey(k) && k != actionStream {
			keys = append(keys, k)
		}
	}
	if err := iter.Err(); err != nil {
		f.t.Fatalf("check actions: scan: %v", err)
	}
	sort.Strings(keys)
	seen := map[string]bool{}
	for i := 0; i < len(keys); i += 500 {
		batch := keys[i:min(i+500, len(keys))]
		vals, err := f.rdb.MGet(ctx, batch...).Result()
		if err != nil {
			f.t.Fatalf("check actions: mget: %v", err)
		}
		for j, k := range batch {
			got, ok := vals[j].(string)
			if !ok {
				continue
			}
			seen[k] = true
			switch {
			case versionBase(k):
				r.versions++
				want, known := a.versions[k]
				l, err := pglogrepl.ParseLSN(got)
				switch {
				case err != nil:
					r.add(pVersionWrong, "%s: %q is not an LSN", k, got)
				case !known:
					r.add(pVersionExtra, "%s: %s", k, got)
				case l != want:
					r.add(pVersionWrong, "%s: %s, reference %s", k, got, want)
				}
			case refreshRule(k) != nil:
				r.refreshed++
				row, exists := rows[k]
				st := a.refresh[k]
				m, err := decodeObject(got)
				switch {
				case err != nil:
					r.add(pRefreshBad, "%s: %v: %.80s", k, err, got)
				case !exists:
					r.add(pRefreshGone, "%s: %.80s (reference: %s)", k, got, stateText(st))
				case st != refWritten:
					if d := rowDiff(m, row); d != "" {
						r.add(pRefreshStale, "%s: %s (reference: %s)", k, d, stateText(st))
					} else {
						r.add(pRefreshExtra, "%s: the row, but the reference says %s", k, stateText(st))
					}
				default:
					if d := rowDiff(m, row); d != "" {
						r.add(pRefreshStale, "%s: %s", k, d)
					}
				}
			default:
				r.add(pUnknownKey, "%s", k)
			}
		}
	}
	for k, st := range a.refresh {
		if st == refWritten && !seen[k] {
			_, exists := rows[k]
			r.add(pRefreshMissing, "%s (row exists: %v)", k, exists)
		}
	}
	for k, l := range a.versions {
		if !seen[k] {
			r.add(pVersionMissing, "%s (reference %s)", k, l)
		}
	}
	a.checkStream(ctx, &r)
	for _, l := range r.problems {
		sort.Strings(l)
	}
	return r
}

func stateText(st refreshState) string {
	switch st {
	case refWritten:
		return "written"
	case refDeleted:
		return "deleted"
	case refFallback:
		return "not written: a refreshed column was not in the change"
	}
	return "never changed"
}

type streamEvent struct {
	LSN     string `json:"lsn"`
	Part    *int   `json:"part"`
	Last    *bool  `json:"last"`
	Changes []struct {
		Table    string   `json:"table"`
		Op       string   `json:"op"`
		Keys     []string `json:"keys"`
		Patterns []string `json:"patterns"`
	} `json:"changes"`
}

// readStream reads the whole stream.
func (f *fixture) readStream(ctx context.Context) ([]redis.XMessage, error) {
	var all []redis.XMessage
	start := "-"
	for {
		msgs, err := f.rdb.XRangeN(ctx, actionStream, start, "+", 5000).Result()
		if err != nil {
			return nil, err
		}
		all = append(all, msgs...)
		if len(msgs) < 5000 {
			return all, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

func (a *actionsRef) checkStream(ctx context.Context, r *actionsResult) {
	msgs, err := a.f.readStream(ctx)
	if err != nil {
		a.f.t.Fatalf("check actions: read stream: %v", err)
	}
	r.entries = len(msgs)
	type part struct {
		id   string
		last bool
	}
	parts := map[pglogrepl.LSN][]part{}     // by the event's lsn, in stream order
	content := map[string]map[string]bool{} // entry ID -> its "table|op|key"
	var order []pglogrepl.LSN
	var prevMS, prevSeq uint64
	for i, m := range msgs {
		msStr, seqStr, _ := strings.Cut(m.ID, "-")
		ms, err1 := strconv.ParseUint(msStr, 10, 64)
		seq, err2 := strconv.ParseUint(seqStr, 10, 64)
		if err1 != nil || err2 != nil {
			r.add(pStreamID, "entry %s: malformed ID", m.ID)
			continue
		}
		if i > 0 && (ms < prevMS || (ms == prevMS && seq <= prevSeq)) {
			r.add(pStreamID, "entry %s after %d-%d: IDs not increasing", m.ID, prevMS, prevSeq)
		}
		prevMS, prevSeq = ms, seq
		idLSN := pglogrepl.LSN(ms).String()
		field, _ := m.Values["lsn"].(string)
		body, _ := m.Values["event"].(string)
		var ev streamEvent
		if err := json.Unmarshal([]byte(body), &ev); err != nil || ev.Part == nil || ev.Last == nil {
			r.add(pStreamID, "entry %s: event not as documented (%v): %.100s", m.ID, err, body)
			continue
		}
		if field != idLSN || ev.LSN != idLSN || uint64(*ev.Part) != seq {
			r.add(pStreamID, "entry %s (LSN %s, part %d): lsn field %q, event lsn %q part %d", m.ID, idLSN, seq, field, ev.LSN, *ev.Part)
		}
		lsn, err := pglogrepl.ParseLSN(ev.LSN)
		if err != nil {
			r.add(pStreamID, "entry %s: event lsn %q", m.ID, ev.LSN)
			continue
		}
		if _, ok := parts[lsn]; !ok {
			order = append(order, lsn)
		}
		ps := parts[lsn]
		switch {
		case *ev.Part < 0:
			r.add(pStreamID, "entry %s: part %d", m.ID, *ev.Part)
			continue
		case *ev.Part < len(ps):
			r.add(pStreamDup, "entry %s: part %d of %s again (first as %s)", m.ID, *ev.Part, ev.LSN, ps[*ev.Part].id)
			continue
		case *ev.Part > len(ps):
			r.add(pStreamGap, "entry %s: part %d of %s follows part %d", m.ID, *ev.Part, ev.LSN, len(ps)-1)
		}
		for len(ps) < *ev.Part {
			ps = append(ps, part{id: "(missing)"})
		}
		parts[lsn] = append(ps, part{id: m.ID, last: *ev.Last})
		n, inPart := 0, map[string]bool{}
		content[m.ID] = inPart
		for _, c := range ev.Changes {
			ks, op := c.Keys, c.Op
			if op == "truncate" {
				ks = c.Patterns
			}
			for _, k := range ks {
				n++
				t := c.Table + "|" + op + "|" + k
				if inPart[t] {
					r.add(pStreamPart, "entry %s: %s twice", m.ID, t)
				}
				inPart[t] = true
			}
		}
		if n > messageKeys {
			r.add(pStreamPart, "entry %s: %d keys", m.ID, n)
		}
	}
	r.txns = len(order)
	for _, lsn := range order {
		ps := parts[lsn]
		if len(ps) > 1 {
			r.multiPart++
		}
		r.maxParts = max(r.maxParts, len(ps))
		for i, p := range ps {
			if p.last != (i == len(ps)-1) {
				r.add(pStreamGap, "transaction %s: part %d of %d (%s) has last=%v", lsn, i, len(ps), p.id, p.last)
			}
		}
		want, ok := a.txns[lsn]
		if !ok {
			r.add(pStreamExtra, "transaction %s (%d parts, first %s)", lsn, len(ps), ps[0].id)
			continue
		}
		if len(ps) != len(want) {
			r.add(pStreamContent, "transaction %s: %d parts, reference %d", lsn, len(ps), len(want))
		}
		for i := range min(len(ps), len(want)) {
			w := map[string]bool{}
			for _, t := range want[i] {
				w[t] = true
			}
			if d := setDiff(content[ps[i].id], w); d != "" {
				r.add(pStreamContent, "transaction %s part %d (%s): %s", lsn, i, ps[i].id, d)
			}
		}
	}
	for lsn, want := range a.txns {
		if _, ok := parts[lsn]; !ok {
			r.add(pStreamMissing, "transaction %s (%d parts, %d keys in the first)", lsn, len(want), len(want[0]))
		}
	}
}

// setDiff describes how got differs from want ("" if equal).
func setDiff(got, want map[string]bool) string {
	var extra, missing []string
	for k := range got {
		if !want[k] {
			extra = append(extra, k)
		}
	}
	for k := range want {
		if !got[k] {
			missing = append(missing, k)
		}
	}
	if len(extra) == 0 && len(missing) == 0 {
		return ""
	}
	sort.Strings(extra)
	sort.Strings(missing)
	return fmt.Sprintf("%d missing %q, %d extra %q", len(missing), missing[:min(3, len(missing))], len(extra), extra[:min(3, len(extra))])
}

// check runs checkActions after a cycle and records it.
func (a *actionsRef) check(sc *scenario, label string) actionsResult {
	a.f.t.Helper()
	r := a.checkActions()
	sc.recordActions(fmt.Sprintf("%s [reference: %d transactions, %d changes, %d refresh fallbacks, %d TRUNCATE, %d version samples]",
		label, a.decoded, a.changes, a.fallbacks, a.truncates, a.samples), r)
	return r
}

// ---- scenarios

// TestActionsKill9AtRandomMoments runs TestKill9AtRandomMoments with the
// action rules (refresh, version, stream; large transactions streamed
// while in progress, so their events come in parts), samples the version
// keys before each kill and after each restart, and after each run checks
// the actions exactly against the reference. At the end, the checker's own
// negative control: planted faults (a wrong and a missing refreshed value,
// a lowered version, a duplicate and a missing stream entry) must be found.
func TestActionsKill9AtRandomMoments(t *testing.T) {
	sc := newScenario(t, "actions refresh, version, stream: kill -9 at random moments", "actions applied in commit order, idempotent under replay", false)
	f := newFixture(t, fixtureOpts{bigRows: 10000, actions: true})
	rng := rngFor(t)
	p := f.startStreaming()
	ref := f.newActionsRef()
	o := defaultLoad
	o.bulk, o.bulkRows, o.bulkHold = 1, [2]int{500, 3000}, 200*time.Millisecond
	for i := 1; i <= runs(2); i++ {
		f.cycle(sc, rng, o, fmt.Sprintf("run %d", i), func(l *load) {
			p = f.kill9Round(sc, rng, p, ref.sample)
		}, nil)
		ref.check(sc, fmt.Sprintf("run %d", i))
	}
	actionsSelfTest(t, sc, ref)
}

// actionsSelfTest is the actions checker's negative control, after the
// last check (the system is quiescent and the check was clean): it plants
// one fault of each kind and requires the checker to report each.
func actionsSelfTest(t *testing.T, sc *scenario, ref *actionsRef) {
	t.Helper()
	f := ref.f
	ctx := context.Background()
	pick := func(prefix string, skip string) string {
		var ks []string
		for k, st := range ref.refresh {
			if st == refWritten && strings.HasPrefix(k, prefix) && k != skip {
				ks = append(ks, k)
			}
		}
		if len(ks) == 0 {
			t.Fatalf("actions self-test: no refreshed key %s*", prefix)
		}
		sort.Strings(ks)
		return ks[0]
	}
	// A stale refreshed value: one field of a row changed.
	stale := pick("r:order:", "")
	v, err := f.rdb.Get(ctx, stale).Result()
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeObject(v)
	if err != nil {
		t.Fatal(err)
	}
	m["note"] = fmt.Sprint(m["note"]) + "-stale"
	b, _ := json.Marshal(m)
	// A missing refreshed value, and a version key lowered below the
	// commit that raised it.
	missing := pick("r:user:", "")
	lowered := pick("r:order:", stale) + ":v"
	if _, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, stale, b, 0)
		p.Del(ctx, missing)
		p.Set(ctx, lowered, "0/1", 0)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A transaction's entry written again (a replay that was not refused),
	// and a part of a transaction in parts deleted (a gap); without one in
	// parts, a whole entry.
	msgs, err := f.readStream(ctx)
	if err != nil || len(msgs) < 2 {
		t.Fatalf("actions self-test: stream: %d entries, %v", len(msgs), err)
	}
	gap := msgs[0].ID
	for _, m := range msgs {
		if strings.HasSuffix(m.ID, "-1") {
			gap = m.ID
			break
		}
	}
	txnOf := func(id string) string { ms, _, _ := strings.Cut(id, "-"); return ms }
	dup := msgs[len(msgs)/2]
	for i := len(msgs) / 2; txnOf(dup.ID) == txnOf(gap); i = (i + 1) % len(msgs) {
		dup = msgs[i]
	}
	if err := f.rdb.XAdd(ctx, &redis.XAddArgs{Stream: actionStream, ID: "*", Values: []any{"lsn", dup.Values["lsn"], "event", dup.Values["event"]}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.rdb.XDel(ctx, actionStream, gap).Err(); err != nil {
		t.Fatal(err)
	}
	r := ref.checkActions()
	t.Logf("actions self-test: planted a stale value (%s), a missing value (%s), a lowered version (%s), a duplicate entry (of %s) and a deleted entry (%s); checker: %s%s",
		stale, missing, lowered, dup.ID, gap, r, r.details(2))
	want := map[string]bool{pRefreshStale: false, pRefreshMissing: false, pVersionWrong: false, pStreamDup: false}
	gapKind := pStreamGap
	if !strings.HasSuffix(gap, "-1") {
		gapKind = pStreamMissing
	}
	want[gapKind] = false
	for k := range want {
		if len(r.problems[k]) == 0 {
			t.Errorf("actions self-test: planted %q, the checker did not report it", k)
		}
	}
	if n := len(r.problems[pRefreshStale]) + len(r.problems[pRefreshMissing]) + len(r.problems[pVersionWrong]); n != 3 {
		t.Errorf("actions self-test: 3 planted key faults, checker found %d", n)
	}
	if !t.Failed() {
		sc.note("actions checker self-test: 5 planted faults (stale and missing refreshed value, lowered version, duplicate and deleted stream entry), all found")
	}
}
