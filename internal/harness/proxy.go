package harness

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is a TCP proxy on 127.0.0.1 to one target, for tests of network
// faults between the engine and a server. It can delay what the engine
// sends (SetDelay: each chunk is forwarded delay after it arrived, in
// order), reset every connection (ResetAll: RST on both sides), and make
// the open connections half-open (Blackhole: from then on it reads and
// discards what either side sends and keeps the engine's side open even
// when the server closes its own, as a dead peer behind a lost NAT mapping
// looks; connections made later are forwarded normally). It only ever
// connects to its one target.
type Proxy struct {
	ln     net.Listener
	target string
	delay  atomic.Int64 // nanoseconds

	mu     sync.Mutex
	conns  map[*proxyConn]struct{}
	closed bool
	wg     sync.WaitGroup
}

type proxyConn struct {
	client, server *net.TCPConn
	quit           chan struct{}
	once           sync.Once
	blackholed     atomic.Bool
}

// maxQueued bounds the chunks waiting for their delay, per connection;
// beyond it the proxy stops reading from the client (back pressure).
const maxQueued = 256

// StartProxy listens on a free loopback port and forwards every connection
// to target; it is closed at the end of the test.
func StartProxy(t TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[*proxyConn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetDelay sets the latency added to every chunk the engine sends from now on.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(d)) }

// ResetAll resets every open connection (both sides see a RST) and
// returns how many there were.
func (p *Proxy) ResetAll() int {
	conns := p.open()
	for _, c := range conns {
		_ = c.client.SetLinger(0)
		_ = c.server.SetLinger(0)
		c.close()
	}
	return len(conns)
}

// Blackhole makes every open connection half-open (see Proxy) and returns
// how many there were.
func (p *Proxy) Blackhole() int {
	conns := p.open()
	for _, c := range conns {
		c.blackholed.Store(true)
	}
	return len(conns)
}

func (p *Proxy) open() []*proxyConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	return conns
}

func (p *Proxy) accept() {
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

// forget closes c, unless it is half-open: then the engine's side stays
// open until the proxy closes.
func (p *Proxy) forget(c *proxyConn) {
	if c.blackholed.Load() {
		return
	}
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
func (p *Proxy) upstream(c *proxyConn) {
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
			if c.blackholed.Load() {
				continue
			}
			if _, err := c.server.Write(ch.b); err != nil {
				p.forget(c)
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
func (p *Proxy) downstream(c *proxyConn) {
	defer p.wg.Done()
	defer p.forget(c)
	buf := make([]byte, 32<<10)
	for {
		n, err := c.server.Read(buf)
		if n > 0 && !c.blackholed.Load() {
			if _, werr := c.client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Close closes the listener and every connection, and waits for the
// proxy's goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	_ = p.ln.Close()
	for _, c := range p.open() {
		c.close()
	}
	p.wg.Wait()
}
