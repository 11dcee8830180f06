package e2e

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// TestLongKeyIsInvalidated: a key longer than sink.max_key_bytes is still
// invalidated (and counted); with sink.on_long_key: stop the engine stops
// with an error naming the option, and the transaction is not confirmed.
func TestLongKeyIsInvalidated(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{extra: "sink:\n  max_key_bytes: 40\n"})
	long := strings.Repeat("x", 60) + "@example.com"
	r := f.start()
	f.set("user:1", "user:email:"+long)
	f.exec(`INSERT INTO users VALUES (1, $1, 'n', '')`, long)
	f.barrier()
	f.wantGone("user:1", "user:email:"+long)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}

	cfg := strings.Replace(mustRead(t, f.cfgPath), "max_key_bytes: 40\n", "max_key_bytes: 40\n  on_long_key: stop\n", 1)
	r = f.startWith(f.writeConfig(cfg), zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)))
	f.set("user:email:" + long)
	f.exec(`UPDATE users SET name = 'm' WHERE id = 1`)
	after := f.currentLSN()
	err := r.wait(t, 60*time.Second)
	if err == nil || !strings.Contains(err.Error(), "sink.on_long_key") || !strings.Contains(err.Error(), "sink.max_key_bytes") {
		t.Fatalf("engine returned %v, want a stop naming sink.on_long_key and sink.max_key_bytes", err)
	}
	if c := f.confirmed(); c >= after {
		t.Errorf("slot confirmed %s, past the transaction with the long key (%s)", c, after)
	}
}
