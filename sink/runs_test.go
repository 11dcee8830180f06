package sink

import (
	"context"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// testLSNArg is lsnArg without a sink.
func testLSNArg(lsn replication.LSN) any { return string(appendLSN(nil, lsn)) }

// TestAppendRefreshRuns: the refresh script's item arguments (see
// refreshScript): runs of one commit LSN and kind, the usual kind once.
func TestAppendRefreshRuns(t *testing.T) {
	t.Parallel()
	const day = int64(24 * time.Hour / time.Millisecond)
	w := func(key string, lsn replication.LSN, ttl time.Duration) setItem {
		return setItem{key: key, value: "v" + key, lsn: lsn, ttl: ttl}
	}
	d := func(key string, lsn replication.LSN, ttl time.Duration) setItem {
		return setItem{key: key, lsn: lsn, ttl: ttl, dropped: true}
	}
	// A jittered write (jitter set): its TTL is the test's, from its key.
	j := func(key string, lsn replication.LSN, ms int64) setItem {
		it := w(key, lsn, time.Hour)
		it.jitter = 0.5
		it.value = strconv.FormatInt(ms, 10)
		return it
	}
	// A jittered write of a rule with TTL rule, jittered to ms.
	jr := func(key string, lsn replication.LSN, rule time.Duration, ms int64) setItem {
		it := j(key, lsn, ms)
		it.ttl = rule
		return it
	}
	for _, c := range []struct {
		name  string
		items []setItem
		want  []any
	}{
		{"one write", []setItem{w("a", 0x10, 0)},
			[]any{int64(0), "0/10", 1, "va"}},
		{"a transaction's writes", []setItem{w("a", 0x10, 0), w("b", 0x10, 0), w("c", 0x10, 0)},
			[]any{int64(0), "0/10", 3, "va", "vb", "vc"}},
		{"writes with a TTL", []setItem{w("a", 0x10, time.Minute), w("b", 0x10, time.Minute)},
			[]any{int64(60000), "0/10", 2, "va", "vb"}},
		{"single-row transactions", []setItem{w("a", 0x10, 0), w("b", 0x20, 0), w("c", 0x1_00000030, 0)},
			[]any{int64(0), "0/10", 1, "va", "0/20", 1, "vb", "1/30", 1, "vc"}},
		{"deletes", []setItem{d("a", 0x10, 0), d("b", 0x10, 0)},
			[]any{-day, "0/10", 2}},
		{"a delete of a value that outlives OrderTTL keeps its order key as long", []setItem{d("a", 0x10, 48*time.Hour), d("b", 0x10, 0)},
			[]any{-2 * day, "0/10", 1, "0/10", -1, -day}},
		{"writes and deletes, the usual kind the most runs'", []setItem{d("x", 0x10, 0), w("a", 0x20, 0), d("y", 0x20, 0), w("b", 0x30, 0), w("c", 0x40, 0)},
			[]any{int64(0), "0/10", -1, -day, "0/20", 1, "va", "0/20", -1, -day, "0/30", 1, "vb", "0/40", 1, "vc"}},
		{"a tie: the first run's kind", []setItem{w("a", 0x10, time.Minute), w("b", 0x20, 0)},
			[]any{int64(60000), "0/10", 1, "va", "0/20", -1, int64(0), "vb"}},
		{"jittered writes: a TTL each", []setItem{j("a", 0x10, 3_500_000), j("b", 0x10, 3_400_000), j("c", 0x10, 3_300_000)},
			[]any{"j", "0/10", 3, int64(3_500_000), "3500000", int64(3_400_000), "3400000", int64(3_300_000), "3300000"}},
		{"jittered writes that happen to agree: one TTL", []setItem{j("a", 0x10, 3_500_000), j("b", 0x10, 3_500_000)},
			[]any{int64(3_500_000), "0/10", 2, "3500000", "3500000"}},
		{"a jittered single-row transaction is a plain run", []setItem{j("a", 0x10, 3_500_000), j("b", 0x20, 3_400_000), j("c", 0x30, 3_500_000)},
			[]any{int64(3_500_000), "0/10", 1, "3500000", "0/20", -1, int64(3_400_000), "3400000", "0/30", 1, "3500000"}},
		{"a jittered write of a rule whose TTL outlives OrderTTL: its order key keeps the rule's", []setItem{jr("a", 0x10, 48*time.Hour, 45*3_600_000)},
			[]any{"j172800000", "0/10", 1, int64(45 * 3_600_000), "162000000"}},
		{"writes of a rule whose TTL outlives OrderTTL, and of another", []setItem{w("a", 0x10, 48*time.Hour), w("b", 0x10, 48*time.Hour), w("c", 0x10, 0), w("d", 0x10, 0)},
			[]any{int64(172_800_000), "0/10", 2, "va", "vb", "0/10", -2, int64(0), "vc", "vd"}},
		{"jittered and plain writes, order keys of both rules' TTL", []setItem{jr("a", 0x10, 48*time.Hour, 45*3_600_000), w("b", 0x10, 48*time.Hour)},
			[]any{"j172800000", "0/10", 2, int64(45 * 3_600_000), "162000000", int64(172_800_000), "vb"}},
		{"writes of two TTLs in one transaction", []setItem{w("a", 0x10, time.Minute), w("b", 0x10, time.Hour), w("c", 0x10, time.Minute)},
			[]any{"j", "0/10", 3, int64(60000), "va", int64(3_600_000), "vb", int64(60000), "vc"}},
	} {
		ttl := func(it *setItem) time.Duration {
			if it.jitter > 0 {
				ms, _ := strconv.ParseInt(it.value, 10, 64)
				return time.Duration(ms) * time.Millisecond
			}
			return it.ttl
		}
		got := appendRefreshRuns(nil, c.items, 24*time.Hour, testLSNArg, ttl)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %#v\nwant %#v", c.name, got, c.want)
		}
	}
}

