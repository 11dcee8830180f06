package mapping

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// describe renders actions compactly for comparison.
func describe(acts []replication.Action) []string {
	var out []string
	for _, a := range acts {
		s := a.Kind.String() + " " + a.Key
		switch a.Kind {
		case replication.ActSet:
			s += " " + a.Value
			if a.TTL > 0 {
				s += " ttl=" + a.TTL.String()
			}
		case replication.ActPublish, replication.ActStream:
			s += " " + a.Table + " " + opText(a.Op) + " -> " + a.Target
		case replication.ActVersion:
			if a.TTL > 0 {
				s += " ttl=" + a.TTL.String()
			}
		}
		out = append(out, s)
	}
	return out
}

func TestAppendChangeActions(t *testing.T) {
	t.Parallel()
	rel := usersRel('f')
	email := func(act Actions) Rule {
		r := usersRule(t, false, "user:{id}", "user:email:{email}")
		r.Actions = act
		return r
	}
	upd := update(rel, 'O', tup(txt("1"), txt("old@x"), txt("b")), tup(txt("1"), txt("new@x"), txt("b")))
	for _, tc := range []struct {
		name     string
		rule     Rule
		ch       *replication.Change
		wantKeys []string
		wantActs []string
	}{
		{
			name:     "zero actions delete with the sink's command",
			rule:     email(Actions{}),
			ch:       upd,
			wantKeys: []string{"user:1", "user:email:old@x", "user:email:new@x"},
		},
		{
			name:     "delete listed with del command",
			rule:     email(Actions{Delete: true, DeleteCommand: replication.ActDel}),
			ch:       upd,
			wantActs: []string{"del user:1", "del user:email:old@x", "del user:email:new@x"},
		},
		{
			name:     "version before delete, one per key of old and new row",
			rule:     email(Actions{Delete: true, Version: true, VersionKey: "v:{key}", VersionTTL: time.Hour}),
			ch:       upd,
			wantKeys: []string{"user:1", "user:email:old@x", "user:email:new@x"},
			wantActs: []string{"version v:user:1 ttl=1h0m0s", "version v:user:email:old@x ttl=1h0m0s", "version v:user:email:new@x ttl=1h0m0s"},
		},
		{
			name:     "version without delete keeps the keys",
			rule:     email(Actions{Version: true}),
			ch:       insert(rel, tup(txt("2"), txt("a@x"), null)),
			wantActs: []string{"version user:2:v", "version user:email:a@x:v"},
		},
		{
			name:     "publish and stream carry table and op",
			rule:     email(Actions{Publish: true, PublishChannel: "ch", Stream: true, StreamKey: "st", StreamMaxLen: 10}),
			ch:       del(rel, 'O', tup(txt("3"), txt("c@x"), null)),
			wantActs: []string{"publish user:3 public.users delete -> ch", "publish user:email:c@x public.users delete -> ch", "stream user:3 public.users delete -> st", "stream user:email:c@x public.users delete -> st"},
		},
		{
			name:     "refresh insert writes the row",
			rule:     email(Actions{Refresh: true, RefreshTTL: time.Minute}),
			ch:       insert(rel, tup(txt("4"), txt("d@x"), null)),
			wantActs: []string{`refresh user:4 {"id":4,"email":"d@x","bio":null} ttl=1m0s`, `refresh user:email:d@x {"id":4,"email":"d@x","bio":null} ttl=1m0s`},
		},
		{
			name:     "refresh update deletes the key the row left and writes the new ones",
			rule:     email(Actions{Refresh: true, RefreshColumns: []string{"email"}}),
			ch:       upd,
			wantActs: []string{"unlink user:email:old@x", `refresh user:1 {"email":"new@x"}`, `refresh user:email:new@x {"email":"new@x"}`},
		},
		{
			name:     "refresh delete deletes",
			rule:     email(Actions{Refresh: true}),
			ch:       del(rel, 'O', tup(txt("5"), txt("e@x"), null)),
			wantActs: []string{"unlink user:5", "unlink user:email:e@x"},
		},
		{
			name:     "generation bumps once per change",
			rule:     email(Actions{Generation: true, GenerationKey: "gen:users"}),
			ch:       upd,
			wantActs: []string{"generation gen:users"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMapper(t, tc.rule)
			if err := m.Bind(rel); err != nil {
				t.Fatal(err)
			}
			keys, acts, err := m.AppendChange(nil, nil, tc.ch)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(keys, tc.wantKeys) {
				t.Errorf("keys = %q, want %q", keys, tc.wantKeys)
			}
			if got := describe(acts); !slices.Equal(got, tc.wantActs) {
				t.Errorf("actions =\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.wantActs, "\n  "))
			}
			st := m.Stats()
			if st[0].Applied != 1 || st[0].Outputs != uint64(len(keys)+len(acts)) {
				t.Errorf("stats = %+v, want 1 applied and %d outputs", st[0], len(keys)+len(acts))
			}
		})
	}
}

// A refresh never writes a row with a value the change does not carry: an
// unchanged TOASTed column without an old image deletes the key instead.
func TestRefreshNeverWritesPlaceholder(t *testing.T) {
	t.Parallel()
	rel := usersRel('d')
	r := usersRule(t, false, "user:{id}")
	r.Actions = Actions{Refresh: true}
	m := newMapper(t, r)
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	_, acts, err := m.AppendChange(nil, nil, update(rel, 0, tup(), tup(txt("1"), txt("e"), unchanged)))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := describe(acts), []string{"unlink user:1"}; !slices.Equal(got, want) {
		t.Errorf("actions = %q, want %q", got, want)
	}
	if m.RefreshFallbacks() != 1 {
		t.Errorf("RefreshFallbacks = %d, want 1", m.RefreshFallbacks())
	}
	// Only the columns it writes matter: without bio the row is complete.
	r.Actions.RefreshColumns = []string{"id", "email"}
	m = newMapper(t, r)
	_ = m.Bind(rel)
	_, acts, _ = m.AppendChange(nil, nil, update(rel, 0, tup(), tup(txt("1"), txt("e"), unchanged)))
	if got, want := describe(acts), []string{`refresh user:1 {"id":1,"email":"e"}`}; !slices.Equal(got, want) {
		t.Errorf("actions = %q, want %q", got, want)
	}
}

func TestRowJSONTypes(t *testing.T) {
	t.Parallel()
	rel := &replication.Relation{ID: 1, Namespace: "public", Name: "t", ReplicaIdentity: 'd', Columns: []replication.Column{
		{Name: "id", Key: true, TypeOID: oidInt8}, {Name: "ok", TypeOID: oidBool}, {Name: "price", TypeOID: oidNumeric},
		{Name: "nan", TypeOID: oidFloat8}, {Name: "doc", TypeOID: oidJSONB}, {Name: "name", TypeOID: 25}, {Name: "lead0", TypeOID: oidNumeric},
	}}
	m := newMapper(t, Rule{Table: "t", Templates: mustTemplates(t, "t:{id}"), Actions: Actions{Refresh: true}})
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	_, acts, err := m.AppendChange(nil, nil, insert(rel, tup(txt("-7"), txt("t"), txt("40.50"), txt("NaN"), txt(`{"a": [1]}`), txt("a \"q\"\n"), txt("1e5"))))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":-7,"ok":true,"price":40.50,"nan":"NaN","doc":{"a": [1]},"name":"a \"q\"\n","lead0":1e5}`
	if len(acts) != 1 || acts[0].Value != want {
		t.Errorf("row = %s\nwant  %s", acts[0].Value, want)
	}
}

func TestJSONNumber(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"0": true, "-1": true, "12.50": true, "1e5": true, "1.5E-3": true, "-0.0": true,
		"": false, "-": false, "01": false, "1.": false, ".5": false, "NaN": false, "Infinity": false, "-Infinity": false, "1e": false, "1 ": false,
	} {
		if got := jsonNumber([]byte(s)); got != want {
			t.Errorf("jsonNumber(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestAppendTruncateActions(t *testing.T) {
	t.Parallel()
	rel := usersRel('d')
	scan := usersRule(t, false, "user:{id}")
	scan.Actions = Actions{Delete: true, Publish: true, PublishChannel: "ch", Generation: true, GenerationKey: "gen:a"}
	gen := usersRule(t, false, "users:page:{id}")
	gen.Actions = Actions{Generation: true, GenerationKey: "gen:b", TruncateGeneration: true}
	noTrunc := usersRule(t, false, "other:{id}")
	noTrunc.Ops = OnInsert
	m := newMapper(t, scan, gen, noTrunc)
	globs, acts := m.AppendTruncate(nil, nil, rel)
	if want := []string{"user:*"}; !slices.Equal(globs, want) {
		t.Errorf("globs = %q, want %q", globs, want)
	}
	if got, want := describe(acts), []string{"generation gen:a", "publish user:* public.users truncate -> ch", "generation gen:b"}; !slices.Equal(got, want) {
		t.Errorf("actions = %q, want %q", got, want)
	}
	if got, want := m.Generations(), []string{"gen:a", "gen:b"}; !slices.Equal(got, want) {
		t.Errorf("Generations = %q, want %q", got, want)
	}
	if got := m.AppendGlobs(nil, rel); !slices.Equal(got, []string{"user:*"}) {
		t.Errorf("AppendGlobs = %q", got)
	}
}

func TestGenerationOnlyRuleNeedsNoKeys(t *testing.T) {
	t.Parallel()
	rel := usersRel('d')
	m := newMapper(t, Rule{Table: "users", Actions: Actions{Generation: true, GenerationKey: "gen:users"}})
	if err := m.Bind(rel); err != nil {
		t.Fatal(err)
	}
	keys, acts, err := m.AppendChange(nil, nil, insert(rel, tup(txt("1"), null, null)))
	if err != nil || len(keys) != 0 || !slices.Equal(describe(acts), []string{"generation gen:users"}) {
		t.Errorf("AppendChange = %q, %q, %v", keys, describe(acts), err)
	}
	if _, err := New([]Rule{{Table: "users", Actions: Actions{Version: true}, Where: "rules[0]"}}); err == nil {
		t.Error("a version rule without keys was accepted")
	}
}

func TestRefreshColumnsBind(t *testing.T) {
	t.Parallel()
	r := usersRule(t, false, "user:{id}")
	r.Actions = Actions{Refresh: true, RefreshColumns: []string{"id", "nickname"}}
	m := newMapper(t, r)
	err := m.Bind(usersRel('d'))
	if err == nil || !strings.Contains(err.Error(), `"nickname" named in refresh_columns`) {
		t.Errorf("Bind = %v, want an error naming refresh_columns", err)
	}
}

func TestCheckVersionKey(t *testing.T) {
	t.Parallel()
	for tpl, ok := range map[string]bool{"{key}:v": true, "v:{key}": true, "{key}": false, "v": false, "{key}:{key}": false} {
		if err := CheckVersionKey(tpl); (err == nil) != ok {
			t.Errorf("CheckVersionKey(%q) = %v", tpl, err)
		}
	}
	if got := string(appendVersionKey(nil, "", "user:1")); got != "user:1:v" {
		t.Errorf("versionKey default = %q", got)
	}
}

func TestDescribeAction(t *testing.T) {
	t.Parallel()
	for _, a := range []replication.Action{
		{Kind: replication.ActUnlink, Key: "k"}, {Kind: replication.ActDel, Key: "k"}, {Kind: replication.ActVersion, Key: "k:v", TTL: time.Hour},
		{Kind: replication.ActPublish, Key: "k", Target: "c", Table: "public.t", Op: replication.OpInsert},
		{Kind: replication.ActStream, Key: "k", Target: "s", Table: "public.t", MaxLen: 5},
		{Kind: replication.ActSet, Key: "k", Value: "{}", TTL: time.Minute, Jitter: 0.1}, {Kind: replication.ActIncr, Key: "g"},
	} {
		if d := DescribeAction(&a); !strings.Contains(d, a.Key) {
			t.Errorf("DescribeAction(%v) = %q does not name the key", a.Kind, d)
		}
	}
}

func TestExplainListsActions(t *testing.T) {
	t.Parallel()
	r := usersRule(t, false, "user:{id}")
	r.Actions = Actions{Refresh: true, Version: true, Stream: true, StreamKey: "ev"}
	m := newMapper(t, r)
	ch, err := m.ChangeFromJSON("users", "", "", `{"id": 7, "email": "e", "bio": null}`)
	if err != nil {
		t.Fatal(err)
	}
	e, err := m.Explain(ch)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	e.Print(&b)
	for _, want := range []string{"version: raise user:7:v to the commit LSN", `refresh: SET user:7 {"bio":null,"email":"e","id":"7"}`, "stream: user:7 (insert of public.users) in the transaction's entry of stream ev"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("explain output lacks %q:\n%s", want, b.String())
		}
	}
	if len(e.Keys) != 0 {
		t.Errorf("keys to delete %q, want none (refresh writes)", e.Keys)
	}
}

// With a refresh rule among the rules, plain deletes travel as ActDelete
// actions in rule order with the refresh writes (the sink applies one
// ordered list); without one they stay plain keys. Explain keeps listing
// them as keys.
func TestPlainDeletesOrderedWithRefresh(t *testing.T) {
	t.Parallel()
	rel := usersRel('f')
	refresh := usersRule(t, false, "user:{id}")
	refresh.Actions = Actions{Refresh: true, RefreshColumns: []string{"id"}}
	plain := usersRule(t, false, "user:{id}", "user:email:{email}")
	upd := update(rel, 'O', tup(txt("1"), txt("old@x"), txt("b")), tup(txt("1"), txt("new@x"), txt("b")))
	for _, tc := range []struct {
		name     string
		rules    []Rule
		wantKeys []string
		wantActs []string
	}{
		{"refresh then plain", []Rule{refresh, plain}, nil,
			[]string{`refresh user:1 {"id":1}`, "delete user:1", "delete user:email:old@x", "delete user:email:new@x"}},
		{"plain then refresh", []Rule{plain, refresh}, nil,
			[]string{"delete user:1", "delete user:email:old@x", "delete user:email:new@x", `refresh user:1 {"id":1}`}},
		{"no refresh rule", []Rule{plain}, []string{"user:1", "user:email:old@x", "user:email:new@x"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMapper(t, tc.rules...)
			if err := m.Bind(rel); err != nil {
				t.Fatal(err)
			}
			keys, acts, err := m.AppendChange(nil, nil, upd)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(keys, tc.wantKeys) {
				t.Errorf("keys = %q, want %q", keys, tc.wantKeys)
			}
			if got := describe(acts); !slices.Equal(got, tc.wantActs) {
				t.Errorf("actions =\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.wantActs, "\n  "))
			}
			e, err := m.Explain(upd)
			if err != nil {
				t.Fatal(err)
			}
			if len(e.Keys) < 3 {
				t.Errorf("explain keys = %q, want the plain rule's keys", e.Keys)
			}
		})
	}
}
