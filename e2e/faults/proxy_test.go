package faults

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// proxy is a TCP proxy on 127.0.0.1 between the engine and Redis. It can
// delay what the engine sends (SetDelay: each chunk is forwarded delay
// after it arrived, in order) and reset every connection (ResetAll: RST on
// both sides). It only ever connects to its one target.
type proxy struct {
	ln     net.Listener
	target string
	delay  atomic.Int64 // nanoseconds
	resets atomic.Int64

	mu     sync.Mutex
	conns  map[*proxyConn]struct{}
	closed bool
	wg     sync.WaitGroup
}

type proxyConn struct {
	client, server *net.TCPConn
	quit           chan struct{}
	once           sync.Once
}

// maxQueued bounds the chunks waiting for their delay, per connection;
// beyond it the proxy stops reading from the client (back pressure).
const maxQueued = 256

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[*proxyConn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

// SetDelay sets the latency added to every chunk the engine sends from now on.
func (p *proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// ResetAll resets every open connection (both sides see a RST) and
// returns how many there were.
func (p *proxy) ResetAll() int {
	p.mu.Lock()
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.client.SetLinger(0)
		_ = c.server.SetLinger(0)
		c.close()
	}
	p.resets.Add(int64(len(conns)))
	return len(conns)
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		pc := &proxyConn{client: c.(*net.TCPConn), server: s.(*net.TCPConn), quit: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			pc.close()
			return
		}
		p.conns[pc] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.upstream(pc)
		go p.downstream(pc)
	}
}

func (c *proxyConn) close() {
	c.once.Do(func() {
		close(c.quit)
		_ = c.client.Close()
		_ = c.server.Close()
	})
}

func (p *proxy) forget(c *proxyConn) {
	c.close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

type chunk struct {
	b   []byte
	due time.Time
}

// upstream forwards client to server, each chunk delay after it arrived.
func (p *proxy) upstream(c *proxyConn) {
	defer p.wg.Done()
	defer p.forget(c)
	queue := make(chan chunk, maxQueued)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		timer := time.NewTimer(time.Hour)
		defer timer.Stop()
		for ch := range queue {
			if d := time.Until(ch.due); d > 0 {
				timer.Reset(d)
				select {
				case <-timer.C:
				case <-c.quit:
					return
				}
			}
			if _, err := c.server.Write(ch.b); err != nil {
				c.close()
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.client.Read(buf)
		if n > 0 {
			ch := chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(time.Duration(p.delay.Load()))}
			select {
			case queue <- ch:
			case <-c.quit:
				close(queue)
				<-writerDone
				return
			}
		}
		if err != nil {
			close(queue)
			<-writerDone
			return
		}
	}
}

// downstream forwards server to client without delay.
func (p *proxy) downstream(c *proxyConn) {
	defer p.wg.Done()
	defer p.forget(c)
	_, _ = io.Copy(c.client, c.server)
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, c := range conns {
		c.close()
	}
	p.wg.Wait()
}
