package mapping

import "slices"

// Globs returns the SCAN patterns that cover every key any rule can
// produce, sorted and without duplicates: what a flush must delete when
// the engine cannot prove it saw every change.
func (m *Mapper) Globs() []string {
	var out []string
	for _, rules := range m.byTable {
		for _, r := range rules {
			for _, t := range r.Templates {
				out = append(out, t.Glob())
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
