package mapping

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/config/defaults"
	"github.com/cdcinvalidate/cdcinvalidate/internal/jsonstr"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// Actions say what a rule does with the keys it renders. The zero value
// deletes them with the sink's command (UNLINK unless configured
// otherwise), as a rule without an actions list does.
type Actions struct {
	// Delete deletes the keys; DeleteCommand (replication.ActUnlink or
	// ActDel) overrides the sink's command for this rule (0 keeps it).
	Delete        bool
	DeleteCommand replication.ActionKind

	// Version raises a version key per invalidated key to the commit LSN.
	// VersionKey names it, with {key} standing for the key (default
	// "{key}:v"); VersionTTL, when set, is renewed with every raise.
	Version    bool
	VersionKey string
	VersionTTL time.Duration

	// Publish sends one JSON message per transaction on PublishChannel.
	Publish        bool
	PublishChannel string

	// Stream appends the same event to the Redis Stream StreamKey, its ID
	// derived from the commit LSN, capped at about StreamMaxLen entries (0:
	// no cap).
	Stream       bool
	StreamKey    string
	StreamMaxLen int64

	// Refresh writes the new row as JSON to the keys of the new row (only
	// RefreshColumns when given), deletes the keys of a deleted row and the
	// old keys an UPDATE moved away from. RefreshTTL (0: none) is shortened
	// at random by up to RefreshJitter (a fraction) of it.
	Refresh        bool
	RefreshColumns []string
	RefreshTTL     time.Duration
	RefreshJitter  float64

	// Generation increments GenerationKey once per change (several in one
	// batch are one increment). TruncateGeneration makes a TRUNCATE bump
	// it instead of scanning for the rule's keys.
	Generation         bool
	GenerationKey      string
	TruncateGeneration bool
}

// plain reports whether the rule only deletes with the sink's command.
func (a *Actions) plain() bool {
	return !a.Version && !a.Publish && !a.Stream && !a.Refresh && !a.Generation && a.DeleteCommand == 0
}

// keepsKeys reports whether the actions keep the rendered keys consistent
// (delete or refresh them).
func (a *Actions) keepsKeys() bool { return a.plain() || a.Delete || a.Refresh }

// ActionNames is the list of action names, as rules.yaml spells them.
const ActionNames = "delete, version, publish, stream, refresh, generation"

// DefaultVersionKey names a key's version key.
const DefaultVersionKey = defaults.VersionKey

// CheckVersionKey reports whether a version key template holds {key}
// exactly once, with literal text around it.
func CheckVersionKey(t string) error {
	if strings.Count(t, "{key}") != 1 {
		return fmt.Errorf("version key %q must contain {key} exactly once, e.g. %q", t, DefaultVersionKey)
	}
	if t == "{key}" {
		return fmt.Errorf("version key %q would overwrite the cached value: add text such as %q", t, DefaultVersionKey)
	}
	return nil
}

// appendVersionKey appends the version key of key (tpl "" is the default).
func appendVersionKey(dst []byte, tpl, key string) []byte {
	if tpl == "" {
		tpl = DefaultVersionKey
	}
	pre, post, _ := strings.Cut(tpl, "{key}")
	dst = append(dst, pre...)
	dst = append(dst, key...)
	return append(dst, post...)
}

// usesKeys reports whether the actions act on rendered keys (every action
// but a generation bump does).
func (a *Actions) usesKeys() bool {
	return a.plain() || a.Delete || a.Version || a.Publish || a.Stream || a.Refresh
}

