package config

import (
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/mapping"
)

func TestLoadRuleOptions(t *testing.T) {
	t.Parallel()
	cfg, err := loadTestdata(t, "config-rules.yaml", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	rules := cfg.MappingRules("config-rules.yaml")
	if len(rules) != 4 {
		t.Fatalf("%d rules", len(rules))
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"rules[0].ops", rules[0].Ops, mapping.OpSet(0)},
		{"rules[0].ops has truncate", rules[0].Ops.Has(mapping.OnTruncate), true},
		{"rules[1].ops", rules[1].Ops, mapping.OnInsert | mapping.OnDelete | mapping.OnTruncate},
		{"rules[2].schema", rules[2].Schema, "shop"},
		{"rules[2].when_changed", strings.Join(rules[2].WhenChanged, ","), "status,user_id"},
		{"rules[2].when", rules[2].When == nil, true},
		{"rules[3].ops", rules[3].Ops, mapping.OnInsert | mapping.OnUpdate | mapping.OnDelete},
		{"rules[3].when", rules[3].When != nil && strings.Contains(rules[3].When.String(), "new.published"), true},
		{"rules[0] template", rules[0].Templates[1].String(), "user:email:{email|trim|lower}"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// The condition compiled by validation is the one the rule gets.
	if cfg.Rules[3].cond == nil || rules[3].When != cfg.Rules[3].cond {
		t.Error("when is compiled again instead of once")
	}
	if _, err := mapping.New(rules); err != nil {
		t.Fatalf("mapping.New: %v", err)
	}
	// Actions and their defaults.
	if a := rules[0].Actions; !reflect.DeepEqual(a, mapping.Actions{}) {
		t.Errorf("rules[0] without actions got %+v", a)
	}
	c0 := Config{Rules: []Rule{{Table: "shop.orders", Actions: []string{"publish", "stream", "generation"}}}}
	a := c0.MappingRules("x")[0].Actions
	if !a.Publish || a.PublishChannel != DefaultChannel || !a.Stream || a.StreamKey != DefaultChannel ||
		a.StreamMaxLen != DefaultStreamMaxLen || a.GenerationKey != "gen:shop.orders" || a.Delete {
		t.Errorf("defaults of actions: %+v", a)
	}
	// Rules built in code without validation still get their condition.
	c := Config{Rules: []Rule{{Table: "t", Keys: []string{"t:{id}"}, When: `op == "insert"`}}}
	if r := c.MappingRules("x"); r[0].When == nil {
		t.Error("MappingRules without validate dropped when")
	}
}

func TestRuleOptionProblems(t *testing.T) {
	t.Parallel()
	const head = "postgres:\n  dsn: \"postgres://h/db\"\nredis:\n  addr: \"h:6379\"\nrules:\n  - table: users\n    keys: [\"user:{id}\"]\n"
	tests := []struct {
		name  string
		rule  string // lines after "    keys: ..." of a second rule (line 9 on)
		want  string // "" = valid
		place string // "LINE:COL" of the problem
	}{
		{"ops", "    ops: [insert, update]\n", "", ""},
		{"all ops", "    ops: [insert, update, delete, truncate]\n", "", ""},
		{"unknown op", "    ops: [insert, upsert]\n", `unknown operation "upsert" in ops: use insert, update, delete, truncate`, "10:19"},
		{"upper-case op", "    ops:\n      - INSERT\n", `unknown operation "INSERT"`, "11:9"},
		{"duplicate op", "    ops: [delete, delete]\n", `operation "delete" is listed twice`, "10:19"},
		{"empty ops", "    ops: []\n", "ops is empty", "10:10"},
		{"ops scalar", "    ops: insert\n", "cannot unmarshal", "10"},
		{"when_changed", "    when_changed: [email, name]\n", "", ""},
		{"empty when_changed", "    when_changed: []\n", "when_changed is empty", "10:19"},
		{"duplicate when_changed", "    when_changed: [a, b, a]\n", `column "a" is listed twice in when_changed`, "10:26"},
		{"blank when_changed", "    when_changed: [\"\"]\n", "empty column name", "10:20"},
		{"when_changed without update", "    ops: [insert, delete]\n    when_changed: [email]\n", "when_changed filters UPDATEs only", "11:19"},
		{"when", "    when: new.status != old.status || new.published == \"t\"\n", "", ""},
		{"when block", "    when: |\n      op == \"insert\" ||\n      new.x == \"1\"\n", "", ""},
		{"when syntax error", "    when: new.status ==\n", "Syntax error", "10:5"},
		{"when unknown variable", "    when: row.status == \"x\"\n", "undeclared reference to 'row' (line 1, column 1 of the condition)", "10:5"},
		{"when block error on its second line", "    when: |\n      op == \"insert\" ||\n      nope(new.x)\n", "(line 2, column 5 of the condition)", "10:5"},
		{"when not boolean", "    when: new.status\n", "must be a boolean", "10:5"},
		{"when type error", "    when: op == 3\n", "no matching overload", "10:5"},
		{"when as a list", "    when: [a]\n", "cannot unmarshal", "10"},
		{"unknown rule option", "    when_change: [a]\n", `unknown option "when_change" in rule`, "10:5"},
		{"actions", "    actions: [delete, version, publish, stream, generation]\n    version_key: \"v:{key}\"\n    version_ttl: 24h\n    publish_channel: c\n    stream_key: s\n    stream_maxlen: 0\n    generation_key: g\n    delete_command: del\n", "", ""},
		{"refresh", "    actions: [refresh]\n    refresh_columns: [id, name]\n    refresh_ttl: 1h\n    refresh_ttl_jitter: 0.2\n", "", ""},
		{"generation on truncate", "    actions: [generation]\n    on_truncate: generation\n", "", ""},
		{"unknown action", "    actions: [delete, purge]\n", `unknown action "purge": use delete, version, publish, stream, refresh, generation`, "10:23"},
		{"duplicate action", "    actions: [version, version]\n", `action "version" is listed twice`, "10:24"},
		{"empty actions", "    actions: []\n", "actions is empty", "10:14"},
		{"delete with refresh", "    actions: [delete, refresh]\n", "delete and refresh are both listed", "10:14"},
		{"option without its action", "    actions: [delete]\n    version_ttl: 1h\n", "version_ttl is set, but actions does not list version", "11:18"},
		{"option of default delete", "    refresh_ttl: 1h\n", "refresh_ttl is set, but actions does not list refresh", "10:18"},
		{"bad version key", "    actions: [version]\n    version_key: \"{key}\"\n", "would overwrite the cached value", "11:18"},
		{"version key without key", "    actions: [version]\n    version_key: v\n", "must contain {key} exactly once", "11:18"},
		{"bad delete command", "    delete_command: remove\n", `delete_command "remove" is not one of unlink, del`, "10:21"},
		{"jitter too big", "    actions: [refresh]\n    refresh_ttl: 1h\n    refresh_ttl_jitter: 1.5\n", "must be between 0 and 0.9", "12:25"},
		{"jitter without ttl", "    actions: [refresh]\n    refresh_ttl_jitter: 0.1\n", "refresh_ttl_jitter needs refresh_ttl", "11:25"},
		{"negative maxlen", "    actions: [stream]\n    stream_maxlen: -1\n", "stream_maxlen must not be negative", "11:20"},
		{"truncate generation without action", "    on_truncate: generation\n", "on_truncate: generation needs generation in actions", "10:18"},
		{"bad on_truncate", "    actions: [generation]\n    on_truncate: wipe\n", `on_truncate "wipe" is not one of scan, generation`, "11:18"},
		{"duplicate refresh column", "    actions: [refresh]\n    refresh_columns: [a, a]\n", `column "a" is listed twice in refresh_columns`, "11:26"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			text := head + "  - table: orders\n    keys: [\"order:{id}\"]\n" + tc.rule
			cfg, err := Parse("c.yaml", []byte(text), noEnv)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if _, err := mapping.New(cfg.MappingRules("c.yaml")); err != nil {
					t.Fatal(err)
				}
				return
			}
			ce := configError(t, err)
			i := slices.IndexFunc(ce.Problems, func(p Problem) bool { return strings.Contains(p.Msg, tc.want) })
			if i < 0 {
				t.Fatalf("no problem mentions %q:\n%v", tc.want, err)
			}
			if where := ce.Problems[i].Where; !strings.HasPrefix(where, "c.yaml:"+tc.place+" ") && where != "c.yaml:"+tc.place {
				t.Errorf("problem at %q, want c.yaml:%s", where, tc.place)
			}
		})
	}
}

