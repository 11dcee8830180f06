package replication

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// seqMapper maps every change to two keys and a refresh, and a TRUNCATE
// to two patterns and a generation bump: enough entries of each kind to
// see their order and where events are cut.
type seqMapper struct{ n int }

func (m *seqMapper) Bind(*Relation) error { return nil }

func (m *seqMapper) AppendChange(keys []string, acts []Action, ch *Change) ([]string, []Action, error) {
	m.n++
	keys = append(keys, fmt.Sprintf("%s:%d:a", ch.Op, m.n), fmt.Sprintf("%s:%d:b", ch.Op, m.n))
	return keys, append(acts, Action{Kind: ActSet, Op: ch.Op, Key: fmt.Sprintf("row:%d", m.n), Value: `{"id":42}`}), nil
}

func (m *seqMapper) AppendTruncate(globs []string, acts []Action, rel *Relation) ([]string, []Action) {
	return append(globs, "users:*", "users:email:*"), append(acts, Action{Kind: ActIncr, Key: "gen:" + rel.Name})
}

func truncUsersMsg(in bool) []byte {
	return msg('T').xid(in, testXid).u32(1).u8(0).u32(16384).b
}

func invalidationMsg(content string) func(bool) []byte {
	return func(in bool) []byte {
		return msg('M').xid(in, testXid).u8(1).u64(testLSN).str(explicitPrefix).u32(uint32(len(content))).raw([]byte(content)).b
	}
}

// summary writes an event as K[keys] A[actions] G[patterns], and its end.
func summary(ev Event) string {
	var b strings.Builder
	if len(ev.Keys) > 0 {
		fmt.Fprintf(&b, "K%v ", ev.Keys)
	}
	if len(ev.Actions) > 0 {
		var as []string
		for _, a := range ev.Actions {
			as = append(as, fmt.Sprintf("%s:%s", a.Kind, a.Key))
		}
		fmt.Fprintf(&b, "A%v ", as)
	}
	if len(ev.Globs) > 0 {
		fmt.Fprintf(&b, "G%v ", ev.Globs)
	}
	if ev.End != 0 {
		b.WriteString("end")
	}
	return strings.TrimSpace(b.String())
}

// TestPlainAndStreamedTransactionsEmitTheSameEvents: one transaction of
// changes, TRUNCATE and invalidation messages gives the same events
// whether pgoutput sends it whole after its commit or streams it in
// progress (buffered in memory or spilled to disk): the same keys, actions
// and patterns in the same order, cut into the same events (whole changes,
// bounded by ChunkKeys and ChunkBytes; patterns in an event of their own,
// after what came before them), with the same LSN, end and size.
func TestPlainAndStreamedTransactionsEmitTheSameEvents(t *testing.T) {
	t.Parallel()
	ins := insertMsg
	upd := func(in bool) []byte { return updateMsg(in, 'O') }
	del := func(in bool) []byte { return deleteMsg(in, 'K') }
	keysMsg := invalidationMsg("m1\nm2")
	fullMsg := invalidationMsg(`{"keys":["m3"],"patterns":["p:*","q:*"],"generations":["g1"]}`)
	for _, c := range []struct {
		name       string
		ops        []func(bool) []byte
		chunkKeys  int
		chunkBytes int
		want       []string // the events, when given
	}{
		{name: "changes, TRUNCATE, message, changes", ops: []func(bool) []byte{ins, upd, truncUsersMsg, keysMsg, del, ins},
			want: []string{
				"K[insert:1:a insert:1:b update:2:a update:2:b] A[refresh:row:1 refresh:row:2]",
				"G[users:* users:email:*]",
				"K[delete:3:a delete:3:b insert:4:a insert:4:b] A[generation:gen:users delete:m1 delete:m2 refresh:row:3 refresh:row:4] end",
			}},
		{name: "cut by ChunkKeys", chunkKeys: 4, ops: []func(bool) []byte{ins, upd, truncUsersMsg, keysMsg, del, ins, upd},
			want: []string{
				"K[insert:1:a insert:1:b update:2:a update:2:b] A[refresh:row:1 refresh:row:2]",
				"G[users:* users:email:*]",
				"K[delete:3:a delete:3:b] A[generation:gen:users delete:m1 delete:m2 refresh:row:3]",
				"K[insert:4:a insert:4:b update:5:a update:5:b] A[refresh:row:4 refresh:row:5]",
				"end",
			}},
		{name: "cut by ChunkBytes", chunkBytes: 150, ops: []func(bool) []byte{ins, upd, truncUsersMsg, keysMsg, del, ins}},
		{name: "message patterns between changes", chunkKeys: 5, ops: []func(bool) []byte{ins, fullMsg, upd, fullMsg, del},
			want: []string{
				"K[insert:1:a insert:1:b] A[refresh:row:1 delete:m3 generation:g1]",
				"G[p:* q:*]",
				"K[update:2:a update:2:b] A[refresh:row:2 delete:m3 generation:g1]",
				"G[p:* q:*]",
				"K[delete:3:a delete:3:b] A[refresh:row:3] end",
			}},
		{name: "TRUNCATE first, described again, message last", ops: []func(bool) []byte{truncUsersMsg, ins, relationMsg, upd, truncUsersMsg, fullMsg}},
		{name: "only a TRUNCATE", ops: []func(bool) []byte{truncUsersMsg}},
		{name: "empty", ops: nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			plain := runTxn(t, c.ops, c.chunkKeys, c.chunkBytes, "plain")
			if c.want != nil {
				var got []string
				for _, ev := range plain {
					got = append(got, summary(ev))
				}
				if !slices.Equal(got, c.want) {
					t.Errorf("plain transaction: events\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
				}
			}
			for _, how := range []string{"streamed", "spilled"} {
				got := runTxn(t, c.ops, c.chunkKeys, c.chunkBytes, how)
				if len(got) != len(plain) {
					t.Errorf("%s: %d events, plain %d", how, len(got), len(plain))
				}
				for i := range max(len(got), len(plain)) {
					var g, p Event
					if i < len(got) {
						g = got[i]
					}
					if i < len(plain) {
						p = plain[i]
					}
					if summary(g) != summary(p) || !slices.Equal(g.Actions, p.Actions) || g.LSN != p.LSN || g.End != p.End ||
						!g.CommitTime.Equal(p.CommitTime) || g.Size != p.Size {
						t.Errorf("%s: event %d is %s (LSN %s, end %s, size %d), plain %s (LSN %s, end %s, size %d)",
							how, i, summary(g), g.LSN, g.End, g.Size, summary(p), p.LSN, p.End, p.Size)
					}
				}
			}
		})
	}
}

