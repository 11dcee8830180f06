package cacheaside

import (
	"strings"
	"testing"
	"time"
)

func TestOptionsDefaults(t *testing.T) {
	var o Options
	if err := o.fill(); err != nil {
		t.Fatal(err)
	}
	if o.TTL != DefaultTTL || o.TTLJitter != DefaultTTLJitter || o.LeaseTTL != DefaultLeaseTTL ||
		o.WaitInterval != DefaultWaitInterval || o.MaxWait != DefaultMaxWait || o.MaxValueBytes != DefaultMaxValueBytes {
		t.Errorf("defaults not filled: %+v", o)
	}
	if o.Logger == nil {
		t.Error("no default logger")
	}
	if o.L1.TTL != 0 || o.L1.HealthInterval != 0 {
		t.Errorf("L1 defaults filled although L1 is off: %+v", o.L1)
	}

	o = Options{L1: L1Options{Size: 10, Channel: "inv"}}
	if err := o.fill(); err != nil {
		t.Fatal(err)
	}
	if o.L1.TTL != DefaultL1TTL || o.L1.HealthInterval != DefaultHealthInterval {
		t.Errorf("L1 defaults not filled: %+v", o.L1)
	}

	o = Options{TTLJitter: -1}
	if err := o.fill(); err != nil {
		t.Fatal(err)
	}
	if o.TTLJitter != 0 {
		t.Errorf("negative jitter should turn jitter off, got %g", o.TTLJitter)
	}
}

func TestOptionsInvalid(t *testing.T) {
	o := Options{
		TTL: -time.Second, TTLJitter: 0.95, LeaseTTL: time.Microsecond, WaitInterval: -1, MaxWait: -1,
		MaxValueBytes: -1, L1: L1Options{Size: 5},
	}
	err := o.fill()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"TTL must not be negative", "TTLJitter must be at most 0.9", "LeaseTTL must be at least 1ms",
		"WaitInterval", "MaxWait", "MaxValueBytes", "L1.Channel is required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if _, err := New(nil, Options{}); err == nil || !strings.Contains(err.Error(), "no redis client") {
		t.Errorf("New(nil): %v", err)
	}
	if _, err := New(nil, Options{L1: L1Options{Size: -1}}); err == nil || !strings.Contains(err.Error(), "L1.Size") {
		t.Errorf("New with L1.Size -1: %v", err)
	}
}

func TestJitterBounds(t *testing.T) {
	const ttl = 10 * time.Second
	for _, j := range []float64{0, 0.1, 0.5, 0.9} {
		lo := ttl - time.Duration(float64(ttl)*j)
		seenLow, seenHigh := false, false
		for range 20000 {
			d := jitterTTL(ttl, j)
			if d < lo || d > ttl {
				t.Fatalf("jitter %g: %s outside [%s, %s]", j, d, lo, ttl)
			}
			span := ttl - lo
			seenLow = seenLow || d < lo+span/10
			seenHigh = seenHigh || d > ttl-span/10
		}
		if j > 0 && (!seenLow || !seenHigh) {
			t.Errorf("jitter %g: values do not spread over the range (low %v, high %v)", j, seenLow, seenHigh)
		}
	}
	if d := jitterTTL(time.Millisecond, 0.9); d != time.Millisecond {
		t.Errorf("a TTL must stay at least 1ms, got %s", d)
	}
	for range 10000 {
		if d := jitterPause(100 * time.Millisecond); d < 75*time.Millisecond || d > 125*time.Millisecond {
			t.Fatalf("pause %s outside 100ms±25%%", d)
		}
	}
}

func TestLeaseKey(t *testing.T) {
	// The naming is shared with the engine and e2e: keep it.
	if got := LeaseKey("app:user:1"); got != "lease:{app:user:1}" {
		t.Errorf("LeaseKey = %q", got)
	}
}
