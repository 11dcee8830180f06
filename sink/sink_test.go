package sink

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
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

// A key longer than MaxKeyBytes is still invalidated (Redis takes keys up
// to 512 MB) and counted; with StopOnLongKey the sink stops with an
// error naming the option, before anything of the batch is acknowledged.
func TestTooLongKeyIsSentAndCounted(t *testing.T) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	huge := "k:" + strings.Repeat("x", 100)
	for _, tc := range []struct {
		stop    bool
		wantErr string
	}{
		{false, ""},
		{true, "sink.on_long_key"},
	} {
		if err := rdb.MSet(ctx, huge, "v", "k:1", "v").Err(); err != nil {
			t.Fatal(err)
		}
		ack := &ackRecorder{}
		s := New(Config{Client: rdb, MaxKeyBytes: 50, StopOnLongKey: tc.stop}, ack)
		in := make(chan replication.Event, 1)
		in <- replication.Event{Keys: []string{huge, "k:1"}, End: 5}
		close(in)
		err := s.Run(ctx, in)
		if n := s.Stats.KeysTooLong.Load(); n != 1 {
			t.Errorf("stop %v: KeysTooLong = %d, want 1", tc.stop, n)
		}
		if tc.wantErr != "" {
			var perm *PermanentError
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &perm) {
				t.Errorf("stop %v: Run = %v, want a permanent error naming %s", tc.stop, err, tc.wantErr)
			}
			if len(ack.acked) != 0 {
				t.Errorf("stop %v: acknowledged %v although the batch stopped", tc.stop, ack.acked)
			}
			if n, _ := rdb.Exists(ctx, huge).Result(); n != 1 {
				t.Errorf("stop %v: the long key was deleted although the sink stopped", tc.stop)
			}
			continue
		}
		if err != nil {
			t.Fatalf("stop %v: %v", tc.stop, err)
		}
		if n, _ := rdb.Exists(ctx, huge, "k:1").Result(); n != 0 {
			t.Errorf("stop %v: %d of the long key and the ordinary key still exist, want both deleted", tc.stop, n)
		}
		if fmt.Sprint(ack.acked) != "[0/5]" {
			t.Errorf("stop %v: acked %v, want [0/5]", tc.stop, ack.acked)
		}
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

// failOncePipeline is a go-redis hook (as a tracing or circuit-breaking
// hook would be) that fails the first pipeline without running it: an
// error no command carries.
type failOncePipeline struct{ failed bool }

func (h *failOncePipeline) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *failOncePipeline) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (h *failOncePipeline) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !h.failed {
			h.failed = true
			return errors.New("pipeline cut before it was sent")
		}
		return next(ctx, cmds)
	}
}

// A pipeline error that no single command carries is a failure: the batch
// is retried, and its position is acknowledged only after Redis applied it.
func TestPipelineErrorWithoutCommandErrorIsRetried(t *testing.T) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Set(ctx, "k:1", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	hook := &failOncePipeline{}
	rdb.AddHook(hook)
	ack := &ackRecorder{}
	s := New(Config{Client: rdb, MinBackoff: time.Millisecond}, ack)
	in := make(chan replication.Event, 1)
	in <- replication.Event{Keys: []string{"k:1"}, End: 7}
	close(in)
	if err := s.Run(ctx, in); err != nil {
		t.Fatal(err)
	}
	if !hook.failed {
		t.Fatal("the hook never ran")
	}
	if n, _ := rdb.Exists(ctx, "k:1").Result(); n != 0 {
		t.Errorf("k:1 still cached, but its position was acknowledged: %v", ack.acked)
	}
	if s.Stats.Retries.Load() == 0 {
		t.Error("the failed pipeline was not retried")
	}
	if fmt.Sprint(ack.acked) != "[0/7]" {
		t.Errorf("acked %v, want [0/7]", ack.acked)
	}
}

type stallObserver struct {
	nopObserver
	stalled []error
}

func (o *stallObserver) Stalled(err error) { o.stalled = append(o.stalled, err) }

