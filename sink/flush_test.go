package sink

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// TestSetFlushPatterns: after a rules reload, a flush (Redis lost writes)
// covers the new rules' patterns, not the ones the sink started with.
func TestSetFlushPatterns(t *testing.T) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	s := New(Config{Client: rdb, FlushPatterns: []string{"user:*"}}, &ackRecorder{})
	done := make(chan struct{})
	go func() { // concurrent with Flush, as a reload is with the sink
		s.SetFlush([]string{"user:*", "account:*"}, nil)
		close(done)
	}()
	<-done
	for _, k := range []string{"user:1", "account:1", "other:1"} {
		if err := rdb.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]int64{"user:1": 0, "account:1": 0, "other:1": 1} {
		if n := rdb.Exists(ctx, k).Val(); n != want {
			t.Errorf("EXISTS %s = %d after the flush, want %d", k, n, want)
		}
	}
}
