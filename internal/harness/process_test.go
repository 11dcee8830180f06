package harness

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func sh(script string) Command {
	return Command{Name: "sh", Path: "/bin/sh", Args: []string{"-c", script}}
}

func TestProcessExitCodeAndOutput(t *testing.T) {
	p := StartProcessT(t, sh(`echo out; echo err >&2; exit 3`))
	if code := p.ExitT(t, 30*time.Second); code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
	if got := p.Output(); !strings.Contains(got, "out\n") || !strings.Contains(got, "err\n") {
		t.Errorf("output %q lacks stdout or stderr", got)
	}
	if p.Running() || p.State() != "exit status 3" || p.Err() == nil {
		t.Errorf("running %v, state %q, err %v", p.Running(), p.State(), p.Err())
	}
	if p.ExitedAt().Before(p.StartedAt()) {
		t.Errorf("exited at %v, before the start at %v", p.ExitedAt(), p.StartedAt())
	}
	if p.CPUTime() < 0 || p.MaxRSS() != -1 {
		t.Errorf("CPUTime %v, MaxRSS %d after an exit of its own (want -1: not read)", p.CPUTime(), p.MaxRSS())
	}
	if err := p.Signal(syscall.SIGTERM); err == nil {
		t.Error("Signal to an exited process did not fail")
	}
	if err := p.Stop(time.Second); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("Stop after exit status 3 = %v", err)
	}
}

func TestProcessStartFails(t *testing.T) {
	_, err := StartProcess(Command{Path: "/nonexistent/cdcinvalidate"})
	if err == nil || !strings.Contains(err.Error(), "start cdcinvalidate (/nonexistent/cdcinvalidate)") {
		t.Errorf("StartProcess of a missing binary = %v", err)
	}
}

func TestProcessTermAndKill(t *testing.T) {
	// exec: the shell becomes sleep, so signals reach it directly.
	p := StartProcessT(t, sh(`exec sleep 60`))
	if p.ExitCode() != -1 || !p.Running() || p.Err() != nil || !p.ExitedAt().IsZero() {
		t.Fatalf("a running process: exit code %d, err %v", p.ExitCode(), p.Err())
	}
	if err := p.WaitExit(50 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Errorf("WaitExit of a running process = %v", err)
	}
	if _, took := p.TermT(t, 30*time.Second); !p.KilledBy(syscall.SIGTERM) || took <= 0 {
		t.Errorf("after SIGTERM: %s, took %v", p.State(), took)
	}

	q := StartProcessT(t, sh(`exec sleep 60`))
	if err := q.Pause(); err != nil {
		t.Fatal(err)
	}
	q.KillT(t) // paused or not
	if !q.KilledBy(syscall.SIGKILL) || q.KilledBy(syscall.SIGTERM) || q.ExitCode() != -1 {
		t.Errorf("after SIGKILL: %s, exit code %d", q.State(), q.ExitCode())
	}
	if err := q.Kill(); err != nil {
		t.Errorf("Kill of an ended process = %v", err)
	}
}

func TestProcessStopKillsAfterGrace(t *testing.T) {
	p := StartProcessT(t, sh(`trap '' TERM; echo ready; while :; do sleep 1; done`))
	WaitFor(t, 30*time.Second, "the trap", func() bool { return strings.Contains(p.Output(), "ready") })
	err := p.Stop(200 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not exit within 200ms of SIGTERM, killed") || !strings.Contains(err.Error(), "ready") {
		t.Errorf("Stop of a process ignoring SIGTERM = %v", err)
	}
	if p.Running() {
		t.Error("still running after Stop")
	}

	q := StartProcessT(t, sh(`trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done`))
	WaitFor(t, 30*time.Second, "the trap", func() bool { return strings.Contains(q.Output(), "ready") })
	if err := q.Stop(30 * time.Second); err != nil {
		t.Errorf("Stop of a process exiting 0 on SIGTERM = %v", err)
	}
}

func TestProcessLinesAndEnv(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	c := sh(`echo "a $CDC_X"; printf 'b\nc'`)
	c.Env = []string{"CDC_X=1"}
	c.Line = func(l string) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, l)
	}
	p := StartProcessT(t, c)
	p.ExitT(t, 30*time.Second)
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"a 1", "b", "c"}; !slices.Equal(lines, want) {
		t.Errorf("lines %q, want %q (the last one without a newline too)", lines, want)
	}
}

func TestProcessOutputLimit(t *testing.T) {
	c := sh(`i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done`)
	c.OutputLimit = 1000
	p := StartProcessT(t, c)
	p.ExitT(t, 30*time.Second)
	out := p.Output()
	if len(out) > 1000 || !strings.HasSuffix(out, "line 1999\n") || !strings.HasPrefix(out, "line ") {
		t.Errorf("kept %d bytes, from %.20q to %q; want at most 1000, whole lines, ending with the last", len(out), out, LastLines(out, 1))
	}
	if got := p.Tail(2); got != "line 1998\nline 1999" {
		t.Errorf("Tail(2) = %q", got)
	}
}