// runTxn feeds ops as one transaction, plain or streamed (in two Stream
// Start..Stop blocks; "spilled" with no memory budget), and returns the
// events.
func runTxn(t *testing.T, ops []func(bool) []byte, chunkKeys, chunkBytes int, how string) []Event {
	t.Helper()
	out := make(chan Event, 100)
	ss := boundSession(t, &seqMapper{}, out)
	if chunkKeys > 0 {
		ss.s.cfg.ChunkKeys = chunkKeys
	}
	if chunkBytes > 0 {
		ss.s.cfg.ChunkBytes = chunkBytes
	}
	in := how != "plain"
	if how == "spilled" {
		ss.budget = 0
	}
	var msgs [][]byte
	if in {
		msgs = append(msgs, streamStartMsg(true), relationMsg(true))
		for i, op := range ops {
			if i == len(ops)/2 {
				msgs = append(msgs, streamStopMsg(), streamStartMsg(false))
			}
			msgs = append(msgs, op(true))
		}
		msgs = append(msgs, streamStopMsg(), streamCommitMsg())
	} else {
		msgs = append(msgs, beginMsg(), relationMsg(false))
		for _, op := range ops {
			msgs = append(msgs, op(false))
		}
		msgs = append(msgs, commitMsg())
	}
	for i, data := range msgs {
		if how == "spilled" && i == len(msgs)-1 && len(ops) > 0 {
			if tx := ss.streams[testXid]; tx == nil || tx.buf.file == nil {
				t.Fatal("spilled: the transaction was not spilled")
			}
		}
		if err := ss.handleMessage(data); err != nil {
			t.Fatalf("%s: message %d (%q): %v", how, i, data[0], err)
		}
	}
	var evs []Event
	for len(out) > 0 {
		evs = append(evs, <-out)
	}
	if len(evs) == 0 || evs[len(evs)-1].End != testEndLSN {
		t.Fatalf("%s: the last of %d events does not end the transaction", how, len(evs))
	}
	return evs
}

// constMapper maps every change to two keys and two actions without
// allocating, so that what a transaction costs the session shows.
type constMapper struct{}

func (constMapper) Bind(*Relation) error { return nil }

func (constMapper) AppendChange(keys []string, acts []Action, ch *Change) ([]string, []Action, error) {
	keys = append(keys, "user:1", "user:email:a@x")
	return keys, append(acts, Action{Kind: ActVersion, Key: "user:1:v"}, Action{Kind: ActSet, Key: "row:1", Value: `{"id":1}`}), nil
}

func (constMapper) AppendTruncate(globs []string, acts []Action, _ *Relation) ([]string, []Action) {
	return globs, acts
}

// TestPlainEventsShareBlocks: the events of single-change transactions
// carve their keys and actions from shared blocks (issue 15: each grew
// its own slices from nothing, four allocations for a row under several
// actions), and no event's slices reach another's: each is capped at its
// length, so an append through one leaves the next as it was.
func TestPlainEventsShareBlocks(t *testing.T) {
	// Not parallel: AllocsPerRun counts the whole process.
	out := make(chan Event, 1000)
	ss := boundSession(t, constMapper{}, out)
	txn := [][]byte{beginMsg(), insertMsg(false), commitMsg()}
	feed := func() {
		for i, data := range txn {
			if err := ss.handleMessage(data); err != nil {
				t.Fatalf("message %d (%q): %v", i, data[0], err)
			}
		}
	}
	if err := ss.handleMessage(relationMsg(false)); err != nil {
		t.Fatal(err)
	}
	feed()
	<-out
	allocs := testing.AllocsPerRun(500, func() {
		feed()
		<-out
	})
	if allocs >= 0.5 {
		t.Errorf("%.2f allocations per single-change transaction, want about 1 in %d (one block of each kind)", allocs, entryBlock/4)
	}

	var evs []Event
	for range 300 { // more than a block of actions
		feed()
		evs = append(evs, <-out)
	}
	for i, ev := range evs {
		if summary(ev) != "K[user:1 user:email:a@x] A[version:user:1:v refresh:row:1] end" {
			t.Fatalf("event %d is %s", i, summary(ev))
		}
		if cap(ev.Keys) != len(ev.Keys) || cap(ev.Actions) != len(ev.Actions) {
			t.Fatalf("event %d: capacities %d/%d beyond lengths %d/%d", i, cap(ev.Keys), cap(ev.Actions), len(ev.Keys), len(ev.Actions))
		}
		_ = append(ev.Keys, "another")
		_ = append(ev.Actions, Action{Kind: ActDelete, Key: "another"})
	}
	for i, ev := range evs {
		if summary(ev) != "K[user:1 user:email:a@x] A[version:user:1:v refresh:row:1] end" {
			t.Fatalf("after appends through the other events, event %d is %s", i, summary(ev))
		}
	}
}
