package writebehind

import (
	"errors"
	"fmt"
)

// CheckGlobs reports the mappings whose keys the invalidation engine could
// delete. globs are the SCAN patterns of every key the engine's rules can
// produce (mapping.Mapper.Globs, or mapping.ParseTemplate(k).Glob() of
// each rule key): the engine deletes rendered keys after commits and
// deletes whole patterns when it flushes (first start, lost history,
// TRUNCATE). A write-behind key is the live value, ahead of the database;
// deleting it would drop the increments not yet flushed from what readers
// see (the database still gets them). So no rule may produce one, and no
// rule's pattern may match one: a rule key "post:{id}" next to counters
// "post:{id}:views" is refused, because its flush pattern "post:*" matches
// the counters. Give the two families distinct prefixes (e.g. "post:{id}"
// and "views:post:{id}").
//
// The check is exact for the patterns the engine uses ('*' and escaped
// literals): an error means some key matches both.
func CheckGlobs(globs []string, mappings []Mapping) error {
	ms, err := compileMappings(mappings)
	if err != nil {
		return fmt.Errorf("writebehind: %w", err)
	}
	var errs []error
	for _, m := range ms {
		mg := globTokens(m.tmpl.glob())
		for _, g := range globs {
			if globsIntersect(mg, globTokens(g)) {
				errs = append(errs, fmt.Errorf("the engine's rule pattern %q can match write-behind keys %q (%s.%s): "+
					"the engine would delete counters holding increments not yet flushed; rename the rule's keys "+
					"or the mapping's so that no key matches both", g, m.Key, m.Table, m.Column))
			}
		}
	}
	return errors.Join(errs...)
}

// glob is the template as a SCAN pattern: placeholders become '*', glob
// metacharacters in literals are escaped.
func (t template) glob() string {
	var b []byte
	for i, lit := range t.lits {
		for j := 0; j < len(lit); j++ {
			switch c := lit[j]; c {
			case '*', '?', '[', ']', '\\':
				b = append(b, '\\', c)
			default:
				b = append(b, c)
			}
		}
		if i < len(t.cols) {
			b = append(b, '*')
		}
	}
	return string(b)
}

// globToken is a literal byte or, with star set, '*'.
type globToken struct {
	star bool
	c    byte
}

// globTokens parses a pattern of '*', '\'-escaped bytes and literal
// bytes. '?' and '[...]' are taken as '*' (an over-approximation: they
// match at most what '*' matches), so an intersection is never missed.
func globTokens(g string) []globToken {
	var out []globToken
	for i := 0; i < len(g); i++ {
		switch c := g[i]; {
		case c == '\\' && i+1 < len(g):
			i++
			out = append(out, globToken{c: g[i]})
		case c == '*' || c == '?':
			out = append(out, globToken{star: true})
		case c == '[':
			for i < len(g) && g[i] != ']' {
				i++
			}
			out = append(out, globToken{star: true})
		default:
			out = append(out, globToken{c: c})
		}
	}
	return out
}

// globsIntersect reports whether some string matches both patterns: a
// search over the product of the two patterns' positions, where a star
// may match nothing (advance past it) or swallow a byte the other side
// produces.
func globsIntersect(a, b []globToken) bool {
	n, m := len(a), len(b)
	seen := make([]bool, (n+1)*(m+1))
	stack := [][2]int{{0, 0}}
	push := func(i, j int) {
		if !seen[i*(m+1)+j] {
			seen[i*(m+1)+j] = true
			stack = append(stack, [2]int{i, j})
		}
	}
	seen[0] = true
	for len(stack) > 0 {
		s := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		i, j := s[0], s[1]
		if i == n && j == m {
			return true
		}
		if i < n && a[i].star {
			push(i+1, j)
			if j < m && !b[j].star {
				push(i, j+1)
			}
		}
		if j < m && b[j].star {
			push(i, j+1)
			if i < n && !a[i].star {
				push(i+1, j)
			}
		}
		if i < n && j < m && !a[i].star && !b[j].star && a[i].c == b[j].c {
			push(i+1, j+1)
		}
	}
	return false
}
