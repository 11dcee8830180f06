package sink

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

type ackRecorder struct{ acked []replication.LSN }

func (a *ackRecorder) Ack(l replication.LSN) { a.acked = append(a.acked, l) }

// monitor returns the commands Redis executes, read through MONITOR.
func monitor(t *testing.T, addr string) <-chan string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		t.Fatalf("MONITOR: %q %v", line, err)
	}
	out := make(chan string, 1000)
	go func() {
		defer close(out)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			out <- strings.TrimSpace(line)
		}
	}()
	return out
}

// TestLeaseGoesWithItsKey checks the ordering the client library relies
// on: each lease is deleted in the same command as its key, before it, and
// TRUNCATE scans lease patterns before key patterns. Otherwise a fill that
// loaded the old row could land between the key's and the lease's delete.
func TestLeaseGoesWithItsKey(t *testing.T) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	mon := monitor(t, rd.Addr())
	ack := &ackRecorder{}
	s := New(Config{Client: rdb, KeysPerCommand: 3, Companion: func(k string) string { return "lease:{" + k + "}" }}, ack)
	in := make(chan replication.Event, 4)
	in <- replication.Event{Keys: []string{"a", "b", "c"}, End: 10}
	in <- replication.Event{Globs: []string{"t:*"}, End: 20}
	close(in)
	if err := s.Run(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ack.acked) != "[0/A 0/14]" {
		t.Fatalf("acked %v", ack.acked)
	}
	var cmds []string
	deadline := time.After(5 * time.Second)
	for len(cmds) < 4 {
		select {
		case line := <-mon:
			if i := strings.Index(line, `"`); i >= 0 && (strings.Contains(line, `"unlink"`) || strings.Contains(line, `"scan"`)) {
				cmds = append(cmds, line[i:])
			}
		case <-deadline:
			t.Fatalf("commands seen: %q", cmds)
		}
	}
	want := []string{
		`"unlink" "lease:{a}" "a"`, `"unlink" "lease:{b}" "b"`, `"unlink" "lease:{c}" "c"`,
		`"scan" "0" "match" "lease:{t:*}" "count" "1000"`,
	}
	for i, w := range want {
		if cmds[i] != w {
			t.Errorf("command %d = %s, want %s", i, cmds[i], w)
		}
	}
}

func TestTooLongKeyIsCountedNotSent(t *testing.T) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	huge := "k:" + strings.Repeat("x", 100)
	if err := rdb.Set(context.Background(), huge, "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(context.Background(), "k:1", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Client: rdb, MaxKeyBytes: 50}, &ackRecorder{})
	in := make(chan replication.Event, 1)
	in <- replication.Event{Keys: []string{huge, "k:1"}, End: 5}
	close(in)
	if err := s.Run(context.Background(), in); err != nil {
		t.Fatal(err)
	}
	if n := s.Stats.KeysTooLong.Load(); n != 1 {
		t.Fatalf("KeysTooLong = %d, want 1", n)
	}
	if n, _ := rdb.Exists(context.Background(), "k:1").Result(); n != 0 {
		t.Fatal("the ordinary key of the same batch was not deleted")
	}
}

// With a fence, each invalidated key's lease is set to the fence value for
// the fence's duration, in the same script as the key's delete.
func TestLeaseFence(t *testing.T) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	rdb.MSet(ctx, "a", 1, "b", 1, "lease:{a}", "reader-token")
	s := New(Config{Client: rdb, KeysPerCommand: 3, Companion: func(k string) string { return "lease:{" + k + "}" },
		FenceValue: "FENCE", Fence: 5 * time.Second}, &ackRecorder{})
	in := make(chan replication.Event, 1)
	in <- replication.Event{Keys: []string{"a", "b", "c"}, End: 10}
	close(in)
	if err := s.Run(ctx, in); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b", "c"} {
		if rdb.Exists(ctx, k).Val() != 0 {
			t.Errorf("%s not deleted", k)
		}
		lease := "lease:{" + k + "}"
		if v := rdb.Get(ctx, lease).Val(); v != "FENCE" {
			t.Errorf("%s = %q, want the fence", lease, v)
		}
		if ttl := rdb.PTTL(ctx, lease).Val(); ttl <= 4*time.Second || ttl > 5*time.Second {
			t.Errorf("%s TTL %v, want about 5s", lease, ttl)
		}
	}
	if n := s.Stats.Deleted.Load(); n != 2 {
		t.Errorf("deleted %d, want 2 (a and b existed)", n)
	}
}

// TestSessionChecksRunInOrder: a Restart event runs Config.OnSession after
// everything before it was applied, with the session's start position; the
// sink then vouches for a watermark at least that high, so a Redis that
// lost writes another instance made (its watermark now below the start)
// is caught by the next batch; Ready is closed once the checks passed.
func TestSessionChecksRunInOrder(t *testing.T) {
	rdb, _ := newRedis(t)
	ctx := context.Background()
	const mark = "cdcinvalidate:s:lsn"
	var calls []string
	cfg := Config{Client: rdb, WatermarkKey: mark, // FlushOnHistoryLost false: stop
		OnSession: func(ctx context.Context, start replication.LSN) error {
			n, _ := rdb.Exists(ctx, "before").Result()
			calls = append(calls, fmt.Sprintf("%s before=%d", start, n))
			return rdb.Set(ctx, mark, start.String(), 0).Err() // the checks leave the watermark at the start
		}}
	if err := rdb.Set(ctx, "before", "cached", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s := New(cfg, &ackRecorder{})
	in := make(chan replication.Event, 8)
	ready := make(chan struct{})
	in <- replication.Event{Keys: []string{"before"}, End: 0x100}
	in <- replication.Event{Restart: true, Start: 0x500, Ready: ready}
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx, in) }()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("Ready not closed after the session checks")
	}
	if want := []string{"0/500 before=0"}; fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Fatalf("OnSession calls %q, want %q (after the earlier event was applied)", calls, want)
	}
	// Redis loses writes: its watermark falls below the session's start.
	if err := rdb.Set(ctx, mark, "0/400", 0).Err(); err != nil {
		t.Fatal(err)
	}
	in <- replication.Event{Keys: []string{"k"}, End: 0x600}
	close(in)
	err := <-errc
	if !errors.Is(err, ErrHistoryLost) {
		t.Fatalf("Run returned %v, want ErrHistoryLost (watermark below the session's start)", err)
	}

	// A failed check stops the sink and leaves Ready open.
	bad := errors.New("check failed")
	cfg.OnSession = func(context.Context, replication.LSN) error { return bad }
	s = New(cfg, &ackRecorder{})
	in = make(chan replication.Event, 2)
	ready = make(chan struct{})
	in <- replication.Event{Restart: true, Start: 0x700, Ready: ready}
	close(in)
	if err := s.Run(ctx, in); !errors.Is(err, bad) {
		t.Fatalf("Run returned %v, want the check's error", err)
	}
	select {
	case <-ready:
		t.Fatal("Ready closed although the checks failed")
	default:
	}
}
