package writebehind_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/writebehind"
)

// The benchmarks share one PostgreSQL and Redis (without persistence:
// they measure what the library and the flusher absorb, not the disk),
// started on first use and stopped by TestMain.
//
//	go test ./writebehind -run '^$' -bench . -benchtime 3s
//
// Each benchmark runs a flusher while it writes and reports, besides the
// write rate (incr/s), the flusher's aggregation (rows written per 1,000
// increments, "rows/1000incr") and the flush lag (age of a window's oldest
// entry at its commit) at p50/p90/p99 over the run's windows, and how many
// increments one script call carried ("incr/call": above 1 for single
// Incr calls means they were combined).

var (
	benchOnce sync.Once
	benchEnv  *sharedServers
	benchErr  error
)

type sharedServers struct {
	pg  *harness.Postgres
	rd  *harness.Redis
	rdb *redis.Client
	db  *pgxpool.Pool
}

func TestMain(m *testing.M) {
	code := m.Run()
	if benchEnv != nil {
		benchEnv.rdb.Close()
		benchEnv.db.Close()
		if err := benchEnv.rd.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		if err := benchEnv.pg.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	os.Exit(code)
}

func benchServers(b *testing.B) *sharedServers {
	b.Helper()
	benchOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		s := &sharedServers{}
		if s.pg, benchErr = harness.StartPostgres(ctx, harness.PostgresOptions{}); benchErr != nil {
			return
		}
		if s.rd, benchErr = harness.StartRedis(ctx, harness.RedisOptions{}); benchErr != nil {
			_ = s.pg.Close()
			return
		}
		s.rdb = redis.NewClient(&redis.Options{Addr: s.rd.Addr(), PoolSize: 64})
		if s.db, benchErr = pgxpool.New(ctx, s.pg.DSN("postgres")); benchErr == nil {
			_, benchErr = s.db.Exec(ctx, testSchema)
		}
		benchEnv = s
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchEnv
}

// benchWrites runs write (called b.N times over the parallel goroutines,
// each call doing opsPerCall increments) with a flusher running, then
// drains the stream and reports the figures.
//
// callers goroutines share the b.N calls.
func benchWrites(b *testing.B, stream string, callers, opsPerCall int, wopt writebehind.WriterOptions, write func(ctx context.Context, w *writebehind.Writer, i int) error) {
	s := benchServers(b)
	ctx := context.Background()
	wopt.Stream, wopt.MaxLen = stream, 10_000_000
	w, err := writebehind.NewWriter(s.rdb, testMappings, wopt)
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var lags []time.Duration
	f, err := writebehind.NewFlusher(s.rdb, testMappings, writebehind.FlusherOptions{
		DSN: s.pg.DSN("postgres"), Stream: stream, Logger: zap.NewNop(),
		OnWindow: func(ws writebehind.WindowStats) {
			mu.Lock()
			lags = append(lags, ws.Lag)
			mu.Unlock()
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.Run(fctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}()

	usec0 := evalUsec(b, s.rdb)
	var seq atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(seq.Add(1))
				if i > b.N {
					return
				}
				if err := write(ctx, w, i); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	// Redis's own CPU time in the write script, per increment: what one
	// Redis core could absorb on a machine of its own (1e6 / this = incr/s).
	b.ReportMetric((evalUsec(b, s.rdb)-usec0)/float64(b.N*opsPerCall), "redis-us/incr")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		groups, err := s.rdb.XInfoGroups(ctx, stream).Result()
		if err == nil && len(groups) == 1 && groups[0].Pending == 0 && groups[0].Lag == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("stream %s not drained after 2 minutes", stream)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ops := float64(b.N * opsPerCall)
	b.ReportMetric(ops/elapsed.Seconds(), "incr/s")
	if n := w.Stats.Writes.Load(); n > 0 {
		b.ReportMetric(float64(w.Stats.Ops.Load())/float64(n), "incr/call")
	}
	if n := f.Stats.OpsApplied.Load(); n > 0 {
		b.ReportMetric(1000*float64(f.Stats.RowsWritten.Load())/float64(n), "rows/1000incr")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lags) > 0 {
		slices.Sort(lags)
		p := func(q float64) float64 { return float64(lags[int(q*float64(len(lags)-1))].Milliseconds()) }
		b.ReportMetric(p(0.5), "lag-p50-ms")
		b.ReportMetric(p(0.9), "lag-p90-ms")
		b.ReportMetric(p(0.99), "lag-p99-ms")
	}
}

// BenchmarkIncr: one Incr per call from many goroutines (an application
// serving many requests): concurrent calls are combined into shared script
// calls. callers=16 without combining is the old one-round-trip-per-call
// path, for comparison.
func BenchmarkIncr(b *testing.B) {
	for _, c := range []struct {
		name    string
		callers int
		opt     writebehind.WriterOptions
	}{
		{"callers=16", 16, writebehind.WriterOptions{}},
		{"callers=256", 256, writebehind.WriterOptions{}},
		{"callers=16/nocombine", 16, writebehind.WriterOptions{NoCombine: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			benchWrites(b, "bench-incr-"+c.name+"-"+strconv.Itoa(b.N), c.callers, 1, c.opt, func(ctx context.Context, w *writebehind.Writer, i int) error {
				_, err := w.Incr(ctx, "counter:"+strconv.Itoa(i%1000), 1)
				return err
			})
		})
	}
}

// BenchmarkApply100: 100 increments per call (one script, one entry).
func BenchmarkApply100(b *testing.B) {
	benchWrites(b, "bench-apply-"+strconv.Itoa(b.N), 16, 100, writebehind.WriterOptions{}, func(ctx context.Context, w *writebehind.Writer, i int) error {
		ops := make([]writebehind.Op, 100)
		for j := range ops {
			ops[j] = writebehind.IncrOp("counter:"+strconv.Itoa((i*100+j)%1000), 1)
		}
		_, err := w.Apply(ctx, ops...)
		return err
	})
}

// BenchmarkApply1000: 1,000 increments per call, the largest batch.
func BenchmarkApply1000(b *testing.B) {
	benchWrites(b, "bench-apply1000-"+strconv.Itoa(b.N), 16, 1000, writebehind.WriterOptions{}, func(ctx context.Context, w *writebehind.Writer, i int) error {
		ops := make([]writebehind.Op, 1000)
		for j := range ops {
			ops[j] = writebehind.IncrOp("counter:"+strconv.Itoa((i*1000+j)%1000), 1)
		}
		_, err := w.Apply(ctx, ops...)
		return err
	})
}

// evalUsec is the total CPU time (µs) Redis spent in EVALSHA so far.
func evalUsec(b *testing.B, rdb *redis.Client) float64 {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_evalsha:"); ok {
			for _, kv := range strings.Split(rest, ",") {
				if v, ok := strings.CutPrefix(kv, "usec="); ok {
					f, _ := strconv.ParseFloat(v, 64)
					return f
				}
			}
		}
	}
	return 0
}
