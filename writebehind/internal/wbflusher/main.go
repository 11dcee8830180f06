// Command wbflusher runs a write-behind flusher over the test mappings
// (package wbtest) as a process of its own, so that the fault tests can
// kill it with SIGKILL at any moment, or at a failpoint when built with
// -tags failpoints (CDC_FAILPOINT=wb-after-commit:3 and the like; see
// internal/failpoint). It exits on SIGTERM or SIGINT.
//
//	wbflusher -dsn postgres://... -redis 127.0.0.1:6380 [-stream s] [-window 50ms]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/writebehind"
	"github.com/cdcinvalidate/cdcinvalidate/writebehind/internal/wbtest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "wbflusher:", err)
		os.Exit(1)
	}
}

func run() error {
	dsn := flag.String("dsn", "", "PostgreSQL connection string")
	addr := flag.String("redis", "", "Redis address host:port")
	stream := flag.String("stream", writebehind.DefaultStream, "stream key")
	group := flag.String("group", writebehind.DefaultGroup, "consumer group")
	window := flag.Duration("window", 50*time.Millisecond, "window")
	maxEntries := flag.Int("max-entries", 200, "entries per window at most")
	flag.Parse()
	if *dsn == "" || *addr == "" {
		return fmt.Errorf("-dsn and -redis are required")
	}
	log, err := zap.NewDevelopment()
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: *addr, ReadTimeout: 3 * time.Second, MaxRetries: -1})
	defer rdb.Close()
	f, err := writebehind.NewFlusher(rdb, wbtest.Mappings(), writebehind.FlusherOptions{
		DSN: *dsn, Stream: *stream, Group: *group, Window: *window, MaxEntries: *maxEntries,
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond, StandbyPoll: 100 * time.Millisecond, Logger: log,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return f.Run(ctx)
}
