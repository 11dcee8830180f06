package cacheaside_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
)

// TestStampede: 1,000 concurrent readers of a key the engine has just
// invalidated make one load in one process (single-flight), and one load
// (at most two) across five processes sharing one Redis (leases).
func TestStampede(t *testing.T) {
	e := sharedEnv(t)
	const (
		id       = 100
		readers  = 1000
		procs    = 5
		loadTime = 100 * time.Millisecond // a slow query: every reader arrives while it runs
	)
	e.insertItems(t, id)
	e.mustBarrier(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var loads atomic.Int64
	load := func(ctx context.Context) ([]byte, error) {
		loads.Add(1)
		v, err := e.value(ctx, id)
		time.Sleep(loadTime)
		return []byte(strconv.FormatInt(v, 10)), err
	}
	newClient := func() *cacheaside.Client {
		rdb := redis.NewClient(&redis.Options{Addr: e.rd.Addr(), PoolSize: 20})
		t.Cleanup(func() { _ = rdb.Close() })
		c, err := cacheaside.New(rdb, cacheaside.Options{Prefix: "lib:", MaxWait: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	// invalidate caches the key, updates the row and waits until the
	// engine has deleted the key: the next reads find it just invalidated.
	invalidate := func(c *cacheaside.Client) string {
		t.Helper()
		if _, err := c.Get(ctx, itemKey(id), load); err != nil {
			t.Fatal(err)
		}
		e.exec(t, `UPDATE items SET v = v + 1 WHERE id = $1`, id)
		e.mustBarrier(t)
		if n := e.rdb.Exists(ctx, "lib:"+itemKey(id)).Val(); n != 0 {
			t.Fatal("the engine did not invalidate the key")
		}
		v, err := e.value(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		loads.Store(0)
		return strconv.FormatInt(v, 10)
	}
	// stampede runs readers concurrent Gets, reader i through clients[i%len].
	stampede := func(clients []*cacheaside.Client, want string) {
		t.Helper()
		var wg sync.WaitGroup
		gate := make(chan struct{})
		var wrong atomic.Int64
		for i := range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				v, err := clients[i%len(clients)].Get(ctx, itemKey(id), load)
				if err != nil || string(v) != want {
					wrong.Add(1)
				}
			}()
		}
		close(gate)
		wg.Wait()
		if wrong.Load() > 0 {
			t.Fatalf("%d readers got an error or a value other than %s", wrong.Load(), want)
		}
	}

	// One process.
	c := newClient()
	want := invalidate(c)
	before := c.Stats.Snapshot()
	stampede([]*cacheaside.Client{c}, want)
	after := c.Stats.Snapshot()
	coalesced, hits := after.Coalesced-before.Coalesced, after.Hits-before.Hits
	t.Logf("one process, %d readers: %d load, %d coalesced, %d later Redis hits", readers, loads.Load(), coalesced, hits)
	if loads.Load() != 1 || after.Loads-before.Loads != 1 {
		t.Errorf("one process made %d loads, want exactly 1 (single-flight)", loads.Load())
	}
	if coalesced+hits != readers-1 {
		t.Errorf("coalesced %d + hits %d = %d, want %d: every other reader shares the load or hits its fill", coalesced, hits, coalesced+hits, readers-1)
	}

	// Several processes: single-flight within each, leases across them.
	clients := make([]*cacheaside.Client, procs)
	for i := range clients {
		clients[i] = newClient()
	}
	want = invalidate(clients[0])
	befores := make([]cacheaside.StatsSnapshot, procs)
	for i, c := range clients {
		befores[i] = c.Stats.Snapshot()
	}
	stampede(clients, want)
	per := make([]uint64, procs)
	var waits uint64
	for i, c := range clients {
		s := c.Stats.Snapshot()
		per[i] = s.Loads - befores[i].Loads
		waits += s.LeaseWaits - befores[i].LeaseWaits
		if per[i] > 1 {
			t.Errorf("process %d made %d loads; single-flight allows 1", i, per[i])
		}
	}
	t.Logf("%d processes, %d readers: %d load(s) in all (per process %v), %d lease waits", procs, readers, loads.Load(), per, waits)
	if loads.Load() > 2 {
		t.Errorf("%d loads across %d processes; with leases expected 1 (at most 2)", loads.Load(), procs)
	}
}
