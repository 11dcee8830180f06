package config

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const schemaFile = "cdcinvalidate.schema.json"

func loadSchema(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("%s is not JSON: %v", schemaFile, err)
	}
	if s["$schema"] != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$schema = %v, want draft 2020-12", s["$schema"])
	}
	return s
}

// resolve follows a local $ref ("#/$defs/rule").
func resolve(root, node map[string]any) map[string]any {
	for {
		ref, ok := node["$ref"].(string)
		if !ok {
			return node
		}
		var cur any = root
		for _, p := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
			cur = cur.(map[string]any)[p]
		}
		next := map[string]any{}
		for k, v := range cur.(map[string]any) {
			next[k] = v
		}
		for k, v := range node { // siblings of $ref (description, default) win
			if k != "$ref" {
				next[k] = v
			}
		}
		node = next
	}
}

func props(node map[string]any) map[string]any {
	p, _ := node["properties"].(map[string]any)
	return p
}

// TestSchemaMatchesConfig checks that every yaml tag of config.Config is in
// the schema at its place, and every schema property is a yaml tag.
func TestSchemaMatchesConfig(t *testing.T) {
	t.Parallel()
	root := loadSchema(t)
	var walk func(path string, typ reflect.Type, node map[string]any)
	walk = func(path string, typ reflect.Type, node map[string]any) {
		node = resolve(root, node)
		if typ.Kind() == reflect.Slice {
			items, ok := node["items"].(map[string]any)
			if !ok {
				t.Errorf("schema %s is not an array with items", path)
				return
			}
			walk(path+"[]", typ.Elem(), items)
			return
		}
		if typ.Kind() != reflect.Struct {
			return
		}
		ps := props(node)
		if node["additionalProperties"] != false {
			t.Errorf("schema %s does not refuse unknown options (additionalProperties: false)", path)
		}
		tags := map[string]bool{}
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			if !f.IsExported() {
				continue
			}
			name := yamlName(f)
			tags[name] = true
			sub, ok := ps[name].(map[string]any)
			if !ok {
				t.Errorf("option %s.%s (config.%s.%s) is not in %s", path, name, typ.Name(), f.Name, schemaFile)
				continue
			}
			if d, _ := resolve(root, sub)["description"].(string); d == "" {
				t.Errorf("schema %s.%s has no description", path, name)
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			walk(path+"."+name, ft, sub)
		}
		for name := range ps {
			if !tags[name] {
				t.Errorf("schema %s.%s is not an option of config.%s", path, name, typ.Name())
			}
		}
	}
	walk("", reflect.TypeOf(Config{}), root)
}

// TestSchemaKeysDocumented checks that every option of the schema appears
// in the configuration reference, docs/configuration.md, under the heading
// of its section (## `section`).
func TestSchemaKeysDocumented(t *testing.T) {
	t.Parallel()
	root := loadSchema(t)
	const doc = "docs/configuration.md"
	data, err := os.ReadFile(filepath.Join("..", doc))
	if err != nil {
		t.Fatal(err)
	}
	ref := string(data)
	if !strings.HasPrefix(ref, "# Configuration reference\n") {
		t.Fatalf("%s does not start with the heading # Configuration reference", doc)
	}
	section := func(name string) string {
		i := strings.Index(ref, "\n## `"+name+"`")
		if i < 0 {
			return ""
		}
		s := ref[i+1:]
		if j := strings.Index(s[3:], "\n## "); j >= 0 {
			s = s[:j+3]
		}
		return s
	}
	for sec, node := range props(root) {
		text := section(sec)
		if text == "" {
			t.Errorf("%s has no section ## `%s`", doc, sec)
			continue
		}
		n := resolve(root, node.(map[string]any))
		if items, ok := n["items"].(map[string]any); ok {
			n = resolve(root, items)
		}
		for key := range props(n) {
			if !strings.Contains(text, "`"+key+"`") {
				t.Errorf("option %s.%s of the schema is not documented in %s under ## `%s`", sec, key, doc, sec)
			}
		}
	}
}

