package mapping

import (
	"strings"
	"testing"
)

func TestCheckTable(t *testing.T) {
	t.Parallel()
	cols := []string{"id", "email", "bio"}
	table := func(kind, ident byte, idCols ...string) TableInfo {
		return TableInfo{Exists: true, Kind: kind, Columns: cols, ReplicaIdentity: ident, IdentityColumns: idCols}
	}
	tests := []struct {
		name       string
		keys       []string
		allowStale bool
		info       TableInfo
		want       [][]string // per problem, substrings it must contain; nil = no problem
	}{
		{
			name: "missing table", keys: []string{"user:{id}"}, info: TableInfo{},
			want: [][]string{{"rules[0]", "public.users does not exist"}},
		},
		{
			name: "view", keys: []string{"user:{id}"}, info: table('v', 'd', "id"),
			want: [][]string{{"not a table", "'v'"}},
		},
		{
			name: "materialized view and missing column", keys: []string{"user:{nope}"}, info: table('m', 'd', "id"),
			want: [][]string{{"not a table", "'m'"}, {`column "nope"`, "does not have"}},
		},
		{
			name: "replica identity NOTHING", keys: []string{"user:{id}"}, info: table('r', 'n'),
			want: [][]string{{"REPLICA IDENTITY NOTHING", "ALTER TABLE public.users REPLICA IDENTITY FULL"}},
		},
		{
			name: "DEFAULT without primary key", keys: []string{"user:{id}"}, info: table('r', 'd'),
			want: [][]string{{"no primary key", "REPLICA IDENTITY FULL"}},
		},
		{
			name: "missing column", keys: []string{"user:{id}", "user:{nope}"}, info: table('r', 'd', "id"),
			want: [][]string{{`"user:{nope}"`, `column "nope"`, "[id email bio]"}},
		},
		{
			name: "column outside identity", keys: []string{"user:{id}", "user:email:{email}"}, info: table('r', 'd', "id"),
			want: [][]string{{`"user:email:{email}"`, `column "email"`, "outside the replica identity", "REPLICA IDENTITY FULL", "unsafe_allow_stale_old_keys"}},
		},
		{
			name: "column outside USING INDEX identity", keys: []string{"user:{email}:{bio}"}, info: table('r', 'i', "email"),
			want: [][]string{{`column "bio"`, "REPLICA IDENTITY FULL"}},
		},
		{name: "identity columns ok", keys: []string{"user:{id}"}, info: table('r', 'd', "id")},
		{name: "USING INDEX ok", keys: []string{"user:{email}"}, info: table('r', 'i', "email")},
		{name: "FULL ok", keys: []string{"user:{id}", "user:email:{email}", "bio:{bio}"}, info: table('r', 'f')},
		{name: "partitioned table ok", keys: []string{"user:{id}"}, info: table('p', 'd', "id")},
		{name: "opt-in ok", keys: []string{"user:{id}", "user:email:{email}"}, allowStale: true, info: table('r', 'd', "id")},
		{
			name: "opt-in does not excuse a missing column", keys: []string{"user:{nope}"}, allowStale: true, info: table('r', 'd', "id"),
			want: [][]string{{`column "nope"`}},
		},
		{
			name: "several problems reported together", keys: []string{"user:{id}:{nope}", "user:email:{email}", "b:{bio}:{gone}"},
			info: table('f', 'd', "id"),
			want: [][]string{
				{"not a table"},
				{`column "nope"`, "does not have"},
				{`column "email"`, "outside the replica identity"},
				{`column "bio"`, "outside the replica identity"},
				{`column "gone"`, "does not have"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := &Rule{Schema: "public", Table: "users", Templates: mustTemplates(t, tc.keys...), AllowStaleOldKeys: tc.allowStale, Where: "rules[0]"}
			got := CheckTable(r, tc.info)
			if len(got) != len(tc.want) {
				t.Fatalf("CheckTable returned %d problems, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			for i, subs := range tc.want {
				if !strings.HasPrefix(got[i], "rules[0]") {
					t.Errorf("problem %d %q does not start with the rule's place", i, got[i])
				}
				for _, s := range subs {
					if !strings.Contains(got[i], s) {
						t.Errorf("problem %d %q does not mention %q", i, got[i], s)
					}
				}
			}
		})
	}
}

// CheckTable and Bind agree: a rule CheckTable accepts binds to the Relation
// message of the same table.
func TestCheckTableAgreesWithBind(t *testing.T) {
	t.Parallel()
	for _, ident := range []byte{'d', 'f'} {
		for _, keys := range [][]string{{"user:{id}"}, {"user:email:{email}"}, {"user:{id}:{bio}"}} {
			for _, stale := range []bool{false, true} {
				r := Rule{Table: "users", Templates: mustTemplates(t, keys...), AllowStaleOldKeys: stale, Where: "rules[0]"}
				info := TableInfo{Exists: true, Kind: 'r', Columns: []string{"id", "email", "bio"}, ReplicaIdentity: ident, IdentityColumns: []string{"id"}}
				m := newMapper(t, r)
				ps := CheckTable(m.Rules("public.users")[0], info)
				err := m.Bind(usersRel(ident))
				if (len(ps) == 0) != (err == nil) {
					t.Errorf("identity %c keys %q stale %v: CheckTable %q but Bind %v", ident, keys, stale, ps, err)
				}
			}
		}
	}
}

func TestCheckTablePartitionsAndConditions(t *testing.T) {
	t.Parallel()
	cols := []string{"id", "email", "status"}
	base := func(ident byte, idCols []string, parts ...PartitionInfo) TableInfo {
		return TableInfo{Exists: true, Kind: 'p', Columns: cols, ReplicaIdentity: ident, IdentityColumns: idCols, Partitions: parts}
	}
	full := func(n string) PartitionInfo { return PartitionInfo{Name: n, ReplicaIdentity: 'f'} }
	def := func(n string) PartitionInfo {
		return PartitionInfo{Name: n, ReplicaIdentity: 'd', IdentityColumns: []string{"id"}}
	}
	tests := []struct {
		name        string
		keys        []string
		whenChanged []string
		when        string
		info        TableInfo
		want        [][]string
		warnings    [][]string
	}{
		{name: "partitions FULL", keys: []string{"e:{email}"}, info: base('f', nil, full("public.e_1"), full("public.e_2"))},
		{
			name: "a partition without FULL", keys: []string{"e:{id}", "e:{email}"}, info: base('f', nil, full("public.e_1"), def("public.e_2")),
			want: [][]string{{"partition public.e_2 of public.users", `column "email"`, "ALTER TABLE public.e_2 REPLICA IDENTITY FULL", "not inherited"}},
		},
		{name: "key columns under DEFAULT partitions", keys: []string{"e:{id}"}, info: base('d', []string{"id"}, def("public.e_1"))},
		{
			name: "partition with NOTHING", keys: []string{"e:{id}"}, info: base('d', []string{"id"}, PartitionInfo{Name: "public.e_1", ReplicaIdentity: 'n'}),
			want: [][]string{{"partition public.e_1 of public.users has REPLICA IDENTITY NOTHING", "ALTER TABLE public.e_1 REPLICA IDENTITY FULL"}},
		},
		{
			name: "when_changed and when columns must exist", keys: []string{"e:{id}"}, whenChanged: []string{"status", "nope"}, when: `new.gone == "x" && old.status == "y"`,
			info: base('d', []string{"id"}),
			want: [][]string{{`when_changed names column "nope"`}, {`uses column "gone"`, "when condition"}},
			warnings: [][]string{
				{`when_changed column "status" is outside the replica identity`, "REPLICA IDENTITY FULL"},
				{"old.status", "unknown"},
			},
		},
		{name: "FULL needs no warning", keys: []string{"e:{id}"}, whenChanged: []string{"status"}, when: `old.status == "y"`, info: base('f', nil, full("public.e_1"))},
		{
			name: "a DEFAULT partition makes when_changed inexact", keys: []string{"e:{id}"}, whenChanged: []string{"status"},
			info:     base('f', nil, full("public.e_1"), def("public.e_2")),
			warnings: [][]string{{`when_changed column "status"`}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := &Rule{Schema: "public", Table: "users", Templates: mustTemplates(t, tc.keys...), WhenChanged: tc.whenChanged, Where: "rules[0]"}
			if tc.when != "" {
				r.When = mustCondition(t, tc.when)
			}
			check := func(what string, got []Problem, want [][]string) {
				t.Helper()
				if len(got) != len(want) {
					t.Fatalf("%s: %d, want %d:\n%s", what, len(got), len(want), strings.Join(Strings(got), "\n"))
				}
				for i, subs := range want {
					if got[i].Where != "rules[0]" || got[i].Fix == "" {
						t.Errorf("%s %d: %+v lacks its place or fix", what, i, got[i])
					}
					for _, s := range subs {
						if !strings.Contains(got[i].String(), s) {
							t.Errorf("%s %d %q does not mention %q", what, i, got[i], s)
						}
					}
				}
			}
			check("problems", CheckTableProblems(r, tc.info), tc.want)
			check("warnings", TableWarnings(r, tc.info), tc.warnings)
		})
	}
}

func TestSettingDependentTypes(t *testing.T) {
	t.Parallel()
	for typ, want := range map[string]string{
		"timestamp with time zone":    "TimeZone",
		"timestamp(3) with time zone": "TimeZone",
		"timestamp without time zone": "DateStyle",
		"date":                        "DateStyle",
		"interval":                    "IntervalStyle",
		"double precision":            "extra_float_digits",
		"real[]":                      "extra_float_digits",
		"money":                       "lc_monetary",
		"bytea":                       "bytea_output",
		"time without time zone":      "",
		"time with time zone":         "",
		"bigint":                      "",
		"numeric(10,2)":               "",
		"text":                        "",
		"uuid":                        "",
		"boolean":                     "",
	} {
		if got := settingDependent(typ); (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("settingDependent(%q) = %q, want %q", typ, got, want)
		}
	}
	r := &Rule{Schema: "public", Table: "t", Templates: mustTemplates(t, "t:{id}", "t:at:{at}"), Where: "rules[0]"}
	ws := TableWarnings(r, TableInfo{Exists: true, Kind: 'r', Columns: []string{"id", "at"}, Types: []string{"bigint", "timestamp with time zone"}, ReplicaIdentity: 'f'})
	if len(ws) != 1 || !strings.Contains(ws[0].Msg, `column "at" of type timestamp with time zone`) {
		t.Errorf("warnings %v", ws)
	}
}

// check warns when a refreshed column can be TOASTed and the replica
// identity does not carry it (the refresh then deletes instead of writing),
// and names missing refresh_columns as problems.
func TestRefreshCatalogFindings(t *testing.T) {
	t.Parallel()
	info := TableInfo{Exists: true, Kind: 'r', Columns: []string{"id", "n", "body", "tags"}, Types: []string{"bigint", "integer", "text", "text[]"},
		ReplicaIdentity: 'd', IdentityColumns: []string{"id"}}
	r := &Rule{Schema: "public", Table: "t", Templates: mustTemplates(t, "t:{id}"), Where: "rules[0]", Actions: Actions{Refresh: true}}
	var cols []string
	for _, w := range TableWarnings(r, info) {
		if strings.Contains(w.Msg, "refreshed column") {
			cols = append(cols, w.Msg[strings.Index(w.Msg, `"`):strings.Index(w.Msg, ` (`)])
			if !strings.Contains(w.Fix, "REPLICA IDENTITY FULL") {
				t.Errorf("fix %q", w.Fix)
			}
		}
	}
	if strings.Join(cols, ",") != `"body","tags"` {
		t.Errorf("refresh warnings for %v, want body and tags", cols)
	}
	r.Actions.RefreshColumns = []string{"id", "n"}
	for _, w := range TableWarnings(r, info) {
		if strings.Contains(w.Msg, "refreshed column") {
			t.Errorf("warning for columns not refreshed: %s", w.Msg)
		}
	}
	info.ReplicaIdentity = 'f'
	r.Actions.RefreshColumns = nil
	for _, w := range TableWarnings(r, info) {
		if strings.Contains(w.Msg, "refreshed column") {
			t.Errorf("warning under REPLICA IDENTITY FULL: %s", w.Msg)
		}
	}
	r.Actions.RefreshColumns = []string{"id", "nope"}
	ps := CheckTableProblems(r, info)
	if len(ps) != 1 || !strings.Contains(ps[0].Msg, `refresh_columns names column "nope"`) {
		t.Errorf("problems %v", ps)
	}
}
