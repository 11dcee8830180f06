package config

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Problem is one mistake in the configuration.
type Problem struct {
	Where string // "rules.yaml:12:5 (rules[1].keys[0])" or "env CDC_REDIS_DB"
	Msg   string
}

// Error lists every problem found.
type Error struct {
	File     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	n := len(e.Problems)
	plural := "s"
	if n == 1 {
		plural = ""
	}
	fmt.Fprintf(&b, "configuration %s has %d problem%s:", e.File, n, plural)
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n  - %s: %s", p.Where, p.Msg)
	}
	return b.String()
}

// Load reads, overrides from the environment (env may be nil for
// os.LookupEnv), fills defaults and validates a configuration file.
func Load(path string, env func(string) (string, bool)) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	return Parse(path, data, env)
}

// Parse is Load for configuration text; name is used in messages.
func Parse(name string, data []byte, env func(string) (string, bool)) (*Config, error) {
	if env == nil {
		env = os.LookupEnv
	}
	e := &Error{File: name}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		e.Problems = append(e.Problems, yamlProblem(name, strings.TrimPrefix(err.Error(), "yaml: "), nil, ""))
		return nil, e
	}
	if len(root.Content) == 0 {
		e.Problems = append(e.Problems, Problem{Where: name,
			Msg: "the file is empty; see rules.yaml in the repository for an example"})
		return nil, e
	}
	// One document only: a second one ("---") would otherwise be ignored silently.
	docs := yaml.NewDecoder(strings.NewReader(string(data)))
	var first, second yaml.Node
	if docs.Decode(&first) == nil && docs.Decode(&second) == nil {
		e.Problems = append(e.Problems, Problem{Where: fmt.Sprintf("%s:%d", name, second.Line),
			Msg: "a second YAML document (after ---) would be ignored: " +
				"keep the whole configuration in one document"})
		return nil, e
	}
	if a := findAlias(&root); a != nil {
		e.Problems = append(e.Problems, Problem{Where: fmt.Sprintf("%s:%d:%d", name, a.Line, a.Column),
			Msg: "YAML aliases (*name) are not allowed in the configuration"})
		return nil, e
	}
	var cfg Config
	if err := root.Content[0].Decode(&cfg); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, m := range te.Errors {
				e.Problems = append(e.Problems, yamlProblem(name, m, nil, ""))
			}
		} else {
			e.Problems = append(e.Problems, yamlProblem(name, err.Error(), nil, ""))
		}
	}
	// Strict: unknown fields are mistakes (a misspelt option must not be ignored).
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	var strict Config
	if err := dec.Decode(&strict); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, m := range te.Errors {
				if strings.Contains(m, "not found in type") {
					var key string
					if g := fieldRE.FindStringSubmatch(m); g != nil {
						key = g[1]
					}
					e.Problems = append(e.Problems, yamlProblem(name, unknownField(m), root.Content[0], key))
				}
			}
		}
	}
	loc := locator{file: name, root: root.Content[0]}
	e.Problems = append(e.Problems, applyEnv(&cfg, env)...)
	cfg.setDefaults()
	e.Problems = append(e.Problems, cfg.validate(loc)...)
	if len(e.Problems) > 0 {
		return nil, e
	}
	return &cfg, nil
}

var fieldRE = regexp.MustCompile(`field (\S+) not found in type config\.(\w+)`)

func unknownField(m string) string {
	if g := fieldRE.FindStringSubmatch(m); g != nil {
		msg := fmt.Sprintf("unknown option %q in %s (check the spelling against "+
			"the configuration reference in docs/configuration.md)", g[1], strings.ToLower(g[2]))
		return strings.Replace(m, g[0], msg, 1)
	}
	return m
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): `)

// yamlProblem places a message of the YAML library ("line 3: ...") at
// "file:3", or at "file:3:COL" when key names a mapping key of root found on
// that line.
func yamlProblem(name, msg string, root *yaml.Node, key string) Problem {
	g := yamlLineRE.FindStringSubmatch(msg)
	if g == nil {
		return Problem{Where: name, Msg: msg}
	}
	line, err := strconv.Atoi(g[1])
	if err != nil {
		return Problem{Where: name, Msg: msg}
	}
	where := fmt.Sprintf("%s:%d", name, line)
	if k := findKey(root, key, line); k != nil {
		where = fmt.Sprintf("%s:%d:%d", name, line, k.Column)
	}
	return Problem{Where: where, Msg: msg[len(g[0]):]}
}

// findKey returns the mapping key node named key on the given line.
func findKey(n *yaml.Node, key string, line int) *yaml.Node {
	if n == nil || key == "" {
		return nil
	}
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Value == key && k.Line == line {
				return k
			}
		}
	}
	for _, c := range n.Content {
		if k := findKey(c, key, line); k != nil {
			return k
		}
	}
	return nil
}

// findAlias returns the first YAML alias: a configuration has no use for
// them and they allow "billion laughs" expansion, so they are refused.
func findAlias(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode {
		return n
	}
	for _, c := range n.Content {
		if a := findAlias(c); a != nil {
			return a
		}
	}
	return nil
}

// locator finds the line and column of a dotted path in the YAML tree.
type locator struct {
	file string
	root *yaml.Node
}

var pathRE = regexp.MustCompile(`([a-z_]+)|\[(\d+)\]`)

func (l locator) where(path string) string {
	n := l.root
	var found *yaml.Node
	for _, m := range pathRE.FindAllStringSubmatch(path, -1) {
		if n == nil {
			break
		}
		var next *yaml.Node
		if m[1] != "" && n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == m[1] {
					next = n.Content[i+1]
					if next.Kind != yaml.ScalarNode || next.Value != "" {
						found = next
					} else {
						found = n.Content[i]
					}
				}
			}
		} else if m[2] != "" && n.Kind == yaml.SequenceNode {
			idx, _ := strconv.Atoi(m[2])
			if idx < len(n.Content) {
				next = n.Content[idx]
				found = next
			}
		}
		n = next
	}
	if found == nil {
		return fmt.Sprintf("%s (%s)", l.file, path)
	}
	return fmt.Sprintf("%s:%d:%d (%s)", l.file, found.Line, found.Column, path)
}

// whereKey is like where, but for path's last element (such as
// rules[0].when) it gives the place of the mapping key, not of its value.
func (l locator) whereKey(path string) string {
	dot := strings.LastIndexByte(path, '.')
	if dot < 0 {
		return l.where(path)
	}
	parent, key := path[:dot], path[dot+1:]
	n := l.root
	for _, m := range pathRE.FindAllStringSubmatch(parent, -1) {
		var next *yaml.Node
		switch {
		case n == nil:
		case m[1] != "" && n.Kind == yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == m[1] {
					next = n.Content[i+1]
				}
			}
		case m[2] != "" && n.Kind == yaml.SequenceNode:
			if idx, _ := strconv.Atoi(m[2]); idx < len(n.Content) {
				next = n.Content[idx]
			}
		}
		n = next
	}
	if n != nil && n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Value == key {
				return fmt.Sprintf("%s:%d:%d (%s)", l.file, k.Line, k.Column, path)
			}
		}
	}
	return l.where(path)
}
