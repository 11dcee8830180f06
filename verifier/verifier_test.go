package verifier

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

func str(s string) *string { return &s }

func stamped(lsn uint64, v string) *string {
	return str(string(cacheaside.AppendStamp(nil, lsn, []byte(v))))
}

func leaseStamped(lsn uint64, v string) *string {
	return str(string(cacheaside.AppendLeaseStamp(nil, lsn, []byte(v))))
}

func loadStamped(lsn, loadedBefore uint64, v string) *string {
	return str(string(cacheaside.AppendLoadStamp(nil, lsn, loadedBefore, []byte(v))))
}

func TestClassify(t *testing.T) {
	del := Sample{Key: "k", LSN: 0x200, Floor: 0x100, Kind: KindDelete}
	delLeases := Sample{Key: "k", LSN: 0x200, Floor: 0x100, Kind: KindDelete, Leases: true}
	ver := Sample{Key: "k:v", LSN: 0x200, Kind: KindVersion}
	ref := Sample{Key: "k", LSN: 0x200, Kind: KindRefresh, Value: `{"id":1}`}
	for _, c := range []struct {
		name   string
		latest Sample
		val    *string
		want   Result
	}{
		{"deleted, absent", del, nil, Absent},
		{"deleted, refilled by code that does not stamp", del, str("v"), Unverifiable},
		{"deleted, stamped at the commit", del, stamped(0x200, "v"), Newer},
		{"deleted, stamped after", del, stamped(0x300, "v"), Newer},
		// Below the floor the load began before the delete was sent, but
		// it may have begun after the commit and read the new row.
		{"deleted, stamped below the floor without a lease: may be fresh", del, stamped(0xff, "v"), Unverifiable},
		{"deleted, stamped at the floor: cannot tell", del, stamped(0x100, "v"), Unverifiable},
		{"deleted, stamped between floor and commit", del, stamped(0x1ff, "v"), Unverifiable},
		{"deleted with leases, leased fill stamped below the floor: survived the fence", delLeases, leaseStamped(0xff, "v"), Stale},
		{"deleted with leases, leased fill stamped at the floor", delLeases, leaseStamped(0x100, "v"), Unverifiable},
		{"deleted with leases, leased fill stamped at the commit", delLeases, leaseStamped(0x200, "v"), Newer},
		{"deleted with leases, fill without a lease stamped below the floor", delLeases, stamped(0xff, "v"), Unverifiable},
		{"deleted without leases, leased fill stamped below the floor: nothing fenced it", del, leaseStamped(0xff, "v"), Unverifiable},
		{"deleted, snapshot bounded before the commit", del, loadStamped(0xff, 0x1f0, "v"), Stale},
		{"deleted, snapshot bounded at the commit record's start", del, loadStamped(0xff, 0x200, "v"), Stale},
		{"deleted, snapshot bounded after the commit: read the new row", del, loadStamped(0xff, 0x201, "v"), Unverifiable},
		{"deleted, snapshot bound unknown (0)", del, loadStamped(0xff, 0, "v"), Unverifiable},
		{"version absent", ver, nil, Absent},
		{"version at the commit", ver, str("0/200"), Newer},
		{"version above", ver, str("0/201"), Newer},
		{"version below", ver, str("0/1FF"), Stale},
		{"version not an LSN", ver, str("x"), Unverifiable},
		{"refresh absent", ref, nil, Absent},
		{"refresh equal", ref, str(`{"id":1}`), Newer},
		{"refresh other value", ref, str(`{"id":2}`), Stale},
	} {
		if got := Classify(c.latest, c.val); got != c.want {
			t.Errorf("%s: Classify = %s, want %s", c.name, got, c.want)
		}
	}
	if !Absent.Consistent() || !Newer.Consistent() || Stale.Consistent() || Unverifiable.Consistent() {
		t.Error("Consistent: only absent and newer count as consistent")
	}
}