// appendActions renders the actions of rule r for a change whose keys of
// the old and new rows are oldKeys and newKeys (each without duplicates).
// Plain deletes go to keys (without duplicates from start on).
func (m *Mapper) appendActions(keys []string, start int, acts []replication.Action, br *boundRelation, r *boundRule, ch *replication.Change, oldKeys, newKeys []string) ([]string, []replication.Action) {
	a := &r.rule.Actions
	all := append(m.allKeys[:0], oldKeys...)
	for _, k := range newKeys {
		if !slices.Contains(oldKeys, k) {
			all = append(all, k)
		}
	}
	m.allKeys = all
	table := r.rule.qualified
	if a.Version {
		for _, k := range all {
			m.buf = appendVersionKey(m.buf[:0], a.VersionKey, k)
			acts = append(acts, replication.Action{Kind: replication.ActVersion, Key: m.intern(m.buf), TTL: a.VersionTTL})
		}
	}
	if a.Delete || a.plain() {
		switch a.DeleteCommand {
		case 0:
		outer:
			for _, k := range all {
				for _, have := range keys[start:] {
					if have == k {
						continue outer
					}
				}
				keys = append(keys, k)
			}
		default:
			kind := replication.ActUnlink
			if a.DeleteCommand == replication.ActDel {
				kind = replication.ActDel
			}
			for _, k := range all {
				acts = append(acts, replication.Action{Kind: kind, Key: k})
			}
		}
	}
	if a.Refresh {
		acts = m.appendRefresh(acts, br, r, ch, oldKeys, newKeys)
	}
	if a.Generation {
		acts = append(acts, replication.Action{Kind: replication.ActIncr, Key: a.GenerationKey})
	}
	if a.Publish {
		for _, k := range all {
			acts = append(acts, replication.Action{Kind: replication.ActPublish, Op: ch.Op, Key: k, Target: a.PublishChannel, Table: table})
		}
	}
	if a.Stream {
		for _, k := range all {
			acts = append(acts, replication.Action{Kind: replication.ActStream, Op: ch.Op, Key: k, Target: a.StreamKey, Table: table, MaxLen: a.StreamMaxLen})
		}
	}
	return keys, acts
}

// appendRefresh writes the new row to its keys and deletes keys the row
// left. A new row whose selected columns the change does not carry in full
// (an unchanged TOASTed value without an old image) is never written with
// a placeholder: its keys are deleted instead, and counted.
func (m *Mapper) appendRefresh(acts []replication.Action, br *boundRelation, r *boundRule, ch *replication.Change, oldKeys, newKeys []string) []replication.Action {
	a := &r.rule.Actions
	// Deletes of refreshed keys are stamped with the commit LSN like the
	// writes, so a late write of an older row is refused after them.
	for _, k := range oldKeys {
		if !slices.Contains(newKeys, k) {
			acts = append(acts, replication.Action{Kind: replication.ActUnlink, Key: k, Stamp: true})
		}
	}
	if len(newKeys) == 0 {
		return acts
	}
	row, ok := m.rowJSON(br.rel, r.refreshCols, r.refreshNames, ch)
	for _, k := range newKeys {
		if !ok {
			acts = append(acts, replication.Action{Kind: replication.ActUnlink, Key: k, Stamp: true})
			continue
		}
		acts = append(acts, replication.Action{Kind: replication.ActSet, Key: k, Value: row, TTL: a.RefreshTTL, Jitter: a.RefreshJitter})
	}
	if !ok {
		m.refreshFallbacks.Add(uint64(len(newKeys)))
	}
	return acts
}

// PostgreSQL type OIDs that JSON can carry as they are.
const (
	oidBool    = 16
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidOID     = 26
	oidJSON    = 114
	oidFloat4  = 700
	oidFloat8  = 701
	oidNumeric = 1700
	oidJSONB   = 3802
)

// rowJSON renders columns cols (indexes; names their rendered names, see
// boundRule.refreshNames) of the new row as a JSON object:
// numbers and booleans as JSON numbers and booleans, json and jsonb as they
// are, everything else as its PostgreSQL text. It reports false when a
// column's value is not in the change.
func (m *Mapper) rowJSON(rel *replication.Relation, cols []int, names []string, ch *replication.Change) (string, bool) {
	b := m.rowBuf[:0]
	b = append(b, '{')
	for i, idx := range cols {
		if i > 0 {
			b = append(b, ',')
		}
		c := &rel.Columns[idx]
		b = append(b, names[i]...) // "name":
		v, st := value(ch, sideNew, idx)
		switch st {
		case valueUnknown:
			m.rowBuf = b
			return "", false
		case valueNull:
			b = append(b, "null"...)
			continue
		}
		switch c.TypeOID {
		case oidBool:
			switch string(v) {
			case "t":
				b = append(b, "true"...)
			case "f":
				b = append(b, "false"...)
			default:
				b = jsonstr.Append(b, string(v))
			}
		case oidInt2, oidInt4, oidInt8, oidOID, oidFloat4, oidFloat8, oidNumeric:
			if jsonNumber(v) {
				b = append(b, v...)
			} else {
				b = jsonstr.Append(b, string(v)) // NaN, Infinity
			}
		case oidJSON, oidJSONB:
			if json.Valid(v) {
				b = append(b, v...)
			} else {
				b = jsonstr.Append(b, string(v))
			}
		default:
			b = jsonstr.Append(b, string(v))
		}
	}
	b = append(b, '}')
	m.rowBuf = b
	return m.intern(b), true
}

