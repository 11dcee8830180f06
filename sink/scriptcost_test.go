package sink

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// TestScriptCost is not a test but a driver for counting what the refresh
// and version scripts cost Redis, in instructions (deterministic, unlike
// timings on a shared machine). It runs only when CDC_SCRIPT_COST_ADDR
// names a Redis server, which should be a throwaway one under cachegrind:
//
//	valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=cg.refresh \
//	  redis-server --port 6399 --save '' --appendonly no &
//	CDC_SCRIPT_COST_ADDR=127.0.0.1:6399 CDC_SCRIPT_COST=refresh \
//	  go test ./sink -run '^TestScriptCost$' -count=1
//	redis-cli -p 6399 shutdown nosave   # cachegrind writes cg.refresh
//
// CDC_SCRIPT_COST is what it sends: "refresh" (25,600 refresh writes of
// 10-column rows of about 150 bytes, keys without leases, in 100 scripts
// of 256), "version" (25,600 version raises, likewise), "unlink" (25,600
// keys in 100 UNLINKs of 256, the delete rule's cost), "update" (each
// refresh call after one that wrote its keys, each at an LSN of its own:
// minus a "refresh" run with CDC_SCRIPT_COST_TXN=1, the cost of
// refreshing keys that have order keys), or "idle" (the same connection
// and setup: a script call of each kind with one item). Every kind starts
// with that setup, so (its instructions - the idle run's) / 25,600 is
// Redis's work per key. CDC_SCRIPT_COST_TXN is the number of consecutive
// items sharing a commit LSN (default 1,000, a 1,000-row transaction; 1
// for single-row transactions). CDC_SCRIPT_COST_SETGET=0 has the refresh
// script write order keys with a GET and a SET, as on a Redis older than
// 6.2. CDC_SCRIPT_COST_TTL=1h gives the refresh writes a TTL of 1h
// with a jitter of 0.1 (as in docs/rules.md's example). The watermark is kept (sink.watermark's default), so the scripts
// read it once per call. scripts/script-cost.sh runs them under
// cachegrind and prints the figures.
func TestScriptCost(t *testing.T) {
	addr := os.Getenv("CDC_SCRIPT_COST_ADDR")
	if addr == "" {
		t.Skip("a measurement driver: set CDC_SCRIPT_COST_ADDR (see the comment)")
	}
	kind := os.Getenv("CDC_SCRIPT_COST")
	txn := 1000
	if v := os.Getenv("CDC_SCRIPT_COST_TXN"); v != "" {
		var err error
		if txn, err = strconv.Atoi(v); err != nil || txn < 1 {
			t.Fatalf("CDC_SCRIPT_COST_TXN=%q: want a positive number", v)
		}
	}
	if os.Getenv("CDC_SCRIPT_COST_SETGET") == "0" {
		orderSetGet = false // the way of a Redis older than 6.2
		defer func() { orderSetGet = true }()
	}
	var ttl time.Duration // of the measured refresh writes
	var jitter float64
	if v := os.Getenv("CDC_SCRIPT_COST_TTL"); v != "" {
		var err error
		if ttl, err = time.ParseDuration(v); err != nil {
			t.Fatalf("CDC_SCRIPT_COST_TTL=%q: %v", v, err)
		}
		jitter = 0.1
	}
	const calls, per = 100, 256
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1})
	defer rdb.Close()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Client: rdb, WatermarkKey: "wm", KeysPerCommand: per}, &ackRecorder{})
	if err := rdb.Set(ctx, "wm", "0/1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	exec := func(f func(p redis.Pipeliner)) {
		p := rdb.Pipeline()
		f(p)
		cmds, err := p.Exec(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cmds {
			if c.Err() != nil {
				t.Fatal(c.Err())
			}
		}
	}
	// The setup every kind shares: each script compiled and run once
	// with one item.
	exec(func(p redis.Pipeliner) {
		s.queueRefreshChunks(ctx, p, []setItem{{key: "warm", value: "{}", lsn: 1 << 32}}, per, DefaultOrderTTL)
		s.queueVersionChunks(ctx, p, []versionItem{{key: "warm:v", lsn: 1 << 32}}, per)
		p.Unlink(ctx, "nothing")
	})
	s.fenceCmds = s.fenceCmds[:0]
	lsn := func(i int) replication.LSN { return replication.LSN(1<<32 + (i/txn+1)*0x1000) }
	row := `{"id":%d,"n":7,"a":"alpha","b":"bravo","c":"charlie","d":12.5,"e":true,"f":"2026-12-07 10:00:00+00","g":{"x":1},"h":"hotel"}`
	for c := range calls {
		switch kind {
		case "idle":
			return
		case "refresh", "update":
			sets := make([]setItem, per)
			if kind == "update" { // the keys written first, each at an LSN of its own
				for j := range sets {
					i := c*per + j
					sets[j] = setItem{key: "row:" + strconv.Itoa(i), value: fmt.Sprintf(row, i), lsn: replication.LSN(i+1) * 0x1000}
				}
				exec(func(p redis.Pipeliner) { s.queueRefreshChunks(ctx, p, sets, per, DefaultOrderTTL) })
			}
			for j := range sets {
				i := c*per + j
				sets[j] = setItem{key: "row:" + strconv.Itoa(i), value: fmt.Sprintf(row, i), lsn: lsn(i), ttl: ttl, jitter: jitter}
			}
			exec(func(p redis.Pipeliner) { s.queueRefreshChunks(ctx, p, sets, per, DefaultOrderTTL) })
		case "version":
			v := make([]versionItem, per)
			for j := range v {
				i := c*per + j
				v[j] = versionItem{key: "item:" + strconv.Itoa(i) + ":v", lsn: lsn(i)}
			}
			exec(func(p redis.Pipeliner) { s.queueVersionChunks(ctx, p, v, per) })
		case "unlink":
			keys := make([]string, per)
			for j := range keys {
				keys[j] = "item:" + strconv.Itoa(c*per+j)
			}
			exec(func(p redis.Pipeliner) { p.Unlink(ctx, keys...) })
		default:
			t.Fatalf("CDC_SCRIPT_COST=%q: want refresh, update, version, unlink or idle", kind)
		}
	}
	want := map[string]int64{"refresh": 2*calls*per + 4, "update": 2*calls*per + 4, "version": calls*per + 4, "unlink": 4}[kind]
	if n, _ := rdb.DBSize(ctx).Result(); n != want {
		t.Fatalf("%d keys in Redis, want %d (what was sent, the setup's and the watermark)", n, want)
	}
}
