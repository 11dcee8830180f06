package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// rttProxy is a TCP proxy that adds a round-trip time to every connection
// through it, half in each direction: --redis-rtt puts it between the
// engine and Redis to measure the engine against a Redis some distance
// away. It delays, it does not throttle: every chunk read from one side is
// queued with its arrival time and written to the other side at
// arrival + rtt/2, in order, while the reader goes on reading. A pipeline
// of many commands therefore costs one round trip, as on a real network
// (whose bandwidth loopback does not limit either), and a client that
// waits for each reply pays the round trip every time.
//
// Sleeps shorter than the Go runtime's timer granularity (about 1 ms on
// Linux) use nanosleep(2) on the writer's thread (preciseSleep), so that a
// 1 ms RTT is 1 ms and not 2; that thread's timer slack is 1 ns instead of
// Linux's 50 µs (preciseThread). Measured with an echo server on a quiet
// 2-core machine, 1 ms asked gave 1.29 ms (p50) before the slack was set,
// 1.19 ms after; the rest is the proxy's hand-overs. Under load it is more
// (1.5 ms p50, 2.9 ms p99 during a 2,000 commits/s latency run), so the
// latency phase times a PING through the proxy every 10 ms
// (sampleProxyRTT) and reports that round trip beside --redis-rtt.
type rttProxy struct {
	ln     net.Listener
	target string
	oneWay time.Duration

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup // accept loop and connection handlers
}

// proxyQueue is how many chunks a direction holds while they wait out the
// delay; a reader that gets that far ahead waits (TCP flow control then
// slows the sender, as a full network buffer would).
const proxyQueue = 4096

// startRTTProxy listens on a free loopback port and forwards every
// connection to target with rtt added.
func startRTTProxy(target string, rtt time.Duration) (*rttProxy, error) {
	if rtt < 0 {
		return nil, fmt.Errorf("rtt proxy: negative round-trip time %s", rtt)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("rtt proxy: listen on loopback: %w", err)
	}
	p := &rttProxy{ln: ln, target: target, oneWay: rtt / 2, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's address, to give clients instead of target.
func (p *rttProxy) Addr() string { return p.ln.Addr().String() }

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines. It is idempotent.
func (p *rttProxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

// track registers c to be closed by Close; false once the proxy is closed.
func (p *rttProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *rttProxy) forget(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
		_ = c.Close()
	}
}

func (p *rttProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(client) {
			_ = client.Close()
			return
		}
		p.wg.Add(1)
		go p.serve(client)
	}
}

// serve connects client to the target and forwards both ways until both
// directions ended.
func (p *rttProxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil || !p.track(server) {
		if server != nil {
			_ = server.Close()
		}
		p.forget(client)
		return
	}
	for _, c := range []net.Conn{client, server} {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client) }()
	go func() { defer wg.Done(); p.pipe(client, server) }()
	wg.Wait()
	p.forget(client, server)
}

// chunk is data read from one side, and when.
type chunk struct {
	data []byte
	at   time.Time
}

// pipe forwards src to dst with the one-way delay. When src ends (EOF or
// an error), what was read is still delivered, then dst's write side is
// closed, so the peer sees the end as it would have. When a write to dst
// fails, both connections are closed, which ends the other direction too.
func (p *rttProxy) pipe(dst, src net.Conn) {
	q := make(chan chunk, proxyQueue)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer close(q)
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{data: append([]byte(nil), buf[:n]...), at: time.Now()}
			}
			if err != nil {
				return
			}
		}
	}()
	var werr error
	defer preciseThread()()
	for c := range q {
		if werr != nil {
			continue // drain, so that the reader is not blocked
		}
		preciseSleep(time.Until(c.at.Add(p.oneWay)))
		if _, werr = dst.Write(c.data); werr != nil {
			_ = dst.Close()
			_ = src.Close()
		}
	}
	<-readerDone
	if werr == nil {
		if tc, ok := dst.(*net.TCPConn); ok {
			if err := tc.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
				_ = dst.Close()
			}
		} else {
			_ = dst.Close()
		}
	}
}

// proxyProbeEvery is how often sampleProxyRTT times a PING.
const proxyProbeEvery = 10 * time.Millisecond

// sampleProxyRTT times a PING through the delay proxy every
// proxyProbeEvery until ctx ends, on a connection of its own: the round
// trip the engine's pipelines actually had (the proxy's delay plus its own
// hand-overs and the machine's scheduling, which --redis-rtt does not
// include). Nil without a proxy.
func (b *bench) sampleProxyRTT(ctx context.Context) []time.Duration {
	if b.topo.proxy == nil {
		return nil
	}
	rdb := redis.NewClient(b.standaloneOptions(b.topo.proxy.Addr(), 1))
	defer rdb.Close()
	_ = rdb.Ping(ctx).Err() // the connection is made outside the samples
	var out []time.Duration
	t := time.NewTicker(proxyProbeEvery)
	defer t.Stop()
	for {
		start := time.Now()
		if err := rdb.Ping(ctx).Err(); err == nil {
			out = append(out, time.Since(start))
		}
		select {
		case <-ctx.Done():
			return out
		case <-t.C:
		}
	}
}
