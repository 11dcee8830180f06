package sink

import (
	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"

	"context"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// crc16 is Redis Cluster's key hash (CRC16-XMODEM).
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// clusterSlot is the Redis Cluster slot of a key.
func clusterSlot(key string) uint16 {
	if tag, ok := hashTag(key); ok {
		key = tag
	}
	return crc16(key) % 16384
}

func TestOrderKey(t *testing.T) {
	t.Parallel()
	if crc16("123456789") != 0x31C3 { // the reference value of CRC16-XMODEM
		t.Fatal("crc16 is not CRC16-XMODEM")
	}
	for _, c := range []struct {
		key, want string
		sameSlot  bool
	}{
		{"user:42", "cdcinvalidate:lsn:{user:42}", true},
		{"user:{42}:orders", "cdcinvalidate:lsn:{42}user:{42}:orders", true},
		{"{a}", "cdcinvalidate:lsn:{a}{a}", true},
		{"a{b", "cdcinvalidate:lsn:{a{b}", true},                              // unclosed brace: the whole key is hashed
		{"a{}b", "cdcinvalidate:lsn:{" + keyslot.Tag("a{}b") + "}a{}b", true}, // empty tag, and a "}": a tag of its slot
		{"a}b{c}", "cdcinvalidate:lsn:{c}a}b{c}", true},
		{"x}y", "cdcinvalidate:lsn:{" + keyslot.Tag("x}y") + "}x}y", true},
		{"", "cdcinvalidate:lsn:{}", false},
	} {
		got := OrderKey(c.key)
		if got != c.want {
			t.Errorf("OrderKey(%q) = %q, want %q", c.key, got, c.want)
		}
		if same := clusterSlot(got) == clusterSlot(c.key); same != c.sameSlot {
			t.Errorf("OrderKey(%q) in the same slot: %v, want %v", c.key, same, c.sameSlot)
		}
	}
	seen := map[string]string{}
	for _, k := range []string{"a", "{a}", "a}", "{a}:x", "{}a", "a{}", "{a", "}{a}", "x{a}", "{a}x"} {
		o := OrderKey(k)
		if prev, dup := seen[o]; dup {
			t.Errorf("OrderKey(%q) = OrderKey(%q) = %q", k, prev, o)
		}
		seen[o] = k
	}
}

// FuzzOrderKey: two different keys never share an order key, and a
// (non-empty) key that Cluster can place with its order key is placed with
// it.
func FuzzOrderKey(f *testing.F) {
	f.Add("user:1", "user:{1}")
	f.Add("a}b", "{}a}b")
	f.Add("{x}", "x")
	f.Fuzz(func(t *testing.T, a, b string) {
		if a != b && OrderKey(a) == OrderKey(b) {
			t.Fatalf("OrderKey(%q) = OrderKey(%q) = %q", a, b, OrderKey(a))
		}
		if _, tagged := hashTag(a); a != "" && (tagged || !containsByte(a, '}')) && clusterSlot(OrderKey(a)) != clusterSlot(a) {
			t.Fatalf("OrderKey(%q) = %q is in another slot", a, OrderKey(a))
		}
	})
}

func containsByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}

