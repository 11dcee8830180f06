package bench

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// progress shows what the bench is doing on a terminal (one line,
// rewritten in place) or, when forced onto a non-terminal, as a line at
// every change of step and at most every 5 s while a step lasts. A nil
// *progress shows nothing.
type progress struct {
	w   io.Writer
	tty bool

	mu      sync.Mutex
	step    string // the current step, e.g. "catch-up batched 2/3: engine"
	detail  string // e.g. "45% of the WAL"
	started time.Time
	shown   time.Time // when a non-terminal line was last written
	width   int       // of the last terminal line, to blank it out
	stop    chan struct{}
	done    chan struct{}
}

func newProgress(w io.Writer, tty bool) *progress {
	p := &progress{w: w, tty: tty, stop: make(chan struct{}), done: make(chan struct{})}
	go p.loop()
	return p
}

func (p *progress) loop() {
	defer close(p.done)
	every := 200 * time.Millisecond
	if !p.tty {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			if p.tty || time.Since(p.shown) >= 5*time.Second {
				p.render()
			}
			p.mu.Unlock()
		}
	}
}

// Step starts a new step.
func (p *progress) Step(format string, args ...any) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.step = fmt.Sprintf(format, args...)
	p.detail = ""
	p.started = time.Now()
	p.render()
}

// Detail updates the current step's detail; it is shown at the next tick.
func (p *progress) Detail(format string, args ...any) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.detail = fmt.Sprintf(format, args...)
}

// Close clears the terminal line and stops the display.
func (p *progress) Close() {
	if p == nil {
		return
	}
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.width > 0 {
		fmt.Fprintf(p.w, "\r%*s\r", p.width, "")
		p.width = 0
	}
}

func (p *progress) render() {
	if p.step == "" {
		return
	}
	line := fmt.Sprintf("bench: %s  %s", p.step, time.Since(p.started).Truncate(100*time.Millisecond))
	if p.detail != "" {
		line += "  " + p.detail
	}
	if !p.tty {
		fmt.Fprintln(p.w, line)
		p.shown = time.Now()
		return
	}
	pad := max(p.width-len(line), 0)
	fmt.Fprintf(p.w, "\r%s%*s", line, pad, "")
	p.width = len(line)
}
