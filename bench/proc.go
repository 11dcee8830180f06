package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a process the bench started (the engine or pg_recvlogical).
type child struct {
	name     string
	cmd      *exec.Cmd
	out      *tail
	started  time.Time
	done     chan struct{}
	err      error     // of Wait, set before done is closed
	exitedAt time.Time // set before done is closed
}

func startChild(name, bin string, args, env []string) (*child, error) {
	c := &child{name: name, out: &tail{max: 64 << 10}, done: make(chan struct{})}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Env = env
	c.cmd.Stdout = c.out
	c.cmd.Stderr = c.out
	c.started = time.Now()
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	go func() {
		c.err = c.cmd.Wait()
		c.exitedAt = time.Now()
		close(c.done)
	}()
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// failed describes an exit the bench did not ask for.
func (c *child) failed() error {
	return fmt.Errorf("%s exited unexpectedly (%v); its output:\n%s", c.name, c.exitDescription(), indentText(c.out.String()))
}

func (c *child) exitDescription() string {
	if c.err == nil {
		return "exit status 0"
	}
	return c.err.Error()
}

// stop sends SIGTERM and waits for the exit, killing the process after
// wait. It returns an error unless the process exited with status 0.
func (c *child) stop(wait time.Duration) error {
	if !c.exited() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-c.done:
	case <-time.After(wait):
		_ = c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed. Its output:\n%s", c.name, wait, indentText(c.out.String()))
	}
	if c.err != nil {
		return fmt.Errorf("%s: %v after SIGTERM; its output:\n%s", c.name, c.err, indentText(c.out.String()))
	}
	return nil
}

// kill ends the process at once (used on the way out after an error).
func (c *child) kill() {
	if c == nil || c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// cpuTime is the user+system CPU time of the exited process.
func (c *child) cpuTime() time.Duration {
	if c.cmd.ProcessState == nil {
		return -1
	}
	return c.cmd.ProcessState.UserTime() + c.cmd.ProcessState.SystemTime()
}

// maxRSS is the exited process's peak RSS in bytes (getrusage), -1 if unknown.
func (c *child) maxRSS() int64 {
	if c.cmd.ProcessState == nil {
		return -1
	}
	if ru, ok := c.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return int64(ru.Maxrss) * 1024 // kilobytes on Linux
	}
	return -1
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(t.b))
	if s == "" {
		return "(no output)"
	}
	return s
}

func indentText(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

// childEnv is the bench's environment without CDC_* variables, which
// would override the engine's configuration file, except those in keep.
func childEnv(keep ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "CDC_") && !contains(keep, name) {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ),
// 100 per second on every Linux platform Go supports.
const clockTick = 10 * time.Millisecond

// procCPU reads the user+system CPU time of a running process from
// /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(data)
}

// parseStatCPU takes utime and stime (fields 14 and 15) from the text of
// /proc/PID/stat. The command (field 2) is in parentheses and may hold
// spaces and parentheses, so fields are counted after its last ')'.
func parseStatCPU(data []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("/proc stat: no command field")
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat: %d fields after the command, want at least 13", len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc stat: %w", err)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// procMem reads VmHWM (peak RSS) and VmRSS of a running process in bytes.
func procMem(pid int) (hwm, rss int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, -1, err
	}
	hwm, err1 := statusBytes(data, "VmHWM")
	rss, err2 := statusBytes(data, "VmRSS")
	return hwm, rss, errors.Join(err1, err2)
}

// statusBytes reads a "Name:   1234 kB" line of /proc/PID/status.
func statusBytes(data []byte, name string) (int64, error) {
	for _, line := range strings.Split(string(data), "\n") {
		rest, ok := strings.CutPrefix(line, name+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return -1, fmt.Errorf("/proc status: unexpected %s line %q", name, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return -1, fmt.Errorf("/proc status: %s: %w", name, err)
		}
		return kb * 1024, nil
	}
	return -1, fmt.Errorf("/proc status: no %s line", name)
}

// ErrNoPgRecvLogical says pg_recvlogical was not found.
var ErrNoPgRecvLogical = errors.New("pg_recvlogical not found")

// findPgRecvLogical returns explicit if set (it must be executable), else
// pg_recvlogical from, in order: the directories in prefer, PATH, the
// directory of initdb on PATH, and the highest version in
// /usr/lib/postgresql/*/bin.
func findPgRecvLogical(explicit string, prefer ...string) (string, error) {
	if explicit != "" {
		if p, err := exec.LookPath(explicit); err == nil {
			return p, nil
		}
		return "", fmt.Errorf("%w: --pg-recvlogical %s is not an executable file", ErrNoPgRecvLogical, explicit)
	}
	for _, d := range prefer {
		if p := filepath.Join(d, "pg_recvlogical"); isExecutable(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("pg_recvlogical"); err == nil {
		return p, nil
	}
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(r))
		}
		dirs = append(dirs, filepath.Dir(p))
	}
	for _, d := range dirs {
		if p := filepath.Join(d, "pg_recvlogical"); isExecutable(p) {
			return p, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_recvlogical")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	for _, m := range matches {
		if isExecutable(m) {
			return m, nil
		}
	}
	return "", fmt.Errorf("%w on PATH, next to initdb or in /usr/lib/postgresql/*/bin; it comes with the PostgreSQL client programs (apt-get install postgresql-client on Debian/Ubuntu), or name it with --pg-recvlogical PATH", ErrNoPgRecvLogical)
}

// versionOf is the major version in /usr/lib/postgresql/VERSION/bin/..., for sorting.
func versionOf(path string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(filepath.Dir(path))), 64)
	return v
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode().Perm()&0o111 != 0
}
