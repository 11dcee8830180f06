package replication

import (
	"errors"
	"slices"
	"testing"
)

// TestTxnBufferBindErrs: a streamed transaction remembers the tables it
// described so that the rules do not fit, and the changes it could not map
// because of them; what a later description fixed, or an aborted
// subtransaction did, does not count at its commit.
func TestTxnBufferBindErrs(t *testing.T) {
	t.Parallel()
	errA, errB := errors.New("a"), errors.New("b")
	for _, c := range []struct {
		name string
		run  func(b *txnBuffer)
		want []error
	}{
		{"none", func(b *txnBuffer) {}, nil},
		{"failed description", func(b *txnBuffer) { b.failBind(1, 10, errA) }, []error{errA}},
		{"described again and fits", func(b *txnBuffer) { b.failBind(1, 10, errA); b.clearBind(10) }, nil},
		{"in an aborted subtransaction", func(b *txnBuffer) { b.failBind(2, 10, errA); b.abortSub(2) }, nil},
		{"dropped change outlives the description", func(b *txnBuffer) {
			b.failBind(1, 10, errA)
			b.dropChange(1, errA)
			b.clearBind(10)
		}, []error{errA}},
		{"dropped change in an aborted subtransaction", func(b *txnBuffer) { b.dropChange(3, errB); b.abortSub(3) }, nil},
		{"two tables, deduplicated", func(b *txnBuffer) {
			b.failBind(1, 11, errB)
			b.failBind(1, 10, errA)
			b.dropChange(1, errA)
			b.dropChange(1, errA)
		}, []error{errA, errB}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := &txnBuffer{xid: 1}
			c.run(b)
			if got := b.bindErrs(); !slices.Equal(got, c.want) {
				t.Errorf("bindErrs = %v, want %v", got, c.want)
			}
		})
	}
}

// TestCoveredBySetFlushed: an UnboundError of a transaction that committed
// below the start-up flush, whose patterns and generation keys it flushed,
// is covered; anything else is not.
func TestCoveredBySetFlushed(t *testing.T) {
	t.Parallel()
	s := &Stream{}
	ue := &UnboundError{Table: "public.users", Now: "public.u2", Globs: []string{"user:*"}, Generations: []string{"gen:u"}}
	if s.covered(ue, 100) {
		t.Error("covered without a flush")
	}
	s.SetFlushed(200, []string{"order:*", "user:*"}, []string{"gen:u"})
	for _, c := range []struct {
		name string
		err  error
		lsn  LSN
		want bool
	}{
		{"below the flush", ue, 100, true},
		{"at the flush", ue, 200, false},
		{"unknown position", ue, 0, false},
		{"pattern not flushed", &UnboundError{Globs: []string{"big:*"}}, 100, false},
		{"generation not flushed", &UnboundError{Globs: []string{"user:*"}, Generations: []string{"gen:x"}}, 100, false},
		{"other error", errors.New("column dropped"), 100, false},
	} {
		if got := s.covered(c.err, c.lsn); got != c.want {
			t.Errorf("%s: covered = %v, want %v", c.name, got, c.want)
		}
	}
}
