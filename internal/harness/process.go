package harness

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Command describes a child process for StartProcess.
type Command struct {
	// Name names the process in messages ("engine", "pg_recvlogical");
	// "" is the base name of Path.
	Name string
	Path string
	Args []string
	// Env is the whole environment of the process; nil is this process's
	// own (os.Environ). WithoutCDCEnv makes one without CDC_* variables.
	Env []string
	// Dir is the working directory; "" is this process's.
	Dir string
	// OutputLimit is how many bytes of output (stdout and stderr, in the
	// order written) the Process keeps, the last ones; 0 is
	// DefaultOutputLimit.
	OutputLimit int
	// OutputFile, when set, receives the output instead of the Process's
	// buffer (Output is then empty, and Line is not called). The child
	// writes to it directly, so a grandchild that keeps it open (a forked
	// redis-server) cannot delay Done.
	OutputFile *os.File
	// Line, when set, is called with each line of output (without its
	// newline) as it arrives, from one goroutine; the last line is passed
	// even without a newline. The Process is done only after the last call.
	Line func(line string)
	// OwnProcessGroup starts the process in a process group of its own, so
	// that a Ctrl-C in the terminal reaches only the caller, which stops
	// the process itself.
	OwnProcessGroup bool
}

// DefaultOutputLimit is how much output a Process keeps by default.
const DefaultOutputLimit = 16 << 20

// outputWaitDelay bounds how long output is still read after the process
// exited.
const outputWaitDelay = 5 * time.Second

// killWait bounds the wait for a process to be reaped after SIGKILL.
const killWait = 30 * time.Second

// Process is a child process started by StartProcess. A goroutine of the
// Process waits for it, so that it is reaped as soon as it exits; signals
// go through the process handle, so they never reach another process that
// reused the PID. Its methods are safe for concurrent use.
type Process struct {
	name    string
	cmd     *exec.Cmd
	out     *SyncBuffer
	lines   *lineWriter
	started time.Time
	done    chan struct{}

	// Set before done is closed.
	err    error
	exited time.Time

	hwm atomic.Int64 // VmHWM read before Stop or Kill signalled it (0: never)
}

// StartProcess starts c.
func StartProcess(c Command) (*Process, error) {
	name := c.Name
	if name == "" {
		name = filepath.Base(c.Path)
	}
	limit := c.OutputLimit
	if limit <= 0 {
		limit = DefaultOutputLimit
	}
	p := &Process{name: name, out: &SyncBuffer{Limit: limit}, done: make(chan struct{})}
	p.cmd = exec.Command(c.Path, c.Args...)
	p.cmd.Env = c.Env
	p.cmd.Dir = c.Dir
	if c.OwnProcessGroup {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	switch {
	case c.OutputFile != nil:
		p.cmd.Stdout, p.cmd.Stderr = c.OutputFile, c.OutputFile
	case c.Line != nil:
		p.lines = &lineWriter{line: c.Line}
		w := io.MultiWriter(p.out, p.lines) // neither ever fails
		p.cmd.Stdout, p.cmd.Stderr = w, w
	default:
		p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	}
	// A grandchild that inherited the output pipe can keep it open after
	// the child exited; the copying then ends outputWaitDelay later.
	p.cmd.WaitDelay = outputWaitDelay
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, c.Path, err)
	}
	go func() {
		// Wait returns once the process exited and its output is copied.
		err := p.cmd.Wait()
		exited := time.Now()
		if p.lines != nil {
			p.lines.flush()
		}
		p.err, p.exited = err, exited
		close(p.done)
	}()
	return p, nil
}

// Name is the process's name in messages.
func (p *Process) Name() string { return p.name }

// Pid is the process ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited and its output is read.
func (p *Process) Done() <-chan struct{} { return p.done }

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// StartedAt is when the process was started.
func (p *Process) StartedAt() time.Time { return p.started }

// ExitedAt is when the process was seen to exit; zero while it runs.
func (p *Process) ExitedAt() time.Time {
	if p.Running() {
		return time.Time{}
	}
	return p.exited
}

// Err is what waiting for the process returned (nil for exit status 0, an
// *exec.ExitError otherwise); nil while it runs.
func (p *Process) Err() error {
	if p.Running() {
		return nil
	}
	return p.err
}

// ExitCode is the exit status; -1 while the process runs, when a signal
// ended it, or when it could not be waited for.
func (p *Process) ExitCode() int {
	if p.Running() {
		return -1
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		return -1
	}
	return 0
}

