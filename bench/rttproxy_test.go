package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// echoServer echoes every connection until its client closes it; closed
// receives once per connection that saw EOF from the client.
func echoServer(t *testing.T) (addr string, closed chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed = make(chan struct{}, 16)
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if _, err := io.Copy(c, c); err == nil {
					closed <- struct{}{}
				}
			}()
		}
	}()
	return ln.Addr().String(), closed
}

func startTestProxy(t *testing.T, target string, rtt time.Duration) *rttProxy {
	t.Helper()
	p, err := startRTTProxy(target, rtt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A request and its reply take the round-trip time: never less, and (the
// median of a few, on a busy machine) not much more.
func TestRTTProxyAddsRoundTrip(t *testing.T) {
	addr, _ := echoServer(t)
	const rtt = 20 * time.Millisecond
	c := dial(t, startTestProxy(t, addr, rtt).Addr())
	r := bufio.NewReader(c)
	var took []float64
	for i := 0; i < 7; i++ {
		start := time.Now()
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		line, err := r.ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("echo: %q, %v", line, err)
		}
		d := time.Since(start)
		if d < rtt {
			t.Errorf("round trip %d took %s, less than the %s added", i, d, rtt)
		}
		took = append(took, d.Seconds())
	}
	if m := time.Duration(median(took) * float64(time.Second)); m > rtt+10*time.Millisecond {
		t.Errorf("median round trip %s; want %s (+ at most 10 ms)", m, rtt)
	}
}

// Pipelined requests cost one round trip together: the delay is applied to
// each chunk from its arrival, not by waiting for one chunk before reading
// the next.
func TestRTTProxyPipelines(t *testing.T) {
	addr, _ := echoServer(t)
	const rtt = 100 * time.Millisecond
	c := dial(t, startTestProxy(t, addr, rtt).Addr())
	const n = 20
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			if _, err := c.Write([]byte("request\n")); err != nil {
				done <- err
				return
			}
			time.Sleep(time.Millisecond) // separate TCP segments, separate chunks
		}
		done <- nil
	}()
	r := bufio.NewReader(c)
	for i := 0; i < n; i++ {
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Serialised, 20 requests would take 20 round trips (2 s); pipelined,
	// the writes' spread (20-100 ms on a busy machine) plus one round trip.
	if took := time.Since(start); took < rtt || took > 3*rtt {
		t.Errorf("%d pipelined requests took %s; want about one round trip (%s) plus the writes' spread, far below %s", n, took, rtt, n*rtt)
	}
}

// Bytes arrive in the order they were sent, none lost, in both directions.
func TestRTTProxyKeepsOrder(t *testing.T) {
	addr, _ := echoServer(t)
	c := dial(t, startTestProxy(t, addr, 2*time.Millisecond).Addr())
	want := make([]byte, 4<<20)
	for i := range want {
		want[i] = byte(i * 7 / 3)
	}
	errc := make(chan error, 1)
	go func() {
		for off := 0; off < len(want); {
			n := min(1+off%5000, len(want)-off) // chunks of varying sizes
			if _, err := c.Write(want[off : off+n]); err != nil {
				errc <- err
				return
			}
			off += n
		}
		errc <- nil
	}()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && got[i] == want[i] {
			i++
		}
		t.Fatalf("the echo differs from what was sent from byte %d on", i)
	}
}

// A client that closes its connection closes the proxy's to the server
// (after the delay), and a server that closes ends the client's.
func TestRTTProxyPropagatesClose(t *testing.T) {
	addr, serverSawEOF := echoServer(t)
	p := startTestProxy(t, addr, 10*time.Millisecond)

	c := dial(t, p.Addr())
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-serverSawEOF:
	case <-time.After(2 * time.Second):
		t.Fatal("the server did not see the client's close through the proxy")
	}

	// The server side closing: a listener that accepts and closes at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err == nil {
			_, _ = s.Write([]byte("bye"))
			s.Close()
		}
	}()
	c2 := dial(t, startTestProxy(t, ln.Addr().String(), 10*time.Millisecond).Addr())
	_ = c2.SetReadDeadline(time.Now().Add(2 * time.Second))
	got, err := io.ReadAll(c2)
	if err != nil || string(got) != "bye" {
		t.Fatalf("client read %q, %v; want bye then EOF", got, err)
	}

	// Closing the proxy ends the connections through it.
	c3 := dial(t, p.Addr())
	if _, err := c3.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c3, buf); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c3.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = c3.Read(buf)
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("read after the proxy closed: %v; want EOF or a reset", err)
	}
}

// sampleProxyRTT times PINGs through the proxy to a real Redis: each
// takes at least the proxy's round trip; without a proxy there is none.
func TestSampleProxyRTT(t *testing.T) {
	rd := harness.RedisT(t, harness.RedisOptions{})
	const rtt = 4 * time.Millisecond
	b := &bench{topo: topo{proxy: startTestProxy(t, rd.Addr(), rtt)}}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	got := b.sampleProxyRTT(ctx)
	if len(got) < 3 {
		t.Fatalf("%d round trips timed in 200 ms, want a PING every %s", len(got), proxyProbeEvery)
	}
	for i, d := range got {
		if d < rtt {
			t.Errorf("round trip %d took %s, less than the proxy's %s", i, d, rtt)
		}
	}
	if none := (&bench{}).sampleProxyRTT(ctx); none != nil {
		t.Errorf("without a proxy: %v, want none", none)
	}
}
