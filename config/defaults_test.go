package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/config/defaults"
	"github.com/cdcinvalidate/cdcinvalidate/mapping"
)

const minimalYAML = `postgres:
  dsn: postgres://app@127.0.0.1:5432/app
redis:
  addr: 127.0.0.1:6379
rules:
  - table: users
    keys: ["user:{id}"]
    actions: [version, publish, stream, generation]
`

// loadedDefaults loads a configuration that leaves every option out and
// returns it with the effective value of the options whose default is not
// the loaded field itself: nil pointers that mean true, and rule options
// that the mapping fills in.
func loadedDefaults(t *testing.T) (*Config, map[string]any) {
	t.Helper()
	cfg, err := Parse("minimal.yaml", []byte(minimalYAML), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	acts := cfg.MappingRules("minimal.yaml")[0].Actions
	truncate := TruncateScan
	if acts.TruncateGeneration {
		truncate = TruncateGeneration
	}
	return cfg, map[string]any{
		"postgres.streaming":                  cfg.Postgres.StreamingEnabled(),
		"sink.watermark":                      cfg.WatermarkKey() != "",
		"client.lease_fence":                  cfg.Client.LeaseFenceOrDefault(),
		"rules[].version_key":                 mapping.DefaultVersionKey,
		"rules[].publish_channel":             acts.PublishChannel,
		"rules[].stream_key":                  acts.StreamKey,
		"rules[].stream_maxlen":               acts.StreamMaxLen,
		"rules[].on_truncate":                 truncate,
		"rules[].refresh_ttl_jitter":          cfg.Rules[0].RefreshTTLJitter,
		"rules[].unsafe_allow_stale_old_keys": cfg.Rules[0].UnsafeAllowStaleOldKeys,
	}
}

// TestSchemaDefaultsMatchConfig checks every "default" of the JSON Schema
// against what the loader fills in for a configuration that leaves the
// option out, so the documented defaults and defaults.go cannot drift apart.
func TestSchemaDefaultsMatchConfig(t *testing.T) {
	t.Parallel()
	cfg, effective := loadedDefaults(t)
	root := loadSchema(t)
	checked := 0
	var walk func(path string, v reflect.Value, node map[string]any)
	walk = func(path string, v reflect.Value, node map[string]any) {
		node = resolve(root, node)
		if def, ok := node["default"]; ok {
			checked++
			got, ok := effective[path]
			if !ok {
				got = v.Interface()
			}
			if !sameDefault(got, fmt.Sprint(def)) {
				t.Errorf("%s: the schema's default is %v, the loader fills in %v", path, def, got)
			}
		}
		if items, ok := node["items"].(map[string]any); ok && v.Kind() == reflect.Slice && v.Len() > 0 {
			walk(path+"[]", v.Index(0), items)
			return
		}
		if v.Kind() != reflect.Struct {
			return
		}
		ps := props(node)
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if !f.IsExported() {
				continue
			}
			sub, ok := ps[yamlName(f)].(map[string]any)
			if !ok {
				continue // TestSchemaMatchesConfig reports it
			}
			name := strings.TrimPrefix(path+"."+yamlName(f), ".")
			walk(name, v.Field(i), sub)
		}
	}
	walk("", reflect.ValueOf(*cfg), root)
	if checked < 20 {
		t.Errorf("only %d schema defaults checked; the walk lost its way", checked)
	}
}

// TestSchemaEnumsMatchTypes checks that the schema accepts exactly the
// spellings each typed option accepts, in the same order.
func TestSchemaEnumsMatchTypes(t *testing.T) {
	t.Parallel()
	words := func(vs any) []any {
		v := reflect.ValueOf(vs)
		out := make([]any, v.Len())
		for i := range out {
			out[i] = v.Index(i).String()
		}
		return out
	}
	root := loadSchema(t)
	section := func(path ...string) map[string]any {
		n := root
		for _, p := range path {
			n = resolve(root, props(n)[p].(map[string]any))
		}
		return n
	}
	rule := resolve(root, section("rules")["items"].(map[string]any))
	for _, tc := range []struct {
		where  string
		node   map[string]any
		values any
	}{
		{"consistency.on_history_lost", section("consistency", "on_history_lost"), onHistoryLostValues},
		{"consistency.on_first_start", section("consistency", "on_first_start"), onFirstStartValues},
		{"sink.delete_command", section("sink", "delete_command"), deleteCommandValues},
		{"rules[].delete_command", resolve(root, props(rule)["delete_command"].(map[string]any)), deleteCommandValues},
		{"rules[].on_truncate", resolve(root, props(rule)["on_truncate"].(map[string]any)), onTruncateValues},
		{"log.level", section("log", "level"), logLevelValues},
		{"log.format", section("log", "format"), logFormatValues},
	} {
		enum, _ := tc.node["enum"].([]any)
		if want := words(tc.values); !slices.Equal(enum, want) {
			t.Errorf("%s: the schema's enum is %v, the Go type accepts %v", tc.where, enum, want)
		}
	}
}