// FuzzRules builds rules from arbitrary keys, ops, when_changed, when and an action:
// Parse never panics, and a rule it accepts always becomes a working mapper
// rule with its condition compiled.
func FuzzRules(f *testing.F) {
	f.Add("user:{id|lower}", "insert", "email", `new.status != old.status`, "")
	f.Add("user:{id}", "", "", "", "version")
	f.Add("{id}", "upsert", "", "op ==", "purge")
	f.Add("u:{a|default:x|sha1}", "truncate", "a", `new.a == "t"`, "generation")
	f.Add("u:{a|bogus}", "update", "b", `op == 1`, "refresh")
	f.Add("u:{a}", "delete", "", `int(new.a) > 0`, "stream")
	f.Add("u:{a}", "", "", "", "publish")
	f.Fuzz(func(t *testing.T, key, op, changed, when, action string) {
		var b strings.Builder
		b.WriteString("postgres:\n  dsn: \"postgres://h/db\"\nredis:\n  addr: \"h:1\"\nrules:\n  - table: t\n")
		fmt.Fprintf(&b, "    keys: [%s]\n", strconv.Quote(key))
		if op != "" {
			fmt.Fprintf(&b, "    ops: [%s]\n", strconv.Quote(op))
		}
		if changed != "" {
			fmt.Fprintf(&b, "    when_changed: [%s]\n", strconv.Quote(changed))
		}
		if when != "" {
			fmt.Fprintf(&b, "    when: %s\n", strconv.Quote(when))
		}
		if action != "" {
			fmt.Fprintf(&b, "    actions: [%s]\n", strconv.Quote(action))
		}
		cfg, err := Parse("fuzz.yaml", []byte(b.String()), noEnv)
		if err != nil {
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			return
		}
		rules := cfg.MappingRules("fuzz.yaml")
		if len(rules) != 1 || len(rules[0].Templates) != 1 {
			t.Fatalf("rules %+v", rules)
		}
		r := rules[0]
		if (cfg.Rules[0].When != "") != (r.When != nil) {
			t.Fatalf("when %q compiled to %v", cfg.Rules[0].When, r.When)
		}
		if op != "" {
			if o, ok := mapping.ParseOp(op); !ok || r.Ops != o {
				t.Fatalf("ops %q became %v", op, r.Ops)
			}
		}
		if action != "" {
			a := r.Actions
			got := map[string]bool{ActionDelete: a.Delete, ActionVersion: a.Version, ActionPublish: a.Publish,
				ActionStream: a.Stream, ActionRefresh: a.Refresh, ActionGeneration: a.Generation}
			if !got[action] {
				t.Fatalf("action %q became %+v", action, a)
			}
		}
		if _, err := mapping.New(rules); err != nil {
			t.Fatalf("mapping.New: %v", err)
		}
	})
}