func TestSampled(t *testing.T) {
	all := New(nil, Options{Rate: 1})
	some := New(nil, Options{Rate: 1000})
	n := 0
	for i := 0; i < 200000; i++ {
		k := fmt.Sprintf("user:%d", i)
		if !all.Sampled(k) {
			t.Fatalf("rate 1 skipped %s", k)
		}
		if some.Sampled(k) {
			n++
			if !some.Sampled(k) {
				t.Fatalf("%s sampled once, not twice: not deterministic", k)
			}
		}
	}
	if n < 100 || n > 400 {
		t.Errorf("rate 1000 sampled %d of 200,000 keys, want about 200", n)
	}
	if a := testing.AllocsPerRun(100, func() { some.Sampled("user:123456") }); a != 0 {
		t.Errorf("Sampled allocates %v times", a)
	}
}

// fakeRedis answers GetMany from a map; each read can change a value
// (script) to model a write landing between two reads.
type fakeRedis struct {
	mu    sync.Mutex
	vals  map[string]string
	reads int
	fail  int // fail this many reads first
}

func (f *fakeRedis) GetMany(_ context.Context, keys []string) ([]*string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail > 0 {
		f.fail--
		return nil, fmt.Errorf("connection refused")
	}
	f.reads++
	out := make([]*string, len(keys))
	for i, k := range keys {
		if v, ok := f.vals[k]; ok {
			out[i] = &v
		}
	}
	return out, nil
}

func (f *fakeRedis) set(k, v string) {
	f.mu.Lock()
	f.vals[k] = v
	f.mu.Unlock()
}

type recorder struct {
	mu      sync.Mutex
	results map[string]int // "window/table/rule/result"
	dropped int
	ages    int
}

func (r *recorder) Checked(w time.Duration, table, rule string, res Result) {
	r.mu.Lock()
	r.results[fmt.Sprintf("%s/%s/%s/%s", WindowLabel(w), table, rule, res)]++
	r.mu.Unlock()
}
func (r *recorder) Ratio(time.Duration, float64) {}
func (r *recorder) StaleAge(time.Duration)       { r.mu.Lock(); r.ages++; r.mu.Unlock() }
func (r *recorder) Dropped(n int)                { r.mu.Lock(); r.dropped += n; r.mu.Unlock() }

