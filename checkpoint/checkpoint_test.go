package checkpoint

import (
	"sync"
	"testing"
	"time"
)

func TestTrackerAckMonotonic(t *testing.T) {
	t.Parallel()
	tr := NewTracker(100)
	if got := tr.Applied(); got != 100 {
		t.Fatalf("Applied() = %v, want the start 100", got)
	}
	steps := []struct {
		ack, want LSN
	}{
		{200, 200},
		{150, 200}, // older: ignored
		{200, 200}, // equal: ignored
		{0, 200},
		{201, 201},
		{1 << 40, 1 << 40},
		{100, 1 << 40},
	}
	for _, s := range steps {
		tr.Ack(s.ack)
		if got := tr.Applied(); got != s.want {
			t.Errorf("after Ack(%v): Applied() = %v, want %v", s.ack, got, s.want)
		}
	}
}

func TestTrackerConcurrentAcks(t *testing.T) {
	t.Parallel()
	tr := NewTracker(0)
	const goroutines, perG = 8, 1000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				// Interleaved, out of order across goroutines.
				tr.Ack(LSN(i*goroutines + g + 1))
				if i%100 == 0 {
					_ = tr.Applied()
				}
			}
		})
	}
	// A reader sees a non-decreasing position throughout.
	done := make(chan struct{})
	readerErr := make(chan LSN, 1)
	go func() {
		var last LSN
		for {
			select {
			case <-done:
				close(readerErr)
				return
			default:
			}
			if cur := tr.Applied(); cur < last {
				readerErr <- cur
				return
			} else {
				last = cur
			}
		}
	}()
	wg.Wait()
	close(done)
	if back, ok := <-readerErr; ok {
		t.Errorf("Applied went backwards to %v", back)
	}
	if got, want := tr.Applied(), LSN(goroutines*perG); got != want {
		t.Errorf("Applied() = %v, want the maximum %v", got, want)
	}
}

func TestWaitApplied(t *testing.T) {
	t.Parallel()
	t.Run("already reached", func(t *testing.T) {
		t.Parallel()
		tr := NewTracker(500)
		if !tr.WaitApplied(500, time.Now().Add(time.Hour)) {
			t.Error("WaitApplied(500) = false at 500")
		}
		if !tr.WaitApplied(10, time.Now().Add(-time.Second)) {
			t.Error("WaitApplied with a past deadline = false though reached")
		}
	})
	t.Run("reached later from another goroutine", func(t *testing.T) {
		t.Parallel()
		tr := NewTracker(0)
		go func() {
			for _, l := range []LSN{10, 20, 30} {
				time.Sleep(5 * time.Millisecond)
				tr.Ack(l)
			}
		}()
		start := time.Now()
		if !tr.WaitApplied(30, time.Now().Add(10*time.Second)) {
			t.Fatal("WaitApplied(30) = false")
		}
		if tr.Applied() < 30 {
			t.Errorf("WaitApplied returned at %v", tr.Applied())
		}
		if time.Since(start) > 5*time.Second {
			t.Errorf("WaitApplied took %v", time.Since(start))
		}
	})
	t.Run("many waiters", func(t *testing.T) {
		t.Parallel()
		tr := NewTracker(0)
		var wg sync.WaitGroup
		results := make([]bool, 20)
		for i := range results {
			wg.Go(func() { results[i] = tr.WaitApplied(LSN(i+1), time.Now().Add(10*time.Second)) })
		}
		for l := LSN(1); l <= 20; l++ {
			tr.Ack(l)
		}
		wg.Wait()
		for i, ok := range results {
			if !ok {
				t.Errorf("waiter for %d returned false", i+1)
			}
		}
	})
	t.Run("deadline", func(t *testing.T) {
		t.Parallel()
		tr := NewTracker(0)
		go tr.Ack(10) // an advance that is not enough
		start := time.Now()
		if tr.WaitApplied(100, time.Now().Add(50*time.Millisecond)) {
			t.Fatal("WaitApplied(100) = true at", tr.Applied())
		}
		if d := time.Since(start); d < 45*time.Millisecond {
			t.Errorf("WaitApplied returned false after %v, before the deadline", d)
		}
	})
	t.Run("past deadline", func(t *testing.T) {
		t.Parallel()
		tr := NewTracker(0)
		start := time.Now()
		if tr.WaitApplied(1, time.Now().Add(-time.Second)) {
			t.Fatal("WaitApplied = true")
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("WaitApplied with a past deadline took %v", d)
		}
	})
}

