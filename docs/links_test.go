package docs

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// linkRE matches inline Markdown links and images: [text](target) or
// [text](target "title"). Reference-style links are not used in this
// repository.
var linkRE = regexp.MustCompile(`\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// codeSpanRE matches inline code, which is never a link.
var codeSpanRE = regexp.MustCompile("`[^`]*`")

// slug returns the anchor GitHub gives a heading: lower case, characters
// other than letters, digits, spaces, hyphens and underscores dropped
// (backticks, colons, dots, slashes), spaces turned into hyphens.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// parsed is what the link check needs from one Markdown file.
type parsed struct {
	anchors map[string]bool
	links   []link
}

type link struct {
	line   int
	target string
}

// parse reads the headings (as anchors, with GitHub's -1, -2 suffixes for
// repeated ones) and the links of a Markdown file, outside fenced code
// blocks and inline code.
func parse(text string) parsed {
	p := parsed{anchors: map[string]bool{}}
	seen := map[string]int{}
	fence := ""
	for i, ln := range strings.Split(text, "\n") {
		trimmed := strings.TrimLeft(ln, " ")
		if fence != "" {
			if strings.HasPrefix(trimmed, fence) {
				fence = ""
			}
			continue
		}
		if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
			fence = trimmed[:3]
			continue
		}
		if h := strings.TrimLeft(ln, "#"); len(h) < len(ln) && len(ln)-len(h) <= 6 && strings.HasPrefix(h, " ") {
			s := slug(h)
			if n := seen[s]; n > 0 {
				p.anchors[fmt.Sprintf("%s-%d", s, n)] = true
			} else {
				p.anchors[s] = true
			}
			seen[s]++
		}
		for _, m := range linkRE.FindAllStringSubmatch(codeSpanRE.ReplaceAllString(ln, ""), -1) {
			p.links = append(p.links, link{line: i + 1, target: m[1]})
		}
	}
	return p
}

// checkLinks checks the relative links of the Markdown files (paths relative
// to root) and returns one problem per broken link: a missing file, or an
// anchor that no heading of the target file produces.
func checkLinks(root string, files []string) ([]string, error) {
	cache := map[string]parsed{}
	load := func(rel string) (parsed, error) {
		if p, ok := cache[rel]; ok {
			return p, nil
		}
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return parsed{}, err
		}
		p := parse(string(data))
		cache[rel] = p
		return p, nil
	}
	var problems []string
	for _, f := range files {
		p, err := load(f)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f, err)
		}
		for _, l := range p.links {
			t := l.target
			if strings.Contains(t, "://") || strings.HasPrefix(t, "mailto:") {
				continue
			}
			path, anchor, _ := strings.Cut(t, "#")
			target := f
			if path != "" {
				target = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(f), path)))
				if target == ".." || strings.HasPrefix(target, "../") {
					problems = append(problems, fmt.Sprintf("%s:%d: link %q leaves the repository", f, l.line, t))
					continue
				}
				st, err := os.Stat(filepath.Join(root, target))
				if err != nil {
					problems = append(problems, fmt.Sprintf("%s:%d: link %q: %s does not exist", f, l.line, t, target))
					continue
				}
				if st.IsDir() {
					if anchor != "" {
						problems = append(problems, fmt.Sprintf("%s:%d: link %q: an anchor on a directory", f, l.line, t))
					}
					continue
				}
			}
			if anchor == "" {
				continue
			}
			if !strings.HasSuffix(target, ".md") {
				problems = append(problems, fmt.Sprintf("%s:%d: link %q: an anchor into %s, which is not Markdown", f, l.line, t, target))
				continue
			}
			tp, err := load(target)
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", target, err)
			}
			if !tp.anchors[anchor] {
				problems = append(problems, fmt.Sprintf("%s:%d: link %q: %s has no heading with the anchor #%s", f, l.line, t, target, anchor))
			}
		}
	}
	return problems, nil
}

// markdownFiles lists the Markdown files of the repository (relative to
// root, with forward slashes), skipping hidden directories and testdata.
func markdownFiles(root string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), ".md") {
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	return files, err
}

// TestLinksResolve checks every relative link and anchor of the README, the
// manual in docs/, cacheaside/README.md and any other Markdown file of the
// repository.
func TestLinksResolve(t *testing.T) {
	files, err := markdownFiles("..")
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"README.md", "docs/README.md", "docs/configuration.md", "docs/operations.md", "cacheaside/README.md"} {
		if !slices.Contains(files, must) {
			t.Errorf("%s is missing: the README and the manual link to it", must)
		}
	}
	problems, err := checkLinks("..", files)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// TestSlug pins the heading anchors GitHub generates for the kinds of
// headings the manual uses.
func TestSlug(t *testing.T) {
	for _, c := range []struct{ heading, want string }{
		{"Quick start with a real database", "quick-start-with-a-real-database"},
		{"`when`: row conditions", "when-row-conditions"},
		{"`ops` and `when_changed`", "ops-and-when_changed"},
		{"`postgres`", "postgres"},
		{"Client library: cacheaside", "client-library-cacheaside"},
		{"`cdcinvalidate bench`", "cdcinvalidate-bench"},
		{"Engine, library and CI", "engine-library-and-ci"},
		{"  Spaces  around ", "spaces--around"},
		{"PostgreSQL 14-18 (matrix)", "postgresql-14-18-matrix"},
		{"Café déjà vu", "café-déjà-vu"},
	} {
		if got := slug(c.heading); got != c.want {
			t.Errorf("slug(%q) = %q, want %q", c.heading, got, c.want)
		}
	}
}

// TestCheckLinksFindsBrokenLinks is the negative control: links to a missing
// file, a missing anchor, a heading inside a code block and repeated
// headings are told apart.
func TestCheckLinksFindsBrokenLinks(t *testing.T) {
	root := t.TempDir()
	write := func(name, text string) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("README.md", "# Top\n\n"+
		"[ok](docs/a.md#second-part) [ok](#top) [ok](docs/) [ok](https://example.com/x#y)\n"+
		"[missing file](docs/nope.md) [missing anchor](docs/a.md#nope)\n"+
		"[in code block](docs/a.md#fenced) [repeat](docs/a.md#part-1) [too many](docs/a.md#part-2)\n"+
		"`[not a link](nowhere.md)`\n"+
		"```\n[not a link either](nowhere.md)\n```\n")
	write("docs/a.md", "# A\n\n## Second part\n\n## Part\n\n## Part\n\n```\n# fenced\n```\n[up](../README.md#top) [out](../../x.md)\n")
	files, err := markdownFiles(root)
	if err != nil {
		t.Fatal(err)
	}
	problems, err := checkLinks(root, files)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`README.md:4: link "docs/nope.md": docs/nope.md does not exist`,
		`README.md:4: link "docs/a.md#nope": docs/a.md has no heading with the anchor #nope`,
		`README.md:5: link "docs/a.md#fenced": docs/a.md has no heading with the anchor #fenced`,
		`README.md:5: link "docs/a.md#part-2": docs/a.md has no heading with the anchor #part-2`,
		`docs/a.md:12: link "../../x.md" leaves the repository`,
	}
	if !slices.Equal(problems, want) {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(problems, "\n"), strings.Join(want, "\n"))
	}
}
