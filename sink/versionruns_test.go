package sink

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// TestAppendVersionRuns: the version script's arguments after ARGV[1].
func TestAppendVersionRuns(t *testing.T) {
	t.Parallel()
	v := func(lsn replication.LSN, ttl time.Duration) versionItem {
		return versionItem{key: "k", lsn: lsn, ttl: ttl}
	}
	for _, c := range []struct {
		name  string
		items []versionItem
		want  []any
	}{
		{"one", []versionItem{v(0x10, 0)}, []any{int64(0), "0/10", 1}},
		{"a transaction's", []versionItem{v(0x10, time.Hour), v(0x10, time.Hour), v(0x10, time.Hour)}, []any{int64(3_600_000), "0/10", 3}},
		{"single-row transactions", []versionItem{v(0x10, 0), v(0x20, 0), v(0x30, 0)}, []any{int64(0), "0/10", 1, "0/20", 1, "0/30", 1}},
		{"two TTLs, the usual one the most runs'", []versionItem{v(0x10, time.Hour), v(0x10, 0), v(0x20, 0), v(0x30, 0), v(0x30, 0)},
			[]any{int64(0), "0/10", -1, int64(3_600_000), "0/10", 1, "0/20", 1, "0/30", 2}},
		{"an LSN of zero", []versionItem{v(0, 0), v(0, 0)}, []any{int64(0), "0/0", 2}},
	} {
		if got := appendVersionRuns(nil, c.items, testLSNArg); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %#v\nwant %#v", c.name, got, c.want)
		}
	}
}

// TestVersionRunsApply: version raises of several runs (LSNs and TTLs, an
// explicit and the usual TTL) in one script each raise their key.
func TestVersionRunsApply(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	s := New(Config{Client: rdb, WatermarkKey: "wm"}, &ackRecorder{})
	items := []versionItem{
		{key: "v:1", lsn: 0x100, ttl: time.Hour}, {key: "v:2", lsn: 0x100},
		{key: "v:3", lsn: 0x200}, {key: "v:4", lsn: 0x200}, {key: "v:5", lsn: 0x1_00000300},
	}
	rdb.Set(ctx, "v:4", "0/300", 0) // higher already: stays
	p := rdb.Pipeline()
	s.queueVersionChunks(ctx, p, items, 256)
	cmds, err := p.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := cmds[0].(*redis.Cmd).Val(); !reflect.DeepEqual(got, []any{int64(4), int64(0)}) {
		t.Errorf("script returned %v, want [4 0]", got)
	}
	for k, want := range map[string]string{"v:1": "0/100", "v:2": "0/100", "v:3": "0/200", "v:4": "0/300", "v:5": "1/300"} {
		if got := rdb.Get(ctx, k).Val(); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if ttl := rdb.PTTL(ctx, "v:1").Val(); ttl < 59*time.Minute {
		t.Errorf("TTL of v:1 = %v, want 1h", ttl)
	}
	if ttl := rdb.PTTL(ctx, "v:2").Val(); ttl != -1 {
		t.Errorf("TTL of v:2 = %v, want none", ttl)
	}
}
