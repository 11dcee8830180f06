package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// TestRedisOOMAndReadOnlyAreRetried: Redis answering OOM (maxmemory with
// noeviction) or READONLY (turned into a replica) is a transient state: the
// engine keeps retrying what it could not write, skips nothing, and once
// Redis accepts writes again every change is applied, including the
// refreshed values that failed.
func TestRedisOOMAndReadOnlyAreRetried(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	f.startRules(`  - table: users
    keys: ["user:{id}"]
    actions: [refresh]
  - table: orders
    keys: ["order:{id}"]
`)
	// A port nothing listens on, for a master that never answers.
	deadPort, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	for i, fault := range []struct {
		name    string
		on, off [][]any
	}{
		{"OOM", [][]any{{"config", "set", "maxmemory-policy", "noeviction"}, {"config", "set", "maxmemory", "1"}}, [][]any{{"config", "set", "maxmemory", "0"}}},
		{"READONLY", [][]any{{"replicaof", "127.0.0.1", fmt.Sprint(deadPort)}}, [][]any{{"replicaof", "no", "one"}}},
	} {
		id := i + 1
		f.set(fmt.Sprintf("order:%d", id))
		for _, c := range fault.on {
			if err := f.rdb.Do(ctx, c...).Err(); err != nil {
				t.Fatalf("%s: %v: %v", fault.name, c, err)
			}
		}
		if err := f.rdb.Set(ctx, "probe", "x", 0).Err(); err == nil {
			t.Fatalf("%s: Redis still accepts writes", fault.name)
		}
		f.exec(`INSERT INTO users VALUES ($1, $2, 'n', '')`, id, fmt.Sprintf("u%d@x", id))
		f.exec(`INSERT INTO orders VALUES ($1, 1, 'n')`, id)
		// Long enough for several retries.
		time.Sleep(1500 * time.Millisecond)
		if f.get(fmt.Sprintf("user:%d", id)) != "" {
			t.Fatalf("%s: a refreshed value was written while Redis refused writes", fault.name)
		}
		for _, c := range fault.off {
			if err := f.rdb.Do(ctx, c...).Err(); err != nil {
				t.Fatalf("%s: %v: %v", fault.name, c, err)
			}
		}
		f.barrier()
		var row map[string]any
		if err := json.Unmarshal([]byte(f.get(fmt.Sprintf("user:%d", id))), &row); err != nil || row["email"] != fmt.Sprintf("u%d@x", id) {
			t.Errorf("%s: user:%d = %q after recovery, want the row", fault.name, id, f.get(fmt.Sprintf("user:%d", id)))
		}
		f.wantGone(fmt.Sprintf("order:%d", id))
	}
}

// TestRedisErrorRetryCannotFixStops: a generation key at the largest
// integer makes INCR fail ("increment or decrement would overflow"), which
// no retry fixes. The engine stops with an error that names the fix
// instead of retrying in silence, and the transaction's position is not
// confirmed (a restart after the fix applies it).
func TestRedisErrorRetryCannotFixStops(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	ctx := context.Background()
	r := f.startRules(`  - table: users
    keys: ["user:{id}"]
    actions: [delete, generation]
    generation_key: gen:people
`)
	if err := f.rdb.Set(ctx, "gen:people", "9223372036854775807", 0).Err(); err != nil {
		t.Fatal(err)
	}
	f.set("user:1")
	f.exec(`INSERT INTO users VALUES (1, 'a@x', 'n', '')`)
	// At or past the end of the insert's commit record.
	afterCommit := f.currentLSN()
	err := r.wait(t, 60*time.Second)
	if err == nil || !strings.Contains(err.Error(), "overflow") || !strings.Contains(err.Error(), "generation_key") {
		t.Fatalf("engine returned %v, want a stop naming the overflow and generation_key", err)
	}
	if c := f.confirmed(); c >= afterCommit {
		t.Errorf("slot confirmed %s, at or past the failed transaction (%s)", c, afterCommit)
	}
}
