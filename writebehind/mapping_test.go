package writebehind

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseTemplate(t *testing.T) {
	for _, c := range []struct {
		in      string
		lits    []string
		cols    []string
		wantErr string
	}{
		{in: "post:{id}:views", lits: []string{"post:", ":views"}, cols: []string{"id"}},
		{in: "{id}", lits: []string{"", ""}, cols: []string{"id"}},
		{in: "s:{board}:{player}", lits: []string{"s:", ":", ""}, cols: []string{"board", "player"}},
		{in: "", wantErr: "empty"},
		{in: "post:views", wantErr: "no {column}"},
		{in: "a:{id", wantErr: "not closed"},
		{in: "a:id}", wantErr: "without '{'"},
		{in: "a:{}", wantErr: "not a column name"},
		{in: "a:{1x}", wantErr: "not a column name"},
		{in: "a:{x-y}", wantErr: "not a column name"},
		{in: "a:{x}{y}", wantErr: "separated by literal"},
		{in: "a:{x}:{x}", wantErr: "appears twice"},
	} {
		got, err := parseTemplate(c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("parseTemplate(%q) err = %v, want %q", c.in, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseTemplate(%q): %v", c.in, err)
			continue
		}
		if !slices.Equal(got.lits, c.lits) || !slices.Equal(got.cols, c.cols) {
			t.Errorf("parseTemplate(%q) = %q %q, want %q %q", c.in, got.lits, got.cols, c.lits, c.cols)
		}
	}
}

func TestTemplateMatch(t *testing.T) {
	for _, c := range []struct {
		tmpl, key string
		want      []string // nil: no match
	}{
		{"post:{id}:views", "post:42:views", []string{"42"}},
		{"post:{id}:views", "post:42:likes", nil},
		{"post:{id}:views", "post::views", nil}, // empty value
		{"post:{id}:views", "post:4:2:views", []string{"4:2"}},
		{"post:{id}:views", "post:42:views:x", nil},
		{"post:{id}:views", "xpost:42:views", nil},
		{"s:{board}:{player}", "s:daily:ann", []string{"daily", "ann"}},
		{"s:{board}:{player}", "s:daily:ann:x", []string{"daily", "ann:x"}}, // a value ends at the next literal
		{"s:{board}:{player}", "s:daily:", nil},
		{"{id}", "anything", []string{"anything"}},
		{"{id}:v", ":v", nil},
	} {
		tm, err := parseTemplate(c.tmpl)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := tm.match(c.key)
		if ok != (c.want != nil) || !slices.Equal(got, c.want) {
			t.Errorf("%q.match(%q) = %q, %v; want %q", c.tmpl, c.key, got, ok, c.want)
		}
	}
}

// FuzzTemplate: parsing never panics; a parsed template renders values
// (without the literal that follows them) into a key that matches back to
// the same values, and its glob intersects itself.
func FuzzTemplate(f *testing.F) {
	for _, s := range []string{"post:{id}:views", "{a}", "s:{b}:{p}", "x{", "{a}{b}", "}{", "a:\\*{x}"} {
		f.Add(s, "v1", "v2")
	}
	f.Fuzz(func(t *testing.T, tmpl, v1, v2 string) {
		tm, err := parseTemplate(tmpl)
		if err != nil {
			return
		}
		vals := []string{v1, v2}
		var b strings.Builder
		b.WriteString(tm.lits[0])
		for i := range tm.cols {
			v := vals[i%2]
			// Documented as unsupported: a value holding the literal that
			// follows it, or whose end begins that literal early (value "0"
			// before the literal "00" renders "000", where the literal is
			// found at the value's start).
			if next := tm.lits[i+1]; next != "" && (strings.Contains(v, next) || strings.Index(v+next, next) != len(v)) {
				return
			}
			if v == "" {
				return
			}
			b.WriteString(v)
			b.WriteString(tm.lits[i+1])
		}
		got, ok := tm.match(b.String())
		if !ok {
			t.Fatalf("%q did not match its own rendering %q", tmpl, b.String())
		}
		for i := range tm.cols {
			if got[i] != vals[i%2] {
				t.Fatalf("%q: value %d of %q = %q, want %q", tmpl, i, b.String(), got[i], vals[i%2])
			}
		}
		g := globTokens(tm.glob())
		if !globsIntersect(g, g) {
			t.Fatalf("glob %q does not intersect itself", tm.glob())
		}
	})
}

func TestCompileMappings(t *testing.T) {
	ok := Mapping{Key: "c:{id}", Table: "s.counters", Column: "n", Mode: Add}
	if _, err := compileMappings([]Mapping{ok}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ms   []Mapping
		want string
	}{
		{nil, "no mappings"},
		{[]Mapping{{Key: "c:{id}", Table: "t", Column: "n"}}, "Mode"},
		{[]Mapping{{Key: "c:{id}", Table: "a.b.c", Column: "n", Mode: Add}}, "schema.table"},
		{[]Mapping{{Key: "c:{id}", Table: "t", Column: "id", Mode: Add}}, "also a key column"},
		{[]Mapping{{Key: "c:{id}", Table: "t", Column: "n x", Mode: Add}}, "not a column name"},
		{[]Mapping{ok, ok}, "declared twice"},
		{[]Mapping{ok, {Key: "d:{id}", Table: "s.counters", Column: "n", Mode: Add}}, "one column, one key family"},
	} {
		if _, err := compileMappings(c.ms); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("compileMappings(%v) err = %v, want %q", c.ms, err, c.want)
		}
	}
}