// TestRefreshInCommitOrderAcrossEngines: two sinks (a new leader and an old
// one that woke up late) write the same keys. A write older than the one
// recorded is dropped, a delete of a refreshed key refuses older writes
// after it, the same transaction again (a replay) writes again, and order
// keys live at least OrderTTL.
func TestRefreshInCommitOrderAcrossEngines(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	set := func(k, v string, ttl time.Duration) replication.Action {
		return replication.Action{Kind: replication.ActSet, Key: k, Value: v, TTL: ttl}
	}
	del := func(k string) replication.Action {
		return replication.Action{Kind: replication.ActUnlink, Key: k, Stamp: true}
	}
	// The new leader: newer rows, a delete, a row whose value outlives OrderTTL.
	run(t, Config{Client: rdb, OrderTTL: time.Hour},
		replication.Event{Actions: []replication.Action{set("a", "a1", 0), set("b", "b1", 0), set("c", "c1", 0)}, LSN: 0x100, End: 0x108},
		replication.Event{Actions: []replication.Action{set("a", "a2", 0), del("b"), set("l", "l2", 3*time.Hour)}, LSN: 0x200, End: 0x208},
	)
	// The old leader wakes up with the transaction at 0x100 in hand, and
	// one at 0x200 (the same transaction as the new leader's).
	run(t, Config{Client: rdb, OrderTTL: time.Hour},
		replication.Event{Actions: []replication.Action{set("a", "a1", 0), set("b", "b1", 0), set("c", "c1", 0)}, LSN: 0x100, End: 0x108},
		replication.Event{Actions: []replication.Action{set("l", "l2", 3*time.Hour)}, LSN: 0x200, End: 0x208},
	)
	// c and l: the same transaction again (a replay) writes again.
	for k, want := range map[string]string{"a": "a2", "b": "", "c": "c1", "l": "l2"} {
		if got := rdb.Get(ctx, k).Val(); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	for k, want := range map[string]string{"a": "0/200", "b": "0/200", "c": "0/100", "l": "0/200"} {
		if got := rdb.Get(ctx, OrderKey(k)).Val(); got != want {
			t.Errorf("order key of %s = %q, want %q", k, got, want)
		}
	}
	if ttl := rdb.PTTL(ctx, OrderKey("b")).Val(); ttl < 59*time.Minute || ttl > time.Hour {
		t.Errorf("order key TTL of a deleted key = %v, want OrderTTL (1h)", ttl)
	}
	if ttl := rdb.PTTL(ctx, OrderKey("l")).Val(); ttl < 179*time.Minute {
		t.Errorf("order key TTL of a value with a 3h TTL = %v, want 3h", ttl)
	}
	// A plain delete by another rule, later in the batch than a refresh
	// write, is recorded at its own commit LSN.
	run(t, Config{Client: rdb},
		replication.Event{Actions: []replication.Action{set("d", "d1", 0)}, LSN: 0x280, End: 0x288},
		replication.Event{Keys: []string{"d"}, LSN: 0x290, End: 0x298})
	run(t, Config{Client: rdb}, replication.Event{Actions: []replication.Action{set("d", "d1", 0)}, LSN: 0x280, End: 0x288})
	if got, o := rdb.Get(ctx, "d").Val(), rdb.Get(ctx, OrderKey("d")).Val(); got != "" || o != "0/290" {
		t.Errorf("d = %q with order key %q, want deleted at 0/290", got, o)
	}
	// A newer write after all that is made.
	run(t, Config{Client: rdb}, replication.Event{Actions: []replication.Action{set("b", "b3", 0)}, LSN: 0x300, End: 0x308})
	if got := rdb.Get(ctx, "b").Val(); got != "b3" {
		t.Errorf("b = %q after a newer write, want b3", got)
	}
	// A flush removes the order keys of its patterns with the keys.
	s := New(Config{Client: rdb, FlushPatterns: []string{"?"}}, &ackRecorder{})
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, OrderKey("a"), OrderKey("b"), OrderKey("c")).Val(); n != 0 {
		t.Errorf("%d order keys left after a flush", n)
	}
}