// jsonNumber reports whether v is a number as JSON writes it.
func jsonNumber(v []byte) bool {
	i := 0
	if i < len(v) && v[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			i++
			n++
		}
		return n
	}
	start := i
	if n := digits(); n == 0 || (n > 1 && v[start] == '0') {
		return false
	}
	if i < len(v) && v[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(v) && (v[i] == 'e' || v[i] == 'E') {
		i++
		if i < len(v) && (v[i] == '+' || v[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(v)
}

// AppendTruncate appends the SCAN patterns that cover the keys of a
// truncated relation's rules (those whose ops include truncate) and their
// other actions: a generation bump, and for publish and stream an event
// with op "truncate" whose keys are the patterns. Relations without rules
// produce nothing.
func (m *Mapper) AppendTruncate(globs []string, acts []replication.Action, rel *replication.Relation) ([]string, []replication.Action) {
	start := len(globs)
	for _, r := range m.byTable[rel.QualifiedName()] {
		if !r.Ops.Has(OnTruncate) {
			continue
		}
		a := &r.Actions
		var pats []string
		if !(a.Generation && a.TruncateGeneration) {
			for _, t := range r.Templates {
				g := t.Glob()
				pats = append(pats, g)
				if !slices.Contains(globs[start:], g) {
					globs = append(globs, g)
				}
			}
		}
		if a.Generation {
			acts = append(acts, replication.Action{Kind: replication.ActIncr, Key: a.GenerationKey})
		}
		for _, p := range pats {
			if a.Publish {
				acts = append(acts, replication.Action{Kind: replication.ActPublish, Key: p, Target: a.PublishChannel, Table: r.qualified})
			}
			if a.Stream {
				acts = append(acts, replication.Action{Kind: replication.ActStream, Key: p, Target: a.StreamKey, Table: r.qualified, MaxLen: a.StreamMaxLen})
			}
		}
	}
	return globs, acts
}

// AppendGlobs appends the SCAN patterns that cover every key of a truncated
// relation's rules (those whose ops include truncate).
func (m *Mapper) AppendGlobs(dst []string, rel *replication.Relation) []string {
	dst, _ = m.AppendTruncate(dst, nil, rel)
	return dst
}

// Generations returns the generation keys of every rule, sorted: a flush
// bumps them too.
func (m *Mapper) Generations() []string {
	var out []string
	for _, r := range m.rules {
		if r.Actions.Generation {
			out = append(out, r.Actions.GenerationKey)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// DescribeAction says what an action does, for explain.
func DescribeAction(a *replication.Action) string {
	switch a.Kind {
	case replication.ActUnlink, replication.ActDel:
		return fmt.Sprintf("%s %s", strings.ToUpper(a.Kind.String()), a.Key)
	case replication.ActDelete:
		return "delete " + a.Key
	case replication.ActVersion:
		s := fmt.Sprintf("version: raise %s to the commit LSN", a.Key)
		if a.TTL > 0 {
			s += fmt.Sprintf(" (TTL %s)", a.TTL)
		}
		return s
	case replication.ActPublish:
		return fmt.Sprintf("publish: %s (%s of %s) in the transaction's message on channel %s", a.Key, opText(a.Op), a.Table, a.Target)
	case replication.ActStream:
		s := fmt.Sprintf("stream: %s (%s of %s) in the transaction's entry of stream %s", a.Key, opText(a.Op), a.Table, a.Target)
		if a.MaxLen > 0 {
			s += fmt.Sprintf(" (MAXLEN ~ %d)", a.MaxLen)
		}
		return s
	case replication.ActSet:
		s := fmt.Sprintf("refresh: SET %s %s", a.Key, a.Value)
		if a.TTL > 0 {
			s += fmt.Sprintf(" (TTL %s", a.TTL)
			if a.Jitter > 0 {
				s += fmt.Sprintf(" less up to %g%%", a.Jitter*100)
			}
			s += ")"
		}
		return s
	case replication.ActIncr:
		return fmt.Sprintf("generation: INCR %s", a.Key)
	}
	return a.Kind.String()
}

func opText(op replication.Op) string {
	if op == 0 {
		return "truncate"
	}
	return op.String()
}
