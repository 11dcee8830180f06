package mapping

import "slices"

// NewlyManagedGlobs returns the SCAN patterns, sorted and without
// duplicates, of the templates in next whose keys prev did not keep
// invalidated: cached values under them may be stale, as at a first start.
//
// A template is covered when prev has a rule on the same table with the
// same template that applied to every change the next rule applies to:
// its ops include the next rule's, its when_changed is absent or includes
// the next rule's, its when condition is absent or the same, and it did not
// skip old keys (unsafe_allow_stale_old_keys) unless the next rule does too.
// Anything else (a new table, a new template, a rule that now applies to
// more changes, a rule that only versioned, published or bumped a
// generation before) counts as new. Rules that neither delete nor refresh
// their keys have nothing to flush.
func NewlyManagedGlobs(prev, next *Mapper) []string {
	var out []string
	for _, r := range next.rules {
		if !r.Actions.keepsKeys() {
			continue // the rule's keys are the application's to keep
		}
		for _, t := range r.Templates {
			if !slices.ContainsFunc(prev.byTable[r.QualifiedTable()], func(p *Rule) bool { return covers(p, r, t.String()) }) {
				out = append(out, t.Glob())
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// covers reports whether rule p, with template tpl, invalidated the keys of
// tpl for every change rule r applies to.
func covers(p, r *Rule, tpl string) bool {
	if !p.Actions.keepsKeys() || !slices.ContainsFunc(p.Templates, func(t *Template) bool { return t.String() == tpl }) {
		return false
	}
	if p.Ops != 0 && (r.Ops == 0 || r.Ops&^p.Ops != 0) {
		return false
	}
	if len(p.WhenChanged) > 0 && (len(r.WhenChanged) == 0 || slices.ContainsFunc(r.WhenChanged, func(c string) bool { return !slices.Contains(p.WhenChanged, c) })) {
		return false
	}
	if p.When != nil && (r.When == nil || r.When.String() != p.When.String()) {
		return false
	}
	return !p.AllowStaleOldKeys || r.AllowStaleOldKeys
}

// NewGenerations returns the generation keys of next that prev did not
// increment: list caches under them may be stale.
func NewGenerations(prev, next *Mapper) []string {
	old := prev.Generations()
	return slices.DeleteFunc(next.Generations(), func(g string) bool { return slices.Contains(old, g) })
}