// TestActionsFencedByWatermarkAfterTruncate: a leader paused with a
// transaction's version raise and refresh write in hand wakes up after
// another instance applied that transaction and a newer TRUNCATE (the
// watermark past both). Its raise must not set the version key that
// TRUNCATE deleted back to the older LSN, nor its write put back the row
// that TRUNCATE removed (the order key, which TRUNCATE keeps, records the
// same transaction, so it alone would let the write through). A
// transaction the watermark has not passed still raises and writes, and
// deletes of passed ones still delete.
func TestActionsFencedByWatermarkAfterTruncate(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	cfg := Config{Client: rdb, WatermarkKey: "wm"}
	old := replication.Event{Actions: []replication.Action{
		{Kind: replication.ActVersion, Key: "t:1:v"},
		{Kind: replication.ActSet, Key: "t:1", Value: "old"},
		{Kind: replication.ActUnlink, Key: "u:1", Stamp: true},
	}, LSN: 0x100, End: 0x108}
	// The new leader applies the transaction, then a TRUNCATE of t:*.
	run(t, cfg, old, replication.Event{Globs: []string{"t:*"}, LSN: 0x200, End: 0x208})
	if n := rdb.Exists(ctx, "t:1", "t:1:v").Val(); n != 0 {
		t.Fatalf("the TRUNCATE left %d keys", n)
	}
	if got := rdb.Get(ctx, "wm").Val(); got != "0/208" {
		t.Fatalf("watermark = %q, want 0/208", got)
	}
	rdb.Set(ctx, "u:1", "newer", 0) // a value the paused leader's late delete of a refreshed key must not remove
	// The paused leader wakes up with the transaction at 0x100, and
	// goes on with one the watermark has not passed.
	zombie := run(t, cfg, old, replication.Event{Actions: []replication.Action{
		{Kind: replication.ActVersion, Key: "t:2:v"},
		{Kind: replication.ActSet, Key: "t:2", Value: "new"},
	}, LSN: 0x300, End: 0x308})
	for k, want := range map[string]string{"t:1": "", "t:1:v": "", "u:1": "newer", "t:2": "new", "t:2:v": "0/300"} {
		if got := rdb.Get(ctx, k).Val(); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if got := rdb.Get(ctx, "wm").Val(); got != "0/308" {
		t.Errorf("watermark = %q, want 0/308", got)
	}
	if n := zombie.Stats.Fenced.Load(); n != 3 {
		t.Errorf("Stats.Fenced = %d, want 3 (the raise, the write and the delete)", n)
	}
	// Without a watermark nothing is fenced (documented): the same late
	// transaction raises and writes.
	run(t, Config{Client: rdb}, old)
	if got := rdb.Get(ctx, "t:1").Val(); got != "old" {
		t.Errorf("without a watermark t:1 = %q, want old (nothing to fence with)", got)
	}
}

// A replay after a restart starts at the slot's position, below the
// watermark: the refresh fallback's delete of a key (a change that did not
// carry every refreshed column) and the key's later write are both
// behind the watermark. Both must be skipped, or neither: deleting and
// then skipping the write left the key missing (CI,
// TestActionsKill9AtRandomMoments). Each event in its own batch, as a
// replay may cut them; and once in one batch.
func TestReplayBelowWatermarkKeepsRefreshedValue(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	cfg := Config{Client: rdb, WatermarkKey: "wm"}
	del := replication.Event{Actions: []replication.Action{{Kind: replication.ActUnlink, Key: "r:1", Stamp: true}}, LSN: 0x100, End: 0x108}
	set := replication.Event{Actions: []replication.Action{{Kind: replication.ActSet, Key: "r:1", Value: "v2"}}, LSN: 0x200, End: 0x208}
	for _, batches := range [][][]replication.Event{{{del}, {set}}, {{del, set}}} {
		rdb.FlushAll(ctx)
		run(t, cfg, del, set) // the first run: applied, the watermark at 0/208
		if got := rdb.Get(ctx, "wm").Val(); got != "0/208" {
			t.Fatalf("watermark = %q, want 0/208", got)
		}
		for _, b := range batches { // the replay, from the slot's position
			run(t, cfg, b...)
		}
		if got, err := rdb.Get(ctx, "r:1").Result(); err != nil || got != "v2" {
			t.Errorf("replay in %d batches: r:1 = %q (%v), want v2 (its last write)", len(batches), got, err)
		}
	}
	// Past the watermark the delete is made: a newer transaction.
	run(t, cfg, replication.Event{Actions: del.Actions, LSN: 0x300, End: 0x308})
	if n := rdb.Exists(ctx, "r:1").Val(); n != 0 {
		t.Errorf("a delete past the watermark left r:1")
	}
}

// fencedObs records what the sink reports as fenced late writes.
type fencedObs struct {
	nopObserver
	fenced map[string]int
}

func (o *fencedObs) Fenced(what string, n int) { o.fenced[what] += n }

// A restart replays from the slot's position, which trails the watermark:
// what the watermark fences of it is a replay, not a paused leader's late
// writes, and must not reach the metric (and its alert). The same writes
// after a session that began below them (a paused leader's) are reported.
func TestReplayFencedIsNotReportedAsLate(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	set := replication.Event{Actions: []replication.Action{
		{Kind: replication.ActVersion, Key: "r:1:v"},
		{Kind: replication.ActSet, Key: "r:1", Value: "v1"},
	}, LSN: 0x100, End: 0x108}
	run(t, Config{Client: rdb, WatermarkKey: "wm"}, set, replication.Event{Globs: []string{"x:*"}, LSN: 0x200, End: 0x208})
	for _, c := range []struct {
		name     string
		start    replication.LSN
		wantLate int
	}{
		{"restart below the watermark (a replay)", 0x100, 0},
		{"no session start (a paused leader's writes)", 0, 2},
	} {
		obs := &fencedObs{fenced: map[string]int{}}
		s := New(Config{Client: rdb, WatermarkKey: "wm", Observer: obs}, &ackRecorder{})
		in := make(chan replication.Event, 4)
		if c.start != 0 {
			in <- replication.Event{Restart: true, Start: c.start, Ready: make(chan struct{})}
		}
		in <- set
		in <- replication.Event{Globs: []string{"x:*"}, LSN: 0x200, End: 0x208}
		close(in)
		if err := s.Run(ctx, in); err != nil {
			t.Fatal(err)
		}
		// The raise finds its version key at its LSN already (nothing to
		// fence); the write is fenced, and the TRUNCATE superseded.
		if got := s.Stats.Fenced.Load(); got != 1 {
			t.Errorf("%s: Stats.Fenced = %d, want 1 (the write)", c.name, got)
		}
		if got := s.Stats.Superseded.Load(); got != 1 {
			t.Errorf("%s: Stats.Superseded = %d, want 1 (the TRUNCATE)", c.name, got)
		}
		if got := obs.fenced["action"] + obs.fenced["truncate"]; got != c.wantLate {
			t.Errorf("%s: reported late writes %v, want %d in all", c.name, obs.fenced, c.wantLate)
		}
	}
	if got := rdb.Get(ctx, "r:1").Val(); got != "v1" {
		t.Errorf("r:1 = %q, want v1", got)
	}
}
