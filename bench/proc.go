package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// startChild starts a process of the bench (the engine or pg_recvlogical),
// keeping the end of its output for error messages.
func startChild(name, bin string, args, env []string) (*harness.Process, error) {
	return harness.StartProcess(harness.Command{Name: name, Path: bin, Args: args, Env: env, OutputLimit: 64 << 10})
}

// exitedUnexpectedly describes an exit the bench did not ask for.
func exitedUnexpectedly(c *harness.Process) error {
	return fmt.Errorf("%s exited unexpectedly (%s); its output:\n%s", c.Name(), c.State(), outputOf(c))
}

// outputOf is the end of c's output, indented, for an error message.
func outputOf(c *harness.Process) string {
	s := strings.TrimSpace(c.Output())
	if s == "" {
		s = "(no output)"
	}
	return harness.Indent(s, "    ")
}

// stopChild stops c on the way out after an error: SIGTERM, then SIGKILL
// after 10 s. A nil or exited process is left as it is.
func stopChild(c *harness.Process) {
	if c != nil {
		_ = c.Stop(10 * time.Second)
	}
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
	return "", fmt.Errorf("%w on PATH, next to initdb or in /usr/lib/postgresql/*/bin; it comes with the PostgreSQL "+
		"client programs (apt-get install postgresql-client on Debian/Ubuntu), or name it with "+
		"--pg-recvlogical PATH", ErrNoPgRecvLogical)
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