func TestAggregate(t *testing.T) {
	ms, err := compileMappings([]Mapping{
		{Key: "post:{id}:views", Table: "post_stats", Column: "views", Mode: Add},
		{Key: "post:{id}:title", Table: "post_stats", Column: "title", Mode: Set},
		{Key: "s:{board}:{player}", Table: "scores", Column: "score", Mode: Add},
	})
	if err != nil {
		t.Fatal(err)
	}
	post := &tableInfo{qualified: `"public"."post_stats"`, keyCols: []string{"id"}, keyPos: map[string]int{"id": 0}}
	scores := &tableInfo{qualified: `"public"."scores"`, keyCols: []string{"board", "player"}, keyPos: map[string]int{"board": 0, "player": 1}}
	tables := []*tableInfo{post, post, scores}
	max := strconv.FormatInt(math.MaxInt64, 10)
	entries := []entry{
		{ops: []rawOp{{"post:1:views", "1"}, {"post:1:title", "a"}, {"post:1:views", "2"}}},
		{ops: []rawOp{{"post:2:views", "5"}, {"post:1:title", "b"}}},
		{ops: []rawOp{{"s:day:ann", max}, {"s:day:ann", max}}}, // beyond int64: exact
		{ops: []rawOp{{"s:day:bob", "-3"}}},
	}
	rows, ops, err := aggregate(ms, tables, entries)
	if err != nil {
		t.Fatal(err)
	}
	if ops != 8 {
		t.Errorf("ops = %d, want 8", ops)
	}
	var got []string
	for _, r := range rows {
		var cols []string
		for _, c := range r.cols {
			if c.mode == Add {
				cols = append(cols, c.col+"+="+c.sum.String())
			} else {
				cols = append(cols, c.col+"="+c.value)
			}
		}
		got = append(got, r.table.qualified+strings.Join(r.keyVals, ",")+" "+strings.Join(cols, " "))
	}
	want := []string{
		`"public"."post_stats"1 title=b views+=3`,
		`"public"."post_stats"2 views+=5`,
		`"public"."scores"day,ann score+=18446744073709551614`,
		`"public"."scores"day,bob score+=-3`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("aggregate:\n got %q\nwant %q", got, want)
	}
	if _, _, err := aggregate(ms, tables, []entry{{ops: []rawOp{{"other:1", "1"}}}}); err == nil {
		t.Error("an unmapped key in the stream was not an error")
	}
	if _, _, err := aggregate(ms, tables, []entry{{ops: []rawOp{{"post:1:views", "x"}}}}); err == nil {
		t.Error("a non-integer delta was not an error")
	}
}

func TestUpsertSQL(t *testing.T) {
	ti := &tableInfo{qualified: `"public"."scores"`, keyCols: []string{"board", "player"}, keyPos: map[string]int{"board": 0, "player": 1},
		types: map[string]string{"board": "text", "player": "text", "score": "bigint", "name": "character varying(20)"}, sql: map[string]string{}}
	rw := &rowWrite{table: ti, keyVals: []string{"day", "ann"}, cols: []colWrite{{col: "name", mode: Set, value: "Ann"}, {col: "score", mode: Add}}}
	rw.cols[1].sum.add(7)
	sql, args := ti.upsert(rw)
	want := `INSERT INTO "public"."scores" AS t ("board", "player", "name", "score") VALUES ($1::text::text, $2::text::text, $3::text::character varying(20), $4::text::bigint) ON CONFLICT ("board", "player") DO UPDATE SET "name" = EXCLUDED."name", "score" = COALESCE(t."score", 0) + EXCLUDED."score"`
	if sql != want {
		t.Errorf("upsert:\n got %s\nwant %s", sql, want)
	}
	if !slices.Equal(args, []any{"day", "ann", "Ann", "7"}) {
		t.Errorf("args = %q", args)
	}
}