// KilledBy reports whether the process ended by signal sig.
func (p *Process) KilledBy(sig syscall.Signal) bool {
	if p.Running() {
		return false
	}
	var ee *exec.ExitError
	if !errors.As(p.err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// State describes the process: "running", or how it ended ("exit status
// 1", "signal: killed").
func (p *Process) State() string {
	if p.Running() {
		return "running"
	}
	if p.cmd.ProcessState != nil {
		return p.cmd.ProcessState.String()
	}
	if p.err != nil {
		return p.err.Error()
	}
	return "ended"
}

// Output is the output kept so far (at most the OutputLimit last bytes).
func (p *Process) Output() string { return p.out.String() }

// Tail is the last n lines of the output.
func (p *Process) Tail(n int) string { return LastLines(p.out.String(), n) }

// Signal sends sig. It fails once the process has exited.
func (p *Process) Signal(sig os.Signal) error {
	if !p.Running() {
		return fmt.Errorf("signal %s: %s has exited (%s)", sig, p.name, p.State())
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s to %s (pid %d): %w", sig, p.name, p.Pid(), err)
	}
	return nil
}

// Pause stops the process with SIGSTOP until Resume.
func (p *Process) Pause() error { return p.Signal(syscall.SIGSTOP) }

// Resume continues a paused process with SIGCONT.
func (p *Process) Resume() error { return p.Signal(syscall.SIGCONT) }

// WaitExit waits until the process exits by itself, at most within. It
// returns nil once it exited, whatever its status (see ExitCode), and an
// error naming the process and the end of its output if it still runs.
func (p *Process) WaitExit(within time.Duration) error {
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
		return fmt.Errorf("%s still running after %s; last lines of its output:\n%s", p.name, within, p.Tail(outputTailLines))
	}
}

// Kill sends SIGKILL (paused or not) and waits until the process is
// reaped. A process that already exited is left as it is.
func (p *Process) Kill() error {
	if !p.Running() {
		return nil
	}
	p.readHWM()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("SIGKILL %s (pid %d): %w", p.name, p.Pid(), err)
	}
	if p.WaitExit(killWait) != nil {
		return fmt.Errorf("%s (pid %d) not reaped %s after SIGKILL", p.name, p.Pid(), killWait)
	}
	return nil
}

// Stop sends SIGTERM and waits for the exit, at most grace; then it kills
// the process with SIGKILL. It returns an error unless the process exited
// with status 0 within grace (also when it had exited before), with the
// end of its output.
func (p *Process) Stop(grace time.Duration) error {
	if p.Running() {
		p.readHWM()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.WaitExit(grace); err != nil {
			kerr := p.Kill()
			return errors.Join(fmt.Errorf("%s did not exit within %s of SIGTERM, killed; last lines of its output:\n%s", p.name, grace, p.Tail(outputTailLines)), kerr)
		}
	}
	if p.err != nil {
		return fmt.Errorf("%s: %s; last lines of its output:\n%s", p.name, p.State(), p.Tail(outputTailLines))
	}
	return nil
}

// CPUTime is the user plus system CPU time of the exited process; -1
// while it runs.
func (p *Process) CPUTime() time.Duration {
	st := p.exitState()
	if st == nil {
		return -1
	}
	return st.UserTime() + st.SystemTime()
}

// MaxRSS is the process's peak resident set size in bytes (VmHWM), as
// read from /proc just before Stop or Kill signalled it; -1 when it was
// not stopped through them or /proc could not be read. getrusage's
// ru_maxrss is not used: Go starts a child with a vfork-like clone that
// shares the parent's memory until exec, and Linux carries that memory's
// high-water mark into the child's, so a child reports at least the
// parent's peak (/bin/true started from a 200 MB process: 202 MB; the
// bench's catch-up reported its own 140 MB as the engine's).
func (p *Process) MaxRSS() int64 {
	if v := p.hwm.Load(); v > 0 {
		return v
	}
	return -1
}

// readHWM keeps the running process's VmHWM for MaxRSS.
func (p *Process) readHWM() {
	if hwm, _, err := ProcMem(p.Pid()); err == nil && hwm > 0 {
		p.hwm.Store(hwm)
	}
}

// exitState is the state of the exited process, nil while it runs.
func (p *Process) exitState() *os.ProcessState {
	if p.Running() {
		return nil
	}
	return p.cmd.ProcessState
}

// outputTailLines is how many lines of output error messages quote.
const outputTailLines = 40

// lineWriter calls line for each complete line written to it. Writes come
// from one goroutine (exec's copier), and flush after the last Write.
type lineWriter struct {
	mu   sync.Mutex
	line func(string)
	part []byte
}

func (l *lineWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			l.part = append(l.part, b...)
			break
		}
		l.part = append(l.part, b[:i]...)
		l.line(string(l.part))
		l.part = l.part[:0]
		b = b[i+1:]
	}
	return n, nil
}

// flush passes a last line without a newline.
func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.part) > 0 {
		l.line(string(l.part))
		l.part = nil
	}
}

// WithoutCDCEnv is this process's environment without CDC_* variables
// (which would override an engine's configuration file), except those
// named in keep, followed by extra ("NAME=value").
func WithoutCDCEnv(keep []string, extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "CDC_") && !slices.Contains(keep, name) {
			continue
		}
		out = append(out, kv)
	}
	return append(out, extra...)
}