// Redis failing for longer than EscalateAfter is reported once as stalled;
// the sink goes on retrying (nothing skipped) until the context ends.
func TestLongFailureEscalatesOnce(t *testing.T) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr(), MaxRetries: -1})
	defer rdb.Close()
	ctx := context.Background()
	// Out of memory: every write is refused (OOM, transient).
	for _, c := range [][]any{{"config", "set", "maxmemory-policy", "noeviction"}, {"config", "set", "maxmemory", "1"}} {
		if err := rdb.Do(ctx, c...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	obs := &stallObserver{}
	ack := &ackRecorder{}
	s := New(Config{Client: rdb, MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, EscalateAfter: 200 * time.Millisecond, Observer: obs}, ack)
	in := make(chan replication.Event, 1)
	in <- replication.Event{Actions: []replication.Action{{Kind: replication.ActSet, Key: "k:1", Value: "{}"}}, LSN: 5, End: 5}
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := s.Run(rctx, in); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want the context's end (retrying until then)", err)
	}
	if len(obs.stalled) != 1 || s.Stats.Escalations.Load() != 1 {
		t.Errorf("stalled reported %d times (Escalations %d), want once", len(obs.stalled), s.Stats.Escalations.Load())
	}
	if s.Stats.Retries.Load() < 5 {
		t.Errorf("only %d retries in a second", s.Stats.Retries.Load())
	}
	if len(ack.acked) > 0 {
		t.Errorf("acknowledged %v although Redis refused the write", ack.acked)
	}
}

// TestTruncatePastWatermarkIsSkipped: a TRUNCATE whose commit the
// watermark in Redis has passed was applied by another instance (this one
// held it while paused); deleting now would undo newer work, so it is
// skipped. One not yet passed deletes as usual.
func TestTruncatePastWatermarkIsSkipped(t *testing.T) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	rdb.MSet(ctx, "t:1", "new", "t:1:v", "0/300", "wm", "0/300")
	cfg := Config{Client: rdb, WatermarkKey: "wm"}
	s := New(cfg, &ackRecorder{})
	in := make(chan replication.Event, 2)
	in <- replication.Event{Globs: []string{"t:*"}, LSN: 0x200}
	close(in)
	if err := s.Run(ctx, in); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, "t:1", "t:1:v").Val(); n != 2 || s.Stats.Superseded.Load() != 1 {
		t.Errorf("a superseded TRUNCATE deleted keys: %d of 2 left, superseded %d", n, s.Stats.Superseded.Load())
	}
	s = New(cfg, &ackRecorder{})
	in = make(chan replication.Event, 1)
	in <- replication.Event{Globs: []string{"t:*"}, LSN: 0x400}
	close(in)
	if err := s.Run(ctx, in); err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, "t:1", "t:1:v").Val(); n != 0 {
		t.Errorf("a current TRUNCATE left %d keys", n)
	}
}

// TestOneAcknowledgementPath: every position the sink reports goes through
// acknowledge (the one place that may call Acker.Ack), so what "applied"
// means is decided once.
func TestOneAcknowledgementPath(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		calls += strings.Count(string(src), ".ack.Ack(")
	}
	if calls != 1 {
		t.Errorf("Acker.Ack is called in %d places, want 1 (in acknowledge)", calls)
	}
}

// TestTruncateWatermarksWhatCameBefore: a TRUNCATE that follows batches
// applied without a watermark raise (more was queued) first raises the
// watermark to them, before its first delete: a paused leader's raises
// and writes of those transactions are then fenced (the watermark is past
// them) from the moment the TRUNCATE starts deleting, not only after it.
func TestTruncateWatermarksWhatCameBefore(t *testing.T) {
	rdb, addr := newRedis(t)
	ctx := context.Background()
	rdb.Set(ctx, "t:1", "cached", 0)
	mon := monitor(t, addr)
	// One key per batch: the second batch goes while the TRUNCATE is
	// queued behind it, so it is not watermarked with its deletes.
	run(t, Config{Client: rdb, WatermarkKey: "wm", MaxBatchKeys: 1},
		replication.Event{Keys: []string{"a"}, LSN: 0x100, End: 0x108},
		replication.Event{Keys: []string{"b"}, LSN: 0x200, End: 0x208},
		replication.Event{Globs: []string{"t:*"}, LSN: 0x300, End: 0x308})
	marked := false
	deadline := time.After(10 * time.Second)
	for {
		select {
		case line := <-mon:
			l := strings.ToLower(line)
			if strings.Contains(l, `"set" "wm" "0/208"`) {
				marked = true
			}
			if strings.Contains(l, `"t:1"`) && (strings.Contains(l, `"unlink"`) || strings.Contains(l, `"del"`)) {
				if !marked {
					t.Fatal("the TRUNCATE deleted t:1 before the watermark was raised to 0/208, the batch applied before it")
				}
				return
			}
		case <-deadline:
			t.Fatalf("no delete of t:1 seen (watermark raised to 0/208 first: %v)", marked)
		}
	}
}
