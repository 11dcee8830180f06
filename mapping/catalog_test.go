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
