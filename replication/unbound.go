package replication

import (
	"errors"
	"slices"

	"github.com/cdcinvalidate/cdcinvalidate/internal/failpoint"
)

// UnboundError says that a table the rules are bound to arrives under a
// name no rule of it names: ALTER TABLE ... RENAME or SET SCHEMA, or a
// publication that stopped publishing partitions through their root. Its
// changes cannot be mapped, so the stream stops before confirming them
// (a dropped column stops it the same way). Globs and Generations are what
// the table's rules manage: once a change of the table was not applied,
// their keys may be stale until they are flushed.
type UnboundError struct {
	Table       string // the name the rules know, "schema.table"
	Now         string // the name the server sent, "schema.table"
	Globs       []string
	Generations []string
	Msg         string // what happened and the fix
}

func (e *UnboundError) Error() string { return e.Msg }

// covered reports whether err is an UnboundError for a transaction that
// committed at lsn, whose keys a flush at this start already deleted: the
// flush came after the commit, so skipping the change loses nothing.
func (s *Stream) covered(err error, lsn LSN) bool {
	var ue *UnboundError
	if !errors.As(err, &ue) {
		return false
	}
	if failpoint.Unsafe("ignore-unbound") {
		return true // the old bug, for the fault suite's negative control
	}
	if lsn == 0 || lsn >= s.coveredBelow {
		return false
	}
	for _, g := range ue.Globs {
		if !slices.Contains(s.coveredGlobs, g) {
			return false
		}
	}
	for _, g := range ue.Generations {
		if !slices.Contains(s.coveredGens, g) {
			return false
		}
	}
	return true
}

// SetFlushed tells the stream that the keys of globs were deleted and
// gens incremented at this start, after every transaction that commits
// below lsn: a table that such a transaction shows under another name
// (renamed while the engine was stopped, and renamed back) needs no stop,
// since the flush covered its changes. Call it before Run, or from the
// sink's session checks before the session's Ready is closed (the session
// waits for it, so the stream reads what was set).
func (s *Stream) SetFlushed(lsn LSN, globs, gens []string) {
	s.coveredBelow, s.coveredGlobs, s.coveredGens = lsn, slices.Clone(globs), slices.Clone(gens)
}
