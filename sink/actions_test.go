package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// run applies events with a new sink (all queued before it starts, so they
// form as few batches as MaxBatchKeys allows) and returns the sink.
func run(t *testing.T, cfg Config, events ...replication.Event) *Sink {
	t.Helper()
	s := New(cfg, &ackRecorder{})
	in := make(chan replication.Event, len(events))
	for _, ev := range events {
		in <- ev
	}
	close(in)
	if err := s.Run(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	return s
}

func act(kind replication.ActionKind, key string) replication.Action {
	return replication.Action{Kind: kind, Key: key}
}

func newRedis(t *testing.T) (*redis.Client, string) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	t.Cleanup(func() { rdb.Close() })
	return rdb, rd.Addr()
}

func TestVersionOnlyRises(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	v := replication.Action{Kind: replication.ActVersion, Key: "user:1:v"}
	vt := replication.Action{Kind: replication.ActVersion, Key: "user:2:v", TTL: time.Hour}
	run(t, Config{Client: rdb},
		replication.Event{Actions: []replication.Action{v, vt}, LSN: 0x100, End: 0x110},
		replication.Event{Actions: []replication.Action{v}, LSN: 0x1_00000200, End: 0x1_00000210})
	if got := rdb.Get(ctx, "user:1:v").Val(); got != "1/200" {
		t.Errorf("user:1:v = %q, want 1/200 (the later commit in one batch)", got)
	}
	if ttl := rdb.PTTL(ctx, "user:2:v").Val(); ttl <= 59*time.Minute {
		t.Errorf("user:2:v TTL = %v, want about 1h", ttl)
	}
	// A replay of older transactions never lowers a version.
	run(t, Config{Client: rdb}, replication.Event{Actions: []replication.Action{v}, LSN: 0x100, End: 0x110})
	if got := rdb.Get(ctx, "user:1:v").Val(); got != "1/200" {
		t.Errorf("after a replay user:1:v = %q, want 1/200", got)
	}
	run(t, Config{Client: rdb}, replication.Event{Actions: []replication.Action{v}, LSN: 0x1_00000300, End: 0x1_00000310})
	if got := rdb.Get(ctx, "user:1:v").Val(); got != "1/300" {
		t.Errorf("user:1:v = %q, want 1/300", got)
	}
}