// validate checks a YAML value against a schema node for the keywords the
// schema uses. It returns the problems found.
func validate(root map[string]any, node map[string]any, v any, path string) []string {
	node = resolve(root, node)
	var ps []string
	bad := func(format string, args ...any) { ps = append(ps, path+": "+fmt.Sprintf(format, args...)) }
	if typ, ok := node["type"].(string); ok {
		okType := false
		switch typ {
		case "object":
			_, okType = v.(map[string]any)
		case "array":
			_, okType = v.([]any)
		case "string":
			_, okType = v.(string)
		case "boolean":
			_, okType = v.(bool)
		case "integer":
			_, okType = v.(int)
		case "number":
			switch v.(type) {
			case int, float64:
				okType = true
			}
		}
		if !okType {
			bad("%v (%T) is not of type %s", v, v, typ)
			return ps
		}
	}
	if enum, ok := node["enum"].([]any); ok && !slices.Contains(enum, v) {
		bad("%v is not one of %v", v, enum)
	}
	switch x := v.(type) {
	case map[string]any:
		known := props(node)
		required, _ := node["required"].([]any)
		for _, r := range required {
			if _, ok := x[r.(string)]; !ok {
				bad("%s is required", r)
			}
		}
		for k, val := range x {
			sub, ok := known[k].(map[string]any)
			if !ok {
				if node["additionalProperties"] == false {
					bad("unknown option %q", k)
				}
				continue
			}
			ps = append(ps, validate(root, sub, val, path+"."+k)...)
		}
	case []any:
		if m, ok := node["minItems"].(float64); ok && len(x) < int(m) {
			bad("fewer than %v items", m)
		}
		if node["uniqueItems"] == true {
			for i := range x {
				if slices.Index(x, x[i]) != i {
					bad("item %v is repeated", x[i])
				}
			}
		}
		if items, ok := node["items"].(map[string]any); ok {
			for i, it := range x {
				ps = append(ps, validate(root, items, it, fmt.Sprintf("%s[%d]", path, i))...)
			}
		}
	case string:
		if m, ok := node["minLength"].(float64); ok && len(x) < int(m) {
			bad("shorter than %v", m)
		}
		if p, ok := node["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(x) {
			bad("%q does not match %s", x, p)
		}
	case int:
		if m, ok := node["minimum"].(float64); ok && float64(x) < m {
			bad("%d is below %v", x, m)
		}
		if m, ok := node["maximum"].(float64); ok && float64(x) > m {
			bad("%d is above %v", x, m)
		}
	case float64:
		if m, ok := node["minimum"].(float64); ok && x < m {
			bad("%g is below %v", x, m)
		}
		if m, ok := node["maximum"].(float64); ok && x > m {
			bad("%g is above %v", x, m)
		}
	}
	return ps
}

func validateYAML(t *testing.T, root map[string]any, text string) []string {
	t.Helper()
	var v any
	if err := yaml.Unmarshal([]byte(text), &v); err != nil {
		t.Fatal(err)
	}
	return validate(root, root, v, "")
}

// The configurations the loader accepts are valid for the schema too, and
// typical mistakes are caught by both.
func TestSchemaValidatesConfigurations(t *testing.T) {
	t.Parallel()
	root := loadSchema(t)
	files, _ := filepath.Glob(filepath.Join("testdata", "config-[gfr]*.yaml"))
	files = append(files, filepath.Join("..", "rules.yaml"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if ps := validateYAML(t, root, string(data)); len(ps) > 0 {
			t.Errorf("%s is not valid for the schema:\n%s", f, strings.Join(ps, "\n"))
		}
	}
	const head = "postgres:\n  dsn: x\nredis:\n  addr: \"h:1\"\n"
	for _, tc := range []struct{ yaml, want string }{
		{head + "rules:\n  - table: t\n    keys: [\"{id}\"]\n", "does not match"},
		{head + "rules:\n  - table: t\n    keys: [\"t:{id}\"]\n    ops: [upsert]\n", "not one of"},
		{head + "rules:\n  - table: t\n    keys: [\"t:{id}\"]\n    ops: []\n", "fewer than"},
		{head + "rules:\n  - table: t\n    keys: [\"t:{id}\"]\n    when_change: [a]\n", `unknown option "when_change"`},
		{head + "rules:\n  - table: t\n    keys: [\"t:{id}\"]\n    when: 3\n", "is not of type string"},
		{head + "rules:\n  - table: Users\n    keys: [\"t:{id}\"]\n", "does not match"},
		{head + "rules:\n  - keys: [\"t:{id}\"]\n", "table is required"},
		{head + "rules: []\n", "fewer than"},
		{head + "postgres_: {}\nrules:\n  - table: t\n    keys: [\"t:{id}\"]\n", `unknown option "postgres_"`},
		{"postgres:\n  status_interval: soon\nrules:\n  - table: t\n    keys: [\"t:{id}\"]\n", `"soon" does not match`},
		{"sink:\n  delete_command: remove\nrules:\n  - table: t\n    keys: [\"t:{id}\"]\n", "not one of"},
	} {
		ps := validateYAML(t, root, tc.yaml)
		if !slices.ContainsFunc(ps, func(p string) bool { return strings.Contains(p, tc.want) }) {
			t.Errorf("schema problems %q for\n%s\ndo not mention %q", ps, tc.yaml, tc.want)
		}
	}
}