// The files in testdata that hold good configurations load.
func TestGoodTestdataLoads(t *testing.T) {
	t.Parallel()
	files, _ := filepath.Glob(filepath.Join("testdata", "config-[gfr]*.yaml"))
	if len(files) < 3 {
		t.Fatalf("found %q", files)
	}
	for _, f := range files {
		if _, err := Load(f, noEnv); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestLeaseFenceOption(t *testing.T) {
	t.Parallel()
	const head = "postgres:\n  dsn: \"postgres://h/db\"\nredis:\n  addr: \"h:6379\"\nrules:\n  - table: users\n    keys: [\"user:{id}\"]\n"
	cfg, err := Parse("c.yaml", []byte(head+"client:\n  leases: true\n"), noEnv)
	if err != nil || cfg.Client.LeaseFenceOrDefault() != 50*time.Millisecond {
		t.Fatalf("default fence: %v, %v", cfg, err)
	}
	env := func(name string) (string, bool) {
		if name == "CDC_CLIENT_LEASE_FENCE" {
			return "0", true
		}
		return "", false
	}
	cfg, err = Parse("c.yaml", []byte(head+"client:\n  leases: true\n  lease_fence: 20ms\n"), env)
	if err != nil || cfg.Client.LeaseFenceOrDefault() != 0 {
		t.Fatalf("env CDC_CLIENT_LEASE_FENCE=0: %v", err)
	}
	for text, want := range map[string]string{
		"client:\n  leases: true\n  lease_fence: 2m\n": "between 1ms and 1m",
		"client:\n  lease_fence: 20ms\n":               "client.leases is off",
	} {
		_, err := Parse("c.yaml", []byte(head+text), noEnv)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", text, err, want)
		}
	}
}
