package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// enginePkg is the engine's main package, relative to the module root.
const enginePkg = "./cmd/cdcinvalidate"

type build struct {
	once sync.Once
	path string
	err  error
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*build{} // by package and build tags
)

// BuildEngine builds ./cmd/cdcinvalidate of this module with go build -o,
// once per test process, and returns the binary's path. A failed build
// fails the test with the compiler output. The binary's temporary
// directory is named after the test process and outlives it (no hook runs
// at process exit); each build removes those of processes that are gone.
func BuildEngine(t testing.TB) string {
	t.Helper()
	return BuildEngineTags(t, "")
}

// BuildEngineTags is BuildEngine with go build -tags tags (e.g.
// "failpoints"), once per test process and set of tags.
func BuildEngineTags(t testing.TB, tags string) string {
	t.Helper()
	return BuildCommand(t, enginePkg, tags)
}

// BuildCommand builds the main package pkg of this module (relative to the
// module root, e.g. "./writebehind/internal/wbflusher") with go build -o
// and -tags tags (may be empty), once per test process, package and tags,
// and returns the binary's path. See BuildEngine.
func BuildCommand(t testing.TB, pkg, tags string) string {
	t.Helper()
	buildsMu.Lock()
	b := builds[pkg+"\x00"+tags]
	if b == nil {
		b = &build{}
		builds[pkg+"\x00"+tags] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() { b.path, b.err = buildPackage(pkg, tags) })
	if b.err != nil {
		t.Fatalf("harness: %v", b.err)
	}
	return b.path
}

func buildPackage(pkg, tags string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	removeStaleBuilds()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-*", buildDirPrefix, os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	bin := filepath.Join(dir, filepath.Base(pkg))
	args := []string{"build", "-o", bin}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("build %s: go %s in %s: %w\n%s", pkg, strings.Join(cmd.Args[1:], " "), root, err, bytes.TrimSpace(out))
	}
	return bin, nil
}

const buildDirPrefix = "cdcinvalidate-bin-"

// removeStaleBuilds removes the build directories of earlier test
// processes that no longer exist (judged by /proc/PID, so only on Linux;
// nothing is ever signalled).
func removeStaleBuilds() {
	if _, err := os.Stat("/proc/self"); err != nil {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), buildDirPrefix+"*-*"))
	for _, d := range dirs {
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), buildDirPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", pidStr)); errors.Is(err, os.ErrNotExist) {
			_ = os.RemoveAll(d)
		}
	}
}

// ModuleRoot is the nearest directory, from the working directory up,
// that holds a go.mod.
func ModuleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(filepath.Join(dir, "go.mod"))
		if err == nil && !fi.IsDir() {
			return dir, nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("module root: %w", err)
		}
		if dir == filepath.Dir(dir) {
			return "", fmt.Errorf("module root: no go.mod in %s or any parent", wd)
		}
	}
}