func waitChecks(t *testing.T, v *Verifier, window int, n uint64) WindowFigures {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f := v.Figures()[window]
		if f.Checks() >= n {
			return f
		}
		if time.Now().After(deadline) {
			t.Fatalf("window %s: %d checks after 10s, want %d: %+v", f.Window, f.Checks(), n, f)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRunClassifiesEachWindow(t *testing.T) {
	rd := &fakeRedis{vals: map[string]string{
		"user:1:v": "0/300",    // raised past the sample: newer
		"user:2:v": "0/100",    // below: stale
		"p:1":      `{"id":1}`, // the refreshed value: newer
		"p:2":      `{"id":0}`, // another value, fixed before the confirmation
		"u:3":      "plain",    // filled by code that does not stamp
	}, fail: 1}
	rec := &recorder{results: map[string]int{}}
	lab := &RuleLabeler{}
	lab.Add("user:*:v", "public.users", "rules[0]")
	lab.Add("p:*", "public.products", "rules[1]")
	var staleSeen []string // from Run's goroutine, read after stop
	v := New(rd, Options{Rate: 1, Windows: []time.Duration{20 * time.Millisecond, 60 * time.Millisecond},
		ConfirmAfter: 50 * time.Millisecond, Observer: rec, Labeler: lab,
		OnStale: func(s Sample, window, _ time.Duration) {
			staleSeen = append(staleSeen, s.Key+"/"+s.Kind.String()+"/"+s.LSN.String()+"/"+window.String())
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			cancel()
			<-done
			stopped = true
		}
	}
	defer stop()

	v.Offer([]Sample{
		{Key: "user:1:v", LSN: 0x200, Kind: KindVersion},
		{Key: "user:2:v", LSN: 0x200, Kind: KindVersion},
		{Key: "p:1", LSN: 0x200, Kind: KindRefresh, Value: `{"id":0}`},
		{Key: "p:1", LSN: 0x201, Kind: KindRefresh, Value: `{"id":1}`}, // newer write of the same key wins
		{Key: "p:2", LSN: 0x200, Kind: KindRefresh, Value: `{"id":2}`},
		{Key: "gone", LSN: 0x200, Kind: KindDelete},
		{Key: "u:3", LSN: 0x200, Kind: KindDelete},
	})
	go func() {
		time.Sleep(40 * time.Millisecond)
		rd.set("p:2", `{"id":2}`) // the write was in flight at the first read
	}()
	for w := 0; w < 2; w++ {
		f := waitChecks(t, v, w, 7)
		if f.Absent != 1 || f.Newer != 4 || f.Stale != 1 || f.Unverifiable != 1 {
			t.Errorf("window %s: %+v, want absent 1, newer 4 (user:1:v, both p:1, p:2 after confirming), stale 1 (user:2:v), unverifiable 1", f.Window, f)
		}
		if r := f.Ratio(); r < 0.83 || r > 0.84 {
			t.Errorf("window %s: ratio %v, want 5/6", f.Window, r)
		}
	}
	stop() // Run owns latest and pending
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.results["0.02s/public.users/rules[0]/stale"] != 1 || rec.results["0.06s/public.products/rules[1]/newer"] != 3 || rec.results["0.02s///absent"] != 1 {
		t.Errorf("labelled results: %v", rec.results)
	}
	if rec.ages != 2 {
		t.Errorf("stale ages observed %d, want 2 (one per window)", rec.ages)
	}
	slices.Sort(staleSeen) // the two windows' confirmations may come in either order
	if want := []string{"user:2:v/version/0/200/20ms", "user:2:v/version/0/200/60ms"}; !slices.Equal(staleSeen, want) {
		t.Errorf("OnStale saw %q, want %q", staleSeen, want)
	}
	if len(v.latest) != 0 || v.pending != 0 {
		t.Errorf("after every check: %d latest entries, %d pending; want none", len(v.latest), v.pending)
	}
}

func TestOfferDropsWhenFull(t *testing.T) {
	rd := &fakeRedis{vals: map[string]string{}}
	rec := &recorder{results: map[string]int{}}
	v := New(rd, Options{Rate: 1, Windows: []time.Duration{time.Hour, 2 * time.Hour}, MaxPending: 10, Observer: rec})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	batch := make([]Sample, 8)
	for i := range batch {
		batch[i] = Sample{Key: fmt.Sprint("k", i), LSN: replication.LSN(i + 1), Kind: KindDelete}
	}
	v.Offer(batch)
	deadline := time.Now().Add(5 * time.Second)
	for v.Figures()[0].Dropped < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	// 10 pending checks hold 5 samples of 2 windows; 3 are dropped.
	if f := v.Figures()[0]; f.Dropped != 3 || rec.dropped != 3 || v.pending != 10 {
		t.Errorf("dropped %d (observer %d), pending %d; want 3 dropped and 10 pending", f.Dropped, rec.dropped, v.pending)
	}
}

func TestMatchGlob(t *testing.T) {
	for _, c := range []struct {
		glob, s string
		want    bool
	}{
		{"user:*", "user:1", true},
		{"user:*", "user:", true},
		{"user:*", "users:1", false},
		{"user:*:v", "user:1:v", true},
		{"user:*:v", "user:1:x:v", true},
		{"user:*:v", "user:1:vv", false},
		{`a\*b*`, "a*bc", true},
		{`a\*b*`, "axbc", false},
		{"a?c", "abc", true},
		{"*", "", true},
		{"", "x", false},
	} {
		if got := MatchGlob(c.glob, c.s); got != c.want {
			t.Errorf("MatchGlob(%q, %q) = %v, want %v", c.glob, c.s, got, c.want)
		}
	}
}

// TestRunReportsWhenStopped: a stopped engine leaves its last figures (the
// fault suite sums them per engine process), reported with a context that
// is not cancelled, so the write to Redis can still succeed.
func TestRunReportsWhenStopped(t *testing.T) {
	var mu sync.Mutex
	var last []WindowFigures
	var lastErr error
	rd := &fakeRedis{vals: map[string]string{}}
	v := New(rd, Options{Rate: 1, Windows: []time.Duration{10 * time.Millisecond}, ReportEvery: time.Hour,
		Report: func(ctx context.Context, f []WindowFigures) {
			mu.Lock()
			last, lastErr = f, ctx.Err()
			mu.Unlock()
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	v.Offer([]Sample{{Key: "k", LSN: 10, Kind: KindDelete}})
	waitChecks(t, v, 0, 1)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(last) != 1 || last[0].Absent != 1 || lastErr != nil {
		t.Fatalf("final report %+v (context error %v), want one absent check and a live context", last, lastErr)
	}
}

// TestClassifyOrdered: a refreshed value other than the one this engine
// wrote is newer when the key's order key records a later commit (a
// standby that took over while this engine was frozen wrote a later row:
// the fault suite's zombie scenario counted those stale before), and
// stale when it does not.
func TestClassifyOrdered(t *testing.T) {
	ref := Sample{Key: "k", LSN: 0x200, Kind: KindRefresh, Value: `{"id":1}`, OrderKey: "cdcinvalidate:lsn:{k}"}
	for _, c := range []struct {
		name       string
		val, order *string
		want       Result
	}{
		{"other value, later commit in the order key", str(`{"id":2}`), str("0/201"), Newer},
		{"other value, same commit in the order key", str(`{"id":2}`), str("0/200"), Stale},
		{"other value, older commit in the order key", str(`{"id":2}`), str("0/1FF"), Stale},
		{"other value, no order key", str(`{"id":2}`), nil, Stale},
		{"other value, order key not an LSN", str(`{"id":2}`), str("x"), Stale},
		{"equal value", str(`{"id":1}`), str("0/1"), Newer},
		{"absent", nil, str("0/300"), Absent},
	} {
		if got := ClassifyOrdered(ref, c.val, c.order); got != c.want {
			t.Errorf("%s: ClassifyOrdered = %s, want %s", c.name, got, c.want)
		}
	}
	// Run reads the order key with the key.
	rd := &fakeRedis{vals: map[string]string{"a": `{"id":2}`, "cdcinvalidate:lsn:{a}": "0/300", "b": `{"id":2}`, "cdcinvalidate:lsn:{b}": "0/200"}}
	v := New(rd, Options{Rate: 1, Windows: []time.Duration{10 * time.Millisecond}, ConfirmAfter: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = v.Run(ctx) }()
	v.Offer([]Sample{
		{Key: "a", LSN: 0x200, Kind: KindRefresh, Value: `{"id":1}`, OrderKey: "cdcinvalidate:lsn:{a}"},
		{Key: "b", LSN: 0x200, Kind: KindRefresh, Value: `{"id":1}`, OrderKey: "cdcinvalidate:lsn:{b}"},
	})
	f := waitChecks(t, v, 0, 2)
	if f.Newer != 1 || f.Stale != 1 {
		t.Fatalf("figures %+v, want a newer (order key above) and a stale (order key at the commit)", f)
	}
}

// TestStaleAfterDropIsUnverifiable: a large transaction refreshes a key
// twice (two chunks, one commit LSN); when the second sample is dropped
// (the queue was full), the verifier's newest sample is the first value,
// and Redis holds the second under the same order LSN. That proves
// nothing: the fault suite's large-transaction scenario counted such keys
// stale before. Without the drop, the same reading is stale.
func TestStaleAfterDropIsUnverifiable(t *testing.T) {
	for _, dropped := range []bool{false, true} {
		rd := &fakeRedis{vals: map[string]string{"k": `{"v":2}`, "cdcinvalidate:lsn:{k}": "0/200"}}
		v := New(rd, Options{Rate: 1, Windows: []time.Duration{10 * time.Millisecond}, ConfirmAfter: 10 * time.Millisecond})
		v.Offer([]Sample{{Key: "k", LSN: 0x200, Kind: KindRefresh, Value: `{"v":1}`, OrderKey: "cdcinvalidate:lsn:{k}"}})
		for i := 0; i < cap(v.in)-1; i++ {
			v.Offer([]Sample{{Key: fmt.Sprint("x", i), LSN: 0x201, Kind: KindDelete}})
		}
		if dropped {
			v.Offer([]Sample{{Key: "k", LSN: 0x200, Kind: KindRefresh, Value: `{"v":2}`, OrderKey: "cdcinvalidate:lsn:{k}"}})
			if d := v.Figures()[0].Dropped; d != 1 {
				t.Fatalf("dropped %d samples, want 1 (the queue holds %d batches)", d, cap(v.in))
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { _ = v.Run(ctx) }()
		f := waitChecks(t, v, 0, uint64(cap(v.in)))
		cancel()
		want := WindowFigures{Absent: uint64(cap(v.in) - 1), Stale: 1}
		if dropped {
			want = WindowFigures{Absent: uint64(cap(v.in) - 1), Unverifiable: 1}
		}
		if f.Absent != want.Absent || f.Stale != want.Stale || f.Unverifiable != want.Unverifiable {
			t.Errorf("dropped=%v: figures %+v, want absent %d, stale %d, unverifiable %d", dropped, f, want.Absent, want.Stale, want.Unverifiable)
		}
	}
}

// chunkedSink plays the sink applying one large transaction after another
// that each refresh key "k" twice, in two chunks (two batches, one commit
// LSN), as the fault suite's TestActionsFailpoints does: every read of the
// verifier lands after the second chunk was written to Redis and before
// its sample was offered (the sink offers once Redis acknowledged, and the
// verifier may read in between). With garbage, Redis holds a value the
// engine never wrote instead, and there is one transaction only.
type chunkedSink struct {
	v       *Verifier
	garbage bool
	mu      sync.Mutex
	vals    map[string]string
	txn     int
	second  bool // the transaction's second chunk was written
	reads   int
}

func (c *chunkedSink) sample(part string) Sample {
	return Sample{Key: "k", LSN: replication.LSN(0x200 + c.txn), Kind: KindRefresh,
		Value: fmt.Sprintf(`{"txn":%d,"part":%q}`, c.txn, part), OrderKey: "cdcinvalidate:lsn:{k}"}
}

// write sends a chunk: Sending, then the write (the sample is returned,
// to be offered once "acknowledged").
func (c *chunkedSink) write(part string) Sample {
	c.v.Sending()
	s := c.sample(part)
	c.vals["k"], c.vals["cdcinvalidate:lsn:{k}"] = s.Value, s.LSN.String()
	if c.garbage {
		c.vals["k"] = `{"written by":"nobody"}`
	}
	return s
}

// first applies a new transaction's first chunk and offers it.
func (c *chunkedSink) first() {
	c.mu.Lock()
	if c.garbage && c.txn > 0 {
		c.mu.Unlock()
		return
	}
	c.txn++
	c.second = false
	s := c.write("a")
	c.mu.Unlock()
	c.v.Offer([]Sample{s})
}

func (c *chunkedSink) GetMany(_ context.Context, keys []string) ([]*string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	if !c.second {
		c.second = true
		second := c.write("b") // in Redis, not offered yet
		go func() {
			time.Sleep(time.Millisecond)
			c.v.Offer([]Sample{second})
			c.first() // the next transaction begins
		}()
	}
	out := make([]*string, len(keys))
	for i, k := range keys {
		if v, ok := c.vals[k]; ok {
			out[i] = &v
		}
	}
	return out, nil
}

// TestReadingWaitsForOffers is the open finding of TestActionsFailpoints
// (stale checks the quiescence checker never found, all refresh keys of
// large transactions applied in chunks): a reading that holds a chunk the
// sink wrote but had not offered yet compared "another value at the same
// commit" and counted it stale, and its confirmation, 1 s later, met the
// next transaction in the same state. A reading is now judged only after
// the batches begun before it were offered. A value the engine never
// wrote is still stale.
func TestReadingWaitsForOffers(t *testing.T) {
	for _, garbage := range []bool{false, true} {
		cs := &chunkedSink{vals: map[string]string{}, garbage: garbage}
		v := New(cs, Options{Rate: 1, Windows: []time.Duration{10 * time.Millisecond}, ConfirmAfter: 20 * time.Millisecond})
		cs.v = v
		cs.first()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- v.Run(ctx) }()
		n := uint64(4)
		if garbage {
			n = 2 // the transaction's two samples
		}
		f := waitChecks(t, v, 0, n)
		cancel()
		<-done
		cs.mu.Lock()
		reads := cs.reads
		cs.mu.Unlock()
		if garbage {
			if f.Stale != 2 {
				t.Errorf("a value the engine never wrote: %+v after %d reads, want both checks stale", f, reads)
			}
			continue
		}
		if f.Stale != 0 {
			t.Errorf("readings racing the offers of chunked transactions: %+v after %d reads, want none stale", f, reads)
		}
	}
}