func TestSyncBuffer(t *testing.T) {
	tests := []struct {
		limit  int
		writes []string
		want   string
	}{
		{0, []string{"a\n", "b"}, "a\nb"},
		{4, []string{"ab\n", "cd\n"}, "cd\n"}, // cut after the newline
		{4, []string{"abcdefgh"}, "efgh"},     // no newline near the cut
		{10, []string{"abc\n", "def\n"}, "abc\ndef\n"},
		{4, []string{"ab\n", "cd\n", "ef\n", "gh\n"}, "gh\n"}, // compacted past twice the limit
	}
	for _, tt := range tests {
		b := &SyncBuffer{Limit: tt.limit}
		for _, w := range tt.writes {
			if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
				t.Errorf("Write(%q) = %d, %v", w, n, err)
			}
		}
		if got := b.String(); got != tt.want {
			t.Errorf("limit %d, writes %q: %q, want %q", tt.limit, tt.writes, got, tt.want)
		}
	}
}

func TestLastLines(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"", 3, ""},
		{"a\nb\nc\n", 2, "b\nc"},
		{"a\nb\nc", 5, "a\nb\nc"},
		{"  a\nb\n\n\n", 1, "b"},
		{"  a\nb  \n", 2, "a\nb"},
	}
	for _, tt := range tests {
		if got := LastLines(tt.in, tt.n); got != tt.want {
			t.Errorf("LastLines(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
	if got := Indent("a\nb", "  "); got != "  a\n  b" {
		t.Errorf("Indent = %q", got)
	}
}

func TestPoll(t *testing.T) {
	n := 0
	if err := Poll(context.Background(), time.Minute, func() (bool, error) { n++; return n == 3, nil }); err != nil || n != 3 {
		t.Errorf("Poll = %v after %d calls, want nil after 3", err, n)
	}
	boom := errors.New("boom")
	if err := Poll(context.Background(), time.Minute, func() (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("Poll with a failing cond = %v", err)
	}
	err := Poll(context.Background(), 30*time.Millisecond, func() (bool, error) { return false, nil })
	if !errors.Is(err, ErrPollTimeout) {
		t.Errorf("Poll that never holds = %v, want ErrPollTimeout", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Poll(ctx, time.Minute, func() (bool, error) { return false, nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Poll with a canceled ctx = %v", err)
	}
}

func TestProcessOutputFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	c := sh(`echo to-file`)
	c.OutputFile = f
	p := StartProcessT(t, c)
	f.Close()
	if code := p.ExitT(t, 30*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if got, err := os.ReadFile(path); err != nil || string(got) != "to-file\n" {
		t.Errorf("file holds %q (%v), want the output", got, err)
	}
	if p.Output() != "" {
		t.Errorf("Output() = %q, want nothing: the file got it", p.Output())
	}
}

// The bench and the demo use this package outside tests: the shipped
// binary must not link the testing package through it.
func TestShippedBinaryDoesNotLinkTesting(t *testing.T) {
	goBin, err := goCommand()
	if err != nil {
		t.Fatal(err)
	}
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goBin, "list", "-deps", enginePkg)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", enginePkg, err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/cdcinvalidate/cdcinvalidate/internal/harness") {
		t.Skipf("%s no longer imports the harness", enginePkg)
	}
	if slices.Contains(deps, "testing") {
		t.Errorf("%s links the testing package", enginePkg)
	}
}

// MaxRSS is the child's own peak, not the parent's: getrusage would say
// at least the test process's 256 MiB for a shell's few MiB (Linux keeps
// the high-water mark of the memory a vfork-like clone shares until exec).
func TestProcessMaxRSSIsTheChilds(t *testing.T) {
	ballast := make([]byte, 256<<20)
	for i := 0; i < len(ballast); i += 4096 {
		ballast[i] = 1
	}
	p := StartProcessT(t, sh(`exec sleep 60`))
	waitRunning := time.Now().Add(5 * time.Second)
	for {
		if _, rss, err := ProcMem(p.Pid()); err == nil && rss > 0 {
			break
		}
		if time.Now().After(waitRunning) {
			t.Fatal("no /proc status of the child within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Stop(10 * time.Second); err == nil {
		t.Fatal("Stop of a sleep by SIGTERM reported exit status 0")
	}
	got := p.MaxRSS()
	if got <= 0 || got > 64<<20 {
		t.Errorf("MaxRSS %d bytes for sleep, want its own few MiB (the test process holds %d MiB)", got, len(ballast)>>20)
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err == nil {
		t.Logf("sleep's VmHWM %.1f MiB; getrusage(RUSAGE_CHILDREN) maxrss %d MiB", float64(got)/(1<<20), ru.Maxrss>>10)
	}
	runtime.KeepAlive(ballast)
}
