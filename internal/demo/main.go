// Command demo shows cdcinvalidate at work on a throwaway PostgreSQL and
// Redis: it creates the sample schema (examples/schema.sql), runs the engine
// binary with the repository's rules.yaml (the DSN and the Redis address come
// from CDC_POSTGRES_DSN and CDC_REDIS_ADDR), plays a scripted story of
// writes, and prints every cache invalidation as Redis reports it, with the
// time since the transaction committed. It ends with a write-behind
// leaderboard (package writebehind, leaderboard.go).
//
//	go run ./internal/demo          # the story, then clean up
//	go run ./internal/demo --keep   # then keep everything running until Ctrl-C
//
// It exits 0 when every step had exactly the effect it announces, and
// non-zero with a message naming what did not happen otherwise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

const (
	slotName      = "cdcinvalidate" // the slot rules.yaml names
	stepTimeout   = 5 * time.Second // how long a step waits for its invalidations
	cacheTTL      = time.Hour       // TTL of the demo's cache entries (the safety net)
	engineStopMax = 15 * time.Second
	indent        = "      "
)

func main() {
	keep := flag.Bool("keep", false, "after the story, keep PostgreSQL, Redis and the engine running until Ctrl-C, to explore with psql and redis-cli")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: go run ./internal/demo [--keep]\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first Ctrl-C the demo cleans up; a second one ends it at once.
	context.AfterFunc(ctx, stop)
	d := &demo{keep: *keep}
	err := d.run(ctx)
	d.cleanup()
	switch {
	case err == nil:
		d.say("\nDemo finished: every step had the effect it announced.")
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		d.say("\nInterrupted; the throwaway servers are gone.")
		os.Exit(130)
	default:
		d.say("\nDEMO FAILED: %v", err)
		os.Exit(1)
	}
}

// demo is the state of one run.
type demo struct {
	keep bool

	outMu sync.Mutex // one line at a time on stdout

	root    string
	binDir  string // temporary directory of the engine binary
	pg      *harness.Postgres
	rd      *harness.Redis
	db      *pgxpool.Pool
	rdb     *redis.Client
	sub     *redis.PubSub
	eng     *harness.Process
	printed chan struct{} // closed when the event printer has ended

	evMu      sync.Mutex
	cur       *step           // the step in progress, nil between steps
	latencies []time.Duration // invalidation latencies of the story
	cached    map[string]bool // what the demo believes Redis holds
	loose     []string        // invalidations outside any step, during the story
	commits   int             // committed transactions of the story
}

// step is one part of the story: what it must invalidate, and what did.
type step struct {
	expect     map[string]bool
	got        map[string]bool
	unexpected []string
	commit     time.Time     // commit time, zero for a step without commit
	known      chan struct{} // closed once commit is set (or known to be absent)
	progress   chan struct{} // receives a value after each recorded invalidation
}

func (d *demo) say(format string, args ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Printf(format+"\n", args...)
}

func (d *demo) run(ctx context.Context) error {
	d.say("cdcinvalidate demo: throwaway PostgreSQL and Redis on free loopback ports, the sample")
	d.say("schema, the engine with the repository's rules.yaml, and a story of writes whose cache")
	d.say("invalidations are printed as Redis reports them.")
	d.say("")
	d.say("== Setting up")
	bin, err := d.setUp(ctx)
	if err != nil {
		return err
	}
	if err := d.startEngine(ctx, bin); err != nil {
		return err
	}

	if err := d.story(ctx); err != nil {
		return err
	}
	if err := d.showPositions(ctx, "Where the slot stands"); err != nil {
		return err
	}
	d.say("%s%d keys invalidated in %d committed transactions; time from commit to the delete in Redis: %s.",
		indent, len(d.latencies), d.commits, latencySummary(d.latencies))

	if d.keep {
		d.evMu.Lock()
		d.cur = nil
		d.evMu.Unlock()
		d.explore(ctx)
	}
	return d.stopEngine()
}