// forBothOrderWrites runs f with the order keys written by SET ... GET
// (Redis 6.2+) and by a GET and a SET (older Redis).
func forBothOrderWrites(t *testing.T, f func(t *testing.T)) {
	for _, setGet := range []bool{true, false} {
		t.Run(fmt.Sprintf("setget=%v", setGet), func(t *testing.T) {
			orderSetGet = setGet
			defer func() { orderSetGet = true }()
			f(t)
		})
	}
}

// TestOrderKeyNeverFalls: a late write or delete with a lower LSN than the
// order key's (a leader that woke up late) leaves the order key and the
// value as they were (the order key with a TTL: SET ... GET puts the
// higher LSN back with the item's order key TTL, or the value's when
// longer); one at the same LSN (a replay) writes; one above raises. With and without the watermark (which fences late writes
// first), and whichever way the order key is written.
func TestOrderKeyNeverFalls(t *testing.T) {
	forBothOrderWrites(t, func(t *testing.T) {
		for _, mark := range []string{"", "wm"} {
			rdb, _ := newRedis(t)
			ctx := context.Background()
			cfg := Config{Client: rdb, WatermarkKey: mark, OrderTTL: time.Hour}
			set := func(k, v string, lsn replication.LSN) replication.Event {
				return replication.Event{Actions: []replication.Action{{Kind: replication.ActSet, Key: k, Value: v}}, LSN: lsn, End: lsn + 8}
			}
			del := func(k string, lsn replication.LSN) replication.Event {
				return replication.Event{Actions: []replication.Action{{Kind: replication.ActUnlink, Key: k, Stamp: true}}, LSN: lsn, End: lsn + 8}
			}
			long := set("f", "f2", 0x200)
			long.Actions[0].TTL = 3 * time.Hour
			run(t, cfg, set("a", "a2", 0x200), set("b", "b2", 0x200), set("c", "c2", 0x1_00000200), del("d", 0x200), long)
			rdb.PExpire(ctx, OrderKey("a"), 30*time.Minute) // to see that a late write leaves the TTL
			if mark != "" {
				rdb.Set(ctx, mark, "0/100", 0) // a watermark below the late writes: only the order keys refuse them
			}
			// The late leader: older writes of a, b and c (c's LSN differs in
			// its upper half), an older write of the deleted d, and in the
			// same script a key of its own.
			late := run(t, cfg, replication.Event{Actions: []replication.Action{
				{Kind: replication.ActSet, Key: "a", Value: "a1"},
				{Kind: replication.ActSet, Key: "c", Value: "c1"},
				{Kind: replication.ActSet, Key: "d", Value: "d1"},
				{Kind: replication.ActSet, Key: "e", Value: "e1"},
				{Kind: replication.ActSet, Key: "f", Value: "f1"},
				{Kind: replication.ActUnlink, Key: "b", Stamp: true},
			}, LSN: 0x180, End: 0x188})
			for k, want := range map[string]string{"a": "a2", "b": "", "c": "c2", "d": "", "e": "e1", "f": "f2"} {
				if got := rdb.Get(ctx, k).Val(); got != want {
					t.Errorf("watermark %q: %s = %q, want %q", mark, k, got, want)
				}
			}
			for k, want := range map[string]string{"a": "0/200", "b": "0/200", "c": "1/200", "d": "0/200", "e": "0/180", "f": "0/200"} {
				if got := rdb.Get(ctx, OrderKey(k)).Val(); got != want {
					t.Errorf("watermark %q: order key of %s = %q, want %q", mark, k, got, want)
				}
			}
			if ttl := rdb.PTTL(ctx, OrderKey("a")).Val(); ttl <= 0 || ttl > time.Hour {
				t.Errorf("watermark %q: order key TTL of a after a late write = %v, want at most OrderTTL", mark, ttl)
			}
			// The order key of a value with a longer TTL than the late write's
			// order key TTL lives as long as the value.
			// The order key's TTL is read first: read later, a TTL is a
			// millisecond shorter for the same expiry.
			if o, v := rdb.PTTL(ctx, OrderKey("f")).Val(), rdb.PTTL(ctx, "f").Val(); v < 179*time.Minute || o < v {
				t.Errorf("watermark %q: f lives %v, its order key %v after a late write, want the order key at least as long", mark, v, o)
			}
			if n := late.Stats.Fenced.Load(); n != 0 {
				t.Errorf("watermark %q: Stats.Fenced = %d, want 0 (the watermark is below the late writes)", mark, n)
			}
			// The same transaction again (a replay) writes; a later one raises.
			run(t, cfg, set("a", "a2'", 0x200), set("b", "b3", 0x300))
			for k, want := range map[string]string{"a": "a2'", "b": "b3"} {
				if got := rdb.Get(ctx, k).Val(); got != want {
					t.Errorf("watermark %q: %s = %q, want %q", mark, k, got, want)
				}
			}
			if got := rdb.Get(ctx, OrderKey("b")).Val(); got != "0/300" {
				t.Errorf("watermark %q: order key of b = %q, want 0/300", mark, got)
			}
			// The watermark past the late writes: fenced (counted), and the
			// order keys do not fall either.
			if mark != "" {
				rdb.Set(ctx, mark, "1/0", 0)
				late := run(t, cfg, set("a", "a1", 0x180), del("b", 0x180))
				if got, o := rdb.Get(ctx, "a").Val(), rdb.Get(ctx, OrderKey("a")).Val(); got != "a2'" || o != "0/200" {
					t.Errorf("fenced late write: a = %q with order key %q, want a2' at 0/200", got, o)
				}
				if got, o := rdb.Get(ctx, "b").Val(), rdb.Get(ctx, OrderKey("b")).Val(); got != "b3" || o != "0/300" {
					t.Errorf("fenced late delete: b = %q with order key %q, want b3 at 0/300", got, o)
				}
				if n := late.Stats.Fenced.Load(); n != 2 {
					t.Errorf("Stats.Fenced = %d, want 2", n)
				}
			}
		}
	})
}