// Refreshed values and deletes of the same key in one batch end as the
// last of them in commit order left it.
func TestRefreshFollowsCommitOrder(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	set := func(k, v string) replication.Action {
		return replication.Action{Kind: replication.ActSet, Key: k, Value: v}
	}
	rdb.Set(ctx, "c", "old", 0)
	run(t, Config{Client: rdb},
		replication.Event{Actions: []replication.Action{set("a", "1"), set("b", "1"), set("c", "1")}, LSN: 1, End: 2},
		replication.Event{Actions: []replication.Action{act(replication.ActUnlink, "a")}, LSN: 3, End: 4},
		replication.Event{Keys: []string{"b"}, LSN: 5}, // a plain delete by another rule
		replication.Event{Actions: []replication.Action{set("c", "2"), act(replication.ActUnlink, "d"), set("d", "3")}, LSN: 5, End: 6},
	)
	for k, want := range map[string]string{"a": "", "b": "", "c": "2", "d": "3"} {
		if got := rdb.Get(ctx, k).Val(); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	// TTL with jitter stays within [ttl*(1-jitter), ttl].
	run(t, Config{Client: rdb}, replication.Event{Actions: []replication.Action{{Kind: replication.ActSet, Key: "t", Value: "v", TTL: time.Hour, Jitter: 0.5}}, LSN: 7, End: 8})
	if ttl := rdb.PTTL(ctx, "t").Val(); ttl < 29*time.Minute || ttl > time.Hour {
		t.Errorf("TTL with jitter = %v, want between 30m and 1h", ttl)
	}
}

// With leases, a refreshed key's lease is deleted before the SET.
func TestRefreshDeletesLeaseFirst(t *testing.T) {
	rdb, addr := newRedis(t)
	mon := monitor(t, addr)
	lease := func(k string) string { return "lease:{" + k + "}" }
	run(t, Config{Client: rdb, Companion: lease},
		replication.Event{Actions: []replication.Action{{Kind: replication.ActSet, Key: "k", Value: "v"}}, LSN: 1, End: 2})
	var seen []string
	deadline := time.After(5 * time.Second)
	for len(seen) < 2 {
		select {
		case line := <-mon:
			for _, c := range []string{`"del" "lease:{k}"`, `"set" "k" "v"`} {
				if strings.Contains(strings.ToLower(line), c) { // the SET comes from the refresh script
					seen = append(seen, c)
				}
			}
		case <-deadline:
			t.Fatalf("commands seen: %q", seen)
		}
	}
	if seen[0] != `"del" "lease:{k}"` {
		t.Errorf("order %q: the lease must go before the SET", seen)
	}
}

func TestDeleteCommandPerRule(t *testing.T) {
	rdb, addr := newRedis(t)
	mon := monitor(t, addr)
	ctx := context.Background()
	rdb.MSet(ctx, "u", 1, "d", 1)
	run(t, Config{Client: rdb},
		replication.Event{Keys: []string{"u"}, Actions: []replication.Action{act(replication.ActDel, "d"), act(replication.ActUnlink, "u")}, LSN: 1, End: 2})
	if n := rdb.Exists(ctx, "u", "d").Val(); n != 0 {
		t.Errorf("%d keys left", n)
	}
	want := map[string]bool{`"unlink" "u"`: false, `"del" "d"`: false}
	deadline := time.After(5 * time.Second)
	for slices.Contains(mapValues(want), false) {
		select {
		case line := <-mon:
			for c := range want {
				if strings.HasSuffix(line, c) {
					want[c] = true
				}
			}
		case <-deadline:
			t.Fatalf("commands seen: %v", want)
		}
	}
}

func mapValues(m map[string]bool) []bool {
	var out []bool
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func TestGenerationOncePerBatch(t *testing.T) {
	rdb, _ := newRedis(t)
	g := act(replication.ActIncr, "gen:orders")
	run(t, Config{Client: rdb},
		replication.Event{Actions: []replication.Action{g, g}, LSN: 1, End: 2},
		replication.Event{Actions: []replication.Action{g}, LSN: 3, End: 4})
	if got := rdb.Get(context.Background(), "gen:orders").Val(); got != "1" {
		t.Errorf("gen:orders = %q, want 1 (one bump for the batch)", got)
	}
	s := New(Config{Client: rdb, FlushPatterns: []string{"x:*"}, FlushGenerations: []string{"gen:orders"}}, &ackRecorder{})
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rdb.Get(context.Background(), "gen:orders").Val(); got != "2" {
		t.Errorf("after a flush gen:orders = %q, want 2", got)
	}
}

type message = Message

func pub(kind replication.ActionKind, target, table string, op replication.Op, key string) replication.Action {
	return replication.Action{Kind: kind, Target: target, Table: table, Op: op, Key: key}
}

// txnEvents returns the events of one transaction of n keys of table t,
// split in chunks like the stream splits a large transaction.
func txnEvents(kind replication.ActionKind, lsn replication.LSN, n, chunk int) []replication.Event {
	var evs []replication.Event
	var acts []replication.Action
	for i := range n {
		acts = append(acts, pub(kind, "events", "public.t", replication.OpInsert, fmt.Sprintf("t:%d", i)))
		if len(acts) == chunk {
			evs = append(evs, replication.Event{Actions: acts, LSN: lsn})
			acts = nil
		}
	}
	return append(evs, replication.Event{Actions: acts, LSN: lsn, End: lsn + 8})
}

// The stream gets one entry per transaction (parts of MessageKeys keys),
// with IDs from the commit LSN, and a replay adds nothing.
func TestStreamEntriesAreIdempotent(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	small := replication.Event{Actions: []replication.Action{
		pub(replication.ActStream, "events", "public.users", replication.OpUpdate, "user:1"),
		pub(replication.ActStream, "events", "public.users", replication.OpUpdate, "user:1"), // duplicate
		pub(replication.ActStream, "events", "public.users", replication.OpUpdate, "user:email:a"),
		pub(replication.ActStream, "events", "public.orders", replication.OpDelete, "order:9"),
		{Kind: replication.ActStream, Target: "events", Table: "public.orders", Key: "order:*"}, // TRUNCATE
	}, LSN: 0x100, End: 0x108}
	events := append([]replication.Event{small}, txnEvents(replication.ActStream, 0x200, 2500, 700)...)
	for round := range 2 { // the second round is a replay
		run(t, Config{Client: rdb, MaxBatchKeys: 900}, events...)
		entries, err := rdb.XRange(ctx, "events", "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range entries {
			ids = append(ids, e.ID)
		}
		if want := []string{"256-0", "512-0", "512-1", "512-2"}; !slices.Equal(ids, want) {
			t.Fatalf("round %d: entry IDs %q, want %q", round, ids, want)
		}
		var m message
		if err := json.Unmarshal([]byte(entries[0].Values["event"].(string)), &m); err != nil {
			t.Fatal(err)
		}
		if entries[0].Values["lsn"] != "0/100" || m.LSN != "0/100" || !m.Last || len(m.Changes) != 3 ||
			!slices.Equal(m.Changes[0].Keys, []string{"user:1", "user:email:a"}) || m.Changes[1].Op != "delete" ||
			m.Changes[2].Op != "truncate" || !slices.Equal(m.Changes[2].Patterns, []string{"order:*"}) {
			t.Errorf("first entry %+v", m)
		}
		total := 0
		for i, e := range entries[1:] {
			var p message
			if err := json.Unmarshal([]byte(e.Values["event"].(string)), &p); err != nil {
				t.Fatal(err)
			}
			if p.Part != i || p.Last != (i == 2) {
				t.Errorf("part %d: %+v", i, p)
			}
			total += len(p.Changes[0].Keys)
		}
		if total != 2500 {
			t.Errorf("parts carry %d keys, want 2500", total)
		}
	}
	// MAXLEN ~ caps the stream.
	evs := txnEvents(replication.ActStream, 0x300, 5, 5)
	for i := range evs {
		for j := range evs[i].Actions {
			evs[i].Actions[j].Target, evs[i].Actions[j].MaxLen = "capped", 1
		}
	}
	for i := range 300 {
		ev := evs[0]
		ev.LSN, ev.End = replication.LSN(0x1000+i*16), replication.LSN(0x1000+i*16+8)
		run(t, Config{Client: rdb}, ev)
	}
	if n := rdb.XLen(ctx, "capped").Val(); n >= 300 {
		t.Errorf("capped stream has %d entries, MAXLEN ~ 1 did not trim", n)
	}
}

// subscribed returns a subscription to channel, confirmed by Redis (closed
// when the test ends).
func subscribed(t *testing.T, rdb *redis.Client, channel string) *redis.PubSub {
	t.Helper()
	sub := rdb.Subscribe(context.Background(), channel)
	t.Cleanup(func() { sub.Close() })
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	return sub
}

// Messages are built in a buffer the sink reuses from batch to batch and
// outgrows within one (messages of growing size): every published message
// and stream entry still holds its own transaction's LSN, ID and keys.
func TestMessagesIntactAcrossBatches(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	sub := subscribed(t, rdb, "events")
	const txns = 400
	var events []replication.Event
	keysOf := func(i int) []string {
		var keys []string
		for k := range 1 + i%9 { // 1 to 9 keys, up to ~600 bytes
			keys = append(keys, fmt.Sprintf("user:%d:%s", i, strings.Repeat("x", k*8)))
		}
		return keys
	}
	for i := range txns {
		lsn := replication.LSN(0x1000 + i*0x100)
		var acts []replication.Action
		for _, k := range keysOf(i) {
			acts = append(acts, pub(replication.ActPublish, "events", "public.users", replication.OpUpdate, k),
				pub(replication.ActStream, "events", "public.users", replication.OpUpdate, k))
		}
		events = append(events, replication.Event{Actions: acts, LSN: lsn, End: lsn + 8})
	}
	run(t, Config{Client: rdb, MaxBatchKeys: 37}, events...)
	check := func(what string, i int, body string) {
		t.Helper()
		var m message
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("%s %d: %v in %q", what, i, err, body)
		}
		want := replication.LSN(0x1000 + i*0x100).String()
		if m.LSN != want || !m.Last || m.Part != 0 || len(m.Changes) != 1 || !slices.Equal(m.Changes[0].Keys, keysOf(i)) {
			t.Fatalf("%s %d: %+v, want LSN %s and keys %q", what, i, m, want, keysOf(i))
		}
	}
	entries, err := rdb.XRange(ctx, "events", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != txns {
		t.Fatalf("%d stream entries, want %d", len(entries), txns)
	}
	for i, e := range entries {
		lsn := replication.LSN(0x1000 + i*0x100)
		if e.ID != fmt.Sprintf("%d-0", uint64(lsn)) || e.Values["lsn"] != lsn.String() {
			t.Fatalf("entry %d: ID %s, lsn %v; want %d-0, %s", i, e.ID, e.Values["lsn"], uint64(lsn), lsn)
		}
		check("stream entry", i, e.Values["event"].(string))
	}
	for i := range txns {
		msg, err := sub.ReceiveTimeout(ctx, 5*time.Second)
		if err != nil {
			t.Fatalf("after %d messages: %v", i, err)
		}
		check("message", i, msg.(*redis.Message).Payload)
	}
}

// Publish sends one message per transaction, also when its changes come in
// several events and batches.
func TestPublishOneMessagePerTransaction(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	sub := subscribed(t, rdb, "events")
	events := append(txnEvents(replication.ActPublish, 0x10, 3, 2), txnEvents(replication.ActPublish, 0x20, 1, 1)...)
	run(t, Config{Client: rdb, MaxBatchKeys: 1}, events...)
	var got []message
	for len(got) < 2 {
		msg, err := sub.ReceiveTimeout(ctx, 5*time.Second)
		if err != nil {
			t.Fatalf("after %d messages: %v", len(got), err)
		}
		// Message describes every field the engine writes.
		var m message
		dec := json.NewDecoder(strings.NewReader(msg.(*redis.Message).Payload))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	if got[0].LSN != "0/10" || len(got[0].Changes) != 1 || !slices.Equal(got[0].Changes[0].Keys, []string{"t:0", "t:1", "t:2"}) || !got[0].Last {
		t.Errorf("first message %+v", got[0])
	}
	if got[1].LSN != "0/20" || !slices.Equal(got[1].Changes[0].Keys, []string{"t:0"}) {
		t.Errorf("second message %+v", got[1])
	}
}

func TestAppendLSNMatchesString(t *testing.T) {
	for _, l := range []replication.LSN{0, 0x100, 0xB374D848, 0x16_B374D848, 0xFFFFFFFF_FFFFFFFF, 0xA_0000000F} {
		if got := string(appendLSN(nil, l)); got != l.String() {
			t.Errorf("appendLSN(%d) = %s, want %s", uint64(l), got, l.String())
		}
	}
}

// A new replication session sends a transaction again from its start; the
// parts its first delivery left unsent are dropped, so the stream gets the
// same entries as after a restart of the engine: no key twice, no gap.
func TestStreamAfterSessionRestart(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	full := txnEvents(replication.ActStream, 0x500, 2500, 700) // 4 events, End on the last
	events := append([]replication.Event{}, full[:2]...)       // 1,400 keys, then the session breaks
	events = append(events, replication.Event{Restart: true})
	events = append(events, full...)
	run(t, Config{Client: rdb, MaxBatchKeys: 500}, events...)
	entries, err := rdb.XRange(ctx, "events", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.ID)
		var m message
		if err := json.Unmarshal([]byte(e.Values["event"].(string)), &m); err != nil {
			t.Fatal(err)
		}
		for _, c := range m.Changes {
			for _, k := range c.Keys {
				if seen[k] {
					t.Errorf("key %s in two parts", k)
				}
				seen[k] = true
			}
		}
	}
	if want := []string{"1280-0", "1280-1", "1280-2"}; !slices.Equal(ids, want) || len(seen) != 2500 {
		t.Errorf("entries %q with %d keys, want %q with 2500", ids, len(seen), want)
	}
}

// The client library's batch message decodes back to its keys, whatever
// they hold.
func TestAppendMessageDecodes(t *testing.T) {
	keys := []string{"user:1", `q"uote`, "new\nline", "<&>", "bad \xff utf8"}
	var got struct {
		LSN  string   `json:"lsn"`
		Keys []string `json:"keys"`
	}
	if err := json.Unmarshal(appendMessage(nil, 0x16_B374D848, "keys", keys), &got); err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(keys)
	want[4] = "bad \ufffd utf8" // as encoding/json writes invalid UTF-8
	if got.LSN != "16/B374D848" || !slices.Equal(got.Keys, want) {
		t.Errorf("decoded %+v", got)
	}
}

// TestDeleteAndRefreshInStatementOrder: within one transaction (one
// event), a refresh write and a delete of the same key, by different
// rules, end as the statements' order says, whichever command deletes.
func TestDeleteAndRefreshInStatementOrder(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	set := func(k, v string) replication.Action {
		return replication.Action{Kind: replication.ActSet, Key: k, Value: v}
	}
	for _, useDel := range []bool{false, true} {
		p := fmt.Sprintf("del%v:", useDel)
		rdb.MSet(ctx, p+"a", "old", p+"b", "old", p+"c", "old", p+"d", "old")
		run(t, Config{Client: rdb, UseDel: useDel},
			replication.Event{Actions: []replication.Action{
				set(p+"a", "1"), act(replication.ActDelete, p+"a"), // refresh, then another rule deletes
				act(replication.ActDelete, p+"b"), set(p+"b", "2"), // delete, then refresh
				set(p+"c", "1"), act(replication.ActDelete, p+"c"), set(p+"c", "3"), // refresh, delete, refresh
				set(p+"d", "1"), act(replication.ActUnlink, p+"d"), // the other command, with its own delete_command
			}, LSN: 10, End: 11})
		for k, want := range map[string]string{"a": "", "b": "2", "c": "3", "d": ""} {
			if got := rdb.Get(ctx, p+k).Val(); got != want {
				t.Errorf("UseDel %v: %s = %q, want %q", useDel, k, got, want)
			}
		}
	}
}

// lsnArg keeps the text of the last LSN; a different LSN, or the zero LSN
// first, gets its own.
func TestLSNArgFollowsTheLSN(t *testing.T) {
	s := New(Config{}, &ackRecorder{})
	for _, l := range []replication.LSN{0, 0, 0x16B374D848, 0x16B374D848, 0x16B374D849, 1, 0} {
		if got := s.lsnArg(l); got != l.String() {
			t.Errorf("lsnArg(%d) = %v, want %s", uint64(l), got, l.String())
		}
	}
}

// num, which keeps the two LSNs it parsed last, gives what parsing each
// would: repeated, alternating, invalid and nil texts among new ones.
func TestLuaNumKeepsTheLastTwo(t *testing.T) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	script := redis.NewScript(lsnLua + `
local out = {}
for i, s in ipairs(ARGV) do
  local x = s
  if s == 'nil' then x = nil end
  out[i] = tostring(num(x))
end
return out`)
	in := []string{"0/10", "0/10", "1/0", "0/10", "1/0", "bad", "1/0", "x/1", "0/10", "nil", "0/10", "2/FF", "1/0", "2/FF", "bad", "bad", "0/10", "16/B374D848"}
	want := []string{"16", "16", "4294967296", "16", "4294967296", "-1", "4294967296", "-1", "16", "-1", "16", "8589934847", "4294967296", "8589934847", "-1", "-1", "16", "97500059720"}
	args := make([]any, len(in))
	for i, s := range in {
		args[i] = s
	}
	got, err := script.Eval(context.Background(), rdb, nil, args...).StringSlice()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("num over %q = %q, want %q", in, got, want)
	}
}