func TestGlobsIntersect(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"post:*:views", "post:*", true},
		{"post:*:views", "post:*:row", false},
		{"post:*:views", "*", true},
		{"post:*:views", "user:*", false},
		{"counter:*", "count*", true},
		{"counter:*", "counter:\\*", true},
		{"a\\*b", "a*b", true},
		{"a\\*b", "acb", false},
		{"score:*:*", "score:*", true},
		{"x:*:y", "*:z", false},
		{"", "", true},
		{"a", "", false},
	} {
		if got := globsIntersect(globTokens(c.a), globTokens(c.b)); got != c.want {
			t.Errorf("globsIntersect(%q, %q) = %v, want %v", c.a, c.b, got, c.want)
		}
		if got := globsIntersect(globTokens(c.b), globTokens(c.a)); got != c.want {
			t.Errorf("globsIntersect(%q, %q) = %v, want %v (symmetry)", c.b, c.a, got, c.want)
		}
	}
}

func TestParseEntries(t *testing.T) {
	resp2 := []any{[]any{"s", []any{
		[]any{"1-0", []any{"k", "1", "k", "2"}},
		[]any{"2-5", nil},
	}}}
	resp3 := map[any]any{"s": resp2[0].([]any)[1]}
	for name, v := range map[string]any{"resp2": resp2, "resp3": resp3} {
		es, err := parseReadGroup(v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(es) != 2 || es[0].id != (streamID{1, 0}) || len(es[0].ops) != 2 || es[0].ops[1] != (rawOp{"k", "2"}) || !es[1].deleted {
			t.Errorf("%s: %+v", name, es)
		}
	}
	if es, err := parseReadGroup(nil); err != nil || es != nil {
		t.Errorf("nil reply: %v, %v", es, err)
	}
	for _, bad := range []any{[]any{[]any{"1-0", []any{"k"}}}, []any{[]any{"x", []any{}}}, []any{"x"}} {
		if _, err := parseEntries(bad); err == nil {
			t.Errorf("parseEntries(%v) accepted", bad)
		}
	}
	if id, err := parseStreamID("1700000000000-3"); err != nil || id.String() != "1700000000000-3" || !(streamID{1, 9}).less(id) {
		t.Errorf("parseStreamID: %v %v", id, err)
	}
}

func TestOptionsDefaultsAndErrors(t *testing.T) {
	var w WriterOptions
	if err := w.fill(); err != nil {
		t.Fatal(err)
	}
	if w.Stream != DefaultStream || w.MaxLen != DefaultMaxLen || w.BlockMax != DefaultBlockMax || w.MaxBatch != DefaultMaxBatch || w.WaitTimeout != DefaultWaitTimeout ||
		w.MaxInFlight != DefaultMaxInFlight || w.TokenTTL != DefaultTokenTTL || w.NoCombine {
		t.Errorf("writer defaults: %+v", w)
	}
	f := FlusherOptions{DSN: "postgres://x"}
	if err := f.fill(); err != nil {
		t.Fatal(err)
	}
	if f.Group != DefaultGroup || f.Window != DefaultWindow || f.MaxEntries != DefaultMaxEntries || f.OffsetsTable != DefaultOffsetsTable || f.Consumer == "" ||
		f.MaxRows != DefaultMaxRows || f.MaxBytes != DefaultMaxBytes {
		t.Errorf("flusher defaults: %+v", f)
	}
	for _, c := range []struct {
		fill func() error
		want string
	}{
		{(&WriterOptions{MaxLen: -1}).fill, "MaxLen must not be negative"},
		{(&WriterOptions{MaxBatch: 1001}).fill, "MaxBatch must be at most 1000"},
		{(&WriterOptions{OnFull: 7}).fill, "OnFull"},
		{(&WriterOptions{BlockMax: -time.Second}).fill, "BlockMax must not be negative"},
		{(&WriterOptions{MaxInFlight: -1}).fill, "MaxInFlight must not be negative"},
		{(&WriterOptions{TokenTTL: time.Microsecond}).fill, "TokenTTL must be at least 1ms"},
		{(&FlusherOptions{DSN: "x", MaxRows: -1}).fill, "MaxRows must not be negative"},
		{(&FlusherOptions{DSN: "x", MaxBytes: -1}).fill, "MaxBytes must not be negative"},
		{(&FlusherOptions{}).fill, "DSN is required"},
		{(&FlusherOptions{DSN: "x", OffsetsTable: "a.b.c"}).fill, "OffsetsTable"},
		{(&FlusherOptions{DSN: "x", Window: -1}).fill, "Window must not be negative"},
	} {
		if err := c.fill(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("err = %v, want %q", err, c.want)
		}
	}
}