// TestRefreshRunsApply: one script with runs of every kind (writes with
// and without a TTL, jittered writes, deletes, an explicit and the usual
// kind) applies each item as it would alone, with leases and without.
func TestRefreshRunsApply(t *testing.T) {
	forBothOrderWrites(t, func(t *testing.T) {
		for _, leases := range []bool{false, true} {
			rdb, _ := newRedis(t)
			ctx := context.Background()
			cfg := Config{Client: rdb, WatermarkKey: "wm", OrderTTL: time.Hour}
			if leases {
				cfg.Companion = func(k string) string { return "lease:{" + k + "}" }
				cfg.Fence, cfg.FenceValue = time.Minute, "fence"
			}
			for _, k := range []string{"del1", "del2", "long"} {
				rdb.Set(ctx, k, "old", 0)
			}
			var acts []replication.Action
			for i := range 5 {
				acts = append(acts, replication.Action{Kind: replication.ActSet, Key: "plain:" + strconv.Itoa(i), Value: "p"})
			}
			acts = append(acts,
				replication.Action{Kind: replication.ActUnlink, Key: "del1", Stamp: true},
				replication.Action{Kind: replication.ActUnlink, Key: "del2", Stamp: true},
				replication.Action{Kind: replication.ActSet, Key: "ttl", Value: "t", TTL: time.Minute},
				replication.Action{Kind: replication.ActSet, Key: "long", Value: "l", TTL: 3 * time.Hour},
				replication.Action{Kind: replication.ActSet, Key: "jit:1", Value: "j", TTL: time.Hour, Jitter: 0.5},
				replication.Action{Kind: replication.ActSet, Key: "jit:2", Value: "j", TTL: time.Hour, Jitter: 0.5},
				replication.Action{Kind: replication.ActSet, Key: "jit:3", Value: "j", TTL: 4 * time.Hour, Jitter: 0.5},
			)
			s := run(t, cfg,
				replication.Event{Actions: acts, LSN: 0x100, End: 0x108},
				replication.Event{Actions: []replication.Action{{Kind: replication.ActSet, Key: "next", Value: "n"}}, LSN: 0x200, End: 0x208})
			name := fmt.Sprintf("leases %v", leases)
			want := map[string]string{"del1": "", "del2": "", "ttl": "t", "long": "l", "jit:1": "j", "jit:2": "j", "jit:3": "j", "next": "n"}
			for i := range 5 {
				want["plain:"+strconv.Itoa(i)] = "p"
			}
			for k, v := range want {
				if got := rdb.Get(ctx, k).Val(); got != v {
					t.Errorf("%s: %s = %q, want %q", name, k, got, v)
				}
				o := "0/100"
				if k == "next" {
					o = "0/200"
				}
				if got := rdb.Get(ctx, OrderKey(k)).Val(); got != o {
					t.Errorf("%s: order key of %s = %q, want %q", name, k, got, o)
				}
				if leases {
					if got := rdb.Get(ctx, "lease:{"+k+"}").Val(); got != "fence" {
						t.Errorf("%s: lease of %s = %q, want the fence", name, k, got)
					}
				}
			}
			for _, c := range []struct {
				key      string
				min, max time.Duration // 0: no TTL
			}{
				{"plain:0", 0, 0},
				{"ttl", 59 * time.Second, time.Minute},
				{"long", 179 * time.Minute, 3 * time.Hour},
				{"jit:1", 30*time.Minute - time.Second, time.Hour},
				{"jit:3", 2*time.Hour - time.Second, 4 * time.Hour},
				{OrderKey("plain:0"), 59 * time.Minute, time.Hour},
				{OrderKey("del1"), 59 * time.Minute, time.Hour},
				{OrderKey("ttl"), 59 * time.Minute, time.Hour},
				{OrderKey("long"), 179 * time.Minute, 3*time.Hour + time.Second},
				{OrderKey("jit:1"), 59 * time.Minute, time.Hour},
				{OrderKey("jit:3"), 239 * time.Minute, 4*time.Hour + time.Second}, // the rule's TTL, not the jittered one
			} {
				ttl := rdb.PTTL(ctx, c.key).Val()
				if c.max == 0 && ttl != -1 || c.max > 0 && (ttl < c.min || ttl > c.max) {
					t.Errorf("%s: TTL of %s = %v, want %v to %v", name, c.key, ttl, c.min, c.max)
				}
			}
			// An order key lives as long as its value at least (the rule's
			// TTL when longer than OrderTTL). The order key is read first:
			// the value's TTL read a millisecond later can only be shorter
			// (read the other way round, the same expiry once looked 1 ms
			// shorter for the order key and failed CI).
			for _, k := range []string{"jit:3", "long"} {
				o := rdb.PTTL(ctx, OrderKey(k)).Val()
				if v := rdb.PTTL(ctx, k).Val(); o < v || o < 59*time.Minute {
					t.Errorf("%s: order key of %s lives %v, its value %v", name, k, o, v)
				}
			}
			if n := s.Stats.Fenced.Load(); n != 0 {
				t.Errorf("%s: Stats.Fenced = %d", name, n)
			}
		}
	})
}

// TestOrderKeyOfAnotherType: an order key that is not a string (written by
// something else) fails the script with Redis's error, as a GET did
// before, whichever way order keys are written: with SET ... GET the
// redis.pcall's error sends the script to the GET, which raises it.
func TestOrderKeyOfAnotherType(t *testing.T) {
	forBothOrderWrites(t, func(t *testing.T) {
		rdb, _ := newRedis(t)
		ctx := context.Background()
		rdb.HSet(ctx, OrderKey("a"), "f", "v")
		s := New(Config{Client: rdb}, &ackRecorder{})
		p := rdb.Pipeline()
		s.queueRefreshChunks(ctx, p, []setItem{{key: "a", value: "v", lsn: 0x100}}, 256, time.Hour)
		_, err := p.Exec(ctx)
		if err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
			t.Errorf("err = %v, want WRONGTYPE", err)
		}
		if n := rdb.Exists(ctx, "a").Val(); n != 0 {
			t.Errorf("a was written")
		}
	})
}