func TestReporterDue(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	newRep := func() *Reporter {
		r := &Reporter{Interval: 10 * time.Second, Prompt: 100 * time.Millisecond}
		r.Sent(t0, 1000)
		return r
	}
	tests := []struct {
		name    string
		after   time.Duration
		applied LSN
		want    bool
	}{
		{"just sent, nothing moved", 0, 1000, false},
		{"before interval, nothing moved", 9 * time.Second, 1000, false},
		{"at interval", 10 * time.Second, 1000, true},
		{"after interval", time.Minute, 1000, true},
		{"applied moved, before prompt", 50 * time.Millisecond, 1001, false},
		{"applied moved, at prompt", 100 * time.Millisecond, 1001, true},
		{"applied moved, after prompt", time.Second, 2000, true},
		{"applied below sent flush", time.Second, 500, false},
		{"clock went backwards", -time.Second, 2000, false},
	}
	for _, tc := range tests {
		r := newRep()
		if got := r.Due(t0.Add(tc.after), tc.applied); got != tc.want {
			t.Errorf("%s: Due(+%v, %v) = %v, want %v", tc.name, tc.after, tc.applied, got, tc.want)
		}
	}

	// A fresh reporter is due at once.
	var r Reporter
	r.Interval, r.Prompt = 10*time.Second, time.Second
	if !r.Due(time.Now(), 0) {
		t.Error("fresh reporter not due")
	}
}

func TestReporterNext(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &Reporter{Interval: 10 * time.Second, Prompt: 100 * time.Millisecond}
	r.Sent(t0, 1000)
	if got, want := r.Next(1000), t0.Add(10*time.Second); !got.Equal(want) {
		t.Errorf("Next(unchanged) = %v, want %v", got, want)
	}
	if got, want := r.Next(1001), t0.Add(100*time.Millisecond); !got.Equal(want) {
		t.Errorf("Next(moved) = %v, want %v", got, want)
	}
	// Due and Next agree.
	for _, applied := range []LSN{1000, 1001} {
		next := r.Next(applied)
		if r.Due(next.Add(-time.Nanosecond), applied) || !r.Due(next, applied) {
			t.Errorf("applied %v: Due does not switch at Next %v", applied, next)
		}
	}
}

func TestReporterStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		received []LSN
		applied  LSN
		write    LSN
	}{
		{nil, 0, 0},
		{nil, 100, 100},
		{[]LSN{50}, 100, 100},       // received behind applied: write raised to flush
		{[]LSN{500}, 100, 500},      // received ahead
		{[]LSN{500, 300}, 100, 500}, // received never goes back
		{[]LSN{100}, 100, 100},
	}
	for _, tc := range tests {
		var r Reporter
		for _, l := range tc.received {
			r.Received(l)
		}
		w, f, a := r.Status(tc.applied)
		if w != tc.write || f != tc.applied || a != tc.applied {
			t.Errorf("received %v applied %v: Status = %v %v %v, want %v %v %v", tc.received, tc.applied, w, f, a, tc.write, tc.applied, tc.applied)
		}
		if w < f {
			t.Errorf("write %v < flush %v", w, f)
		}
	}
}

func TestReporterSent(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &Reporter{Interval: time.Second, Prompt: time.Millisecond}
	r.Sent(t0, 100)
	if r.SentFlush() != 100 {
		t.Errorf("SentFlush = %v, want 100", r.SentFlush())
	}
	// The time is recorded: not due right after.
	if r.Due(t0.Add(time.Millisecond/2), 100) {
		t.Error("due right after Sent")
	}
	// A lower flush (e.g. a keepalive reply before anything applied) keeps the higher one.
	r.Sent(t0.Add(time.Second), 50)
	if r.SentFlush() != 100 {
		t.Errorf("SentFlush = %v after a lower Sent, want 100", r.SentFlush())
	}
	if r.Due(t0.Add(time.Second+time.Millisecond/2), 100) {
		t.Error("Sent did not record the new time")
	}
	if !r.Due(t0.Add(2*time.Second), 100) {
		t.Error("not due an Interval after the last Sent")
	}
}

func TestTrackerLag(t *testing.T) {
	t.Parallel()
	tr := NewTracker(100)
	now := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	if lag, n := tr.Lag(now); lag != 0 || n != 0 {
		t.Fatalf("idle lag = %s, %d; want 0, 0", lag, n)
	}
	tr.Handed(90, now.Add(-20*time.Second)) // already applied: ignored
	tr.Handed(200, now.Add(-5*time.Second))
	tr.Handed(300, now.Add(-2*time.Second))
	tr.Handed(350, time.Time{}) // a keepalive position has no commit time
	if lag, n := tr.Lag(now); lag != 5*time.Second || n != 3 {
		t.Fatalf("lag = %s, %d; want 5s, 3", lag, n)
	}
	tr.Ack(250)
	if lag, n := tr.Lag(now); lag != 2*time.Second || n != 2 {
		t.Fatalf("after Ack(250) lag = %s, %d; want 2s, 2", lag, n)
	}
	if got := tr.AppliedCommitTime(); !got.Equal(now.Add(-5 * time.Second)) {
		t.Fatalf("applied commit time = %s", got)
	}
	tr.Ack(350)
	if lag, n := tr.Lag(now); lag != 0 || n != 0 {
		t.Fatalf("caught up: lag = %s, %d; want 0, 0", lag, n)
	}
	if got := tr.AppliedCommitTime(); !got.Equal(now.Add(-2 * time.Second)) {
		t.Fatalf("applied commit time = %s, want the last one with a commit time", got)
	}
}