// TestEnumProblems checks that each typed option refuses a misspelling
// with a message that lists the accepted words, from the file and from
// the environment alike.
func TestEnumProblems(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, yaml string
		env        map[string]string
		where      string
		want       string
	}{
		{"on_history_lost", "consistency:\n  on_history_lost: ignore\n", nil,
			"consistency.on_history_lost", `on_history_lost "ignore" is not one of flush, stop`},
		{"on_first_start", "consistency:\n  on_first_start: trust\n", nil,
			"consistency.on_first_start", `on_first_start "trust" is not one of flush, keep`},
		{"sink.delete_command", "sink:\n  delete_command: remove\n", nil,
			"sink.delete_command", `delete_command "remove" is not one of unlink, del`},
		{"log.level from env", "", map[string]string{"CDC_LOG_LEVEL": "verbose"},
			"log.level", `log level "verbose" is not one of debug, info, warn, error`},
		{"log.format from env", "", map[string]string{"CDC_LOG_FORMAT": "text"},
			"log.format", `log format "text" is not one of json, console`},
		{"rule delete_command", "", nil,
			"rules[0].delete_command", `delete_command "DEL" is not one of unlink, del`},
		{"rule on_truncate", "", nil,
			"rules[0].on_truncate", `on_truncate "drop" is not one of scan, generation`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rule := "  - table: users\n    keys: [\"user:{id}\"]\n"
			switch tc.where {
			case "rules[0].delete_command":
				rule += "    delete_command: DEL\n"
			case "rules[0].on_truncate":
				rule += "    on_truncate: drop\n"
			}
			text := "postgres:\n  dsn: postgres://a@h/db\nredis:\n  addr: h:1\n" + tc.yaml + "rules:\n" + rule
			_, err := Parse("c.yaml", []byte(text), mapEnv(tc.env))
			ce := configError(t, err)
			if !slices.ContainsFunc(ce.Problems, func(p Problem) bool {
				return strings.Contains(p.Where, "("+tc.where+")") && p.Msg == tc.want
			}) {
				t.Errorf("problems %+v lack %s: %s", ce.Problems, tc.where, tc.want)
			}
		})
	}
}

// TestDefaultSpellingsAreValid checks that the defaults of typed options
// are accepted spellings (a typo in defaults.go would otherwise only show
// as every configuration failing to load).
func TestDefaultSpellingsAreValid(t *testing.T) {
	t.Parallel()
	for _, msg := range []string{
		oneOf("on_history_lost", OnHistoryLost(defaults.OnHistoryLost), onHistoryLostValues),
		oneOf("on_first_start", OnFirstStart(defaults.OnFirstStart), onFirstStartValues),
		oneOf("delete_command", DeleteCommand(defaults.DeleteCommand), deleteCommandValues),
		oneOf("log level", LogLevel(defaults.LogLevel), logLevelValues),
		oneOf("log format", LogFormat(defaults.LogFormat), logFormatValues),
	} {
		if msg != "" {
			t.Error(msg)
		}
	}
}

// TestDocumentedDefaultsMatchConfig checks the Default column of the
// configuration reference (docs/configuration.md) wherever it shows a
// value (`10s`, `64`, `unlink`) against what the loader fills in; words
// such as "none" or "system temp dir" are not checked.
func TestDocumentedDefaultsMatchConfig(t *testing.T) {
	t.Parallel()
	cfg, effective := loadedDefaults(t)
	const doc = "docs/configuration.md"
	data, err := os.ReadFile(filepath.Join("..", doc))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `([a-z_]+)` \\| `([^`|]+)` \\|")
	section, checked := "", 0
	for i, line := range strings.Split(string(data), "\n") {
		if name, ok := strings.CutPrefix(line, "## `"); ok {
			section = strings.TrimSuffix(name, "`")
			continue
		}
		m := row.FindStringSubmatch(line)
		if m == nil || section == "" {
			continue
		}
		path := section + "." + m[1]
		if section == "rules" {
			path = "rules[]." + m[1]
		}
		got, ok := effective[path]
		if !ok {
			v, found := fieldAt(reflect.ValueOf(*cfg), strings.Split(path, "."))
			if !found {
				if section != "rules" {
					t.Errorf("%s:%d: %s is not an option of config.Config", doc, i+1, path)
				}
				continue
			}
			got = v.Interface()
		}
		checked++
		if !sameDefault(got, m[2]) {
			t.Errorf("%s:%d: %s is documented with default %s, the loader fills in %v", doc, i+1, path, m[2], got)
		}
	}
	if checked < 25 {
		t.Errorf("only %d documented defaults checked; has the table format of %s changed?", checked, doc)
	}
}

// fieldAt follows yaml names through nested structs.
func fieldAt(v reflect.Value, names []string) (reflect.Value, bool) {
	for _, name := range names {
		if v.Kind() != reflect.Struct {
			return reflect.Value{}, false
		}
		found := false
		for i := 0; i < v.NumField(); i++ {
			if f := v.Type().Field(i); f.IsExported() && yamlName(f) == name {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			return reflect.Value{}, false
		}
	}
	return v, true
}

// sameDefault reports whether a loaded value is the documented one:
// durations compare by value ("60s" is 1m0s), lists of durations element by
// element ("[1s, 60s]" or "[1s 60s]"), anything else by its printed form.
func sameDefault(got any, documented string) bool {
	switch g := got.(type) {
	case time.Duration:
		d, err := time.ParseDuration(documented)
		return err == nil && d == g
	case []time.Duration:
		words := strings.FieldsFunc(strings.Trim(documented, "[]"), func(r rune) bool { return r == ',' || r == ' ' })
		if len(words) != len(g) {
			return false
		}
		for i, w := range words {
			if d, err := time.ParseDuration(w); err != nil || d != g[i] {
				return false
			}
		}
		return true
	}
	return fmt.Sprint(got) == documented
}
