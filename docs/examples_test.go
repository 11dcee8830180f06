package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cdcinvalidate/cdcinvalidate/config"
)

// yamlBlock is one ```yaml fenced block of a Markdown file.
type yamlBlock struct {
	file string
	line int
	text string
}

// yamlBlocks returns the ```yaml blocks of a Markdown file.
func yamlBlocks(file, text string) []yamlBlock {
	var blocks []yamlBlock
	var cur *yamlBlock
	for i, ln := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(ln)
		switch {
		case cur == nil && trimmed == "```yaml":
			cur = &yamlBlock{file: file, line: i + 1}
		case cur != nil && trimmed == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += ln + "\n"
		}
	}
	return blocks
}

// TestDocumentedConfigurationsLoad loads every YAML example of the README,
// docs/ and cacheaside/README.md with the engine's own configuration parser,
// so an example cannot drift from what the engine accepts (an option
// renamed, a filter or action removed, a CEL condition that no longer
// compiles). Examples that show one section get minimal postgres, redis and
// rules sections appended, so the parser's line numbers stay those of the
// block.
func TestDocumentedConfigurationsLoad(t *testing.T) {
	files, err := markdownFiles("..")
	if err != nil {
		t.Fatal(err)
	}
	noEnv := func(string) (string, bool) { return "", false }
	top := func(key string) *regexp.Regexp { return regexp.MustCompile(`(?m)^` + key + `:`) }
	n := 0
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range yamlBlocks(f, string(data)) {
			body := b.text
			if !regexp.MustCompile(`(?m)^[a-z_]+:`).MatchString(body) {
				continue // only comments, such as the schema line for editors
			}
			if !top("postgres").MatchString(body) {
				body += "postgres:\n  dsn: postgres://app@127.0.0.1:5432/app\n"
			}
			if !top("redis").MatchString(body) {
				body += "redis:\n  addr: 127.0.0.1:6379\n"
			}
			if !top("rules").MatchString(body) {
				body += "rules:\n  - table: users\n    keys: [\"user:{id}\"]\n"
			}
			if _, err := config.Parse(f, []byte(body), noEnv); err != nil {
				t.Errorf("%s:%d: the YAML example does not load (line numbers below count from the block's first line): %v", b.file, b.line, err)
			}
			n++
		}
	}
	if n < 4 {
		t.Errorf("only %d YAML examples found; expected the README's and the rules, actions and client examples", n)
	}
}
