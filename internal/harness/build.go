package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
func BuildEngine(t TB) string {
	t.Helper()
	return BuildEngineTags(t, "")
}

// BuildEngineTags is BuildEngine with go build -tags tags (e.g.
// "failpoints"), once per test process and set of tags.
func BuildEngineTags(t TB, tags string) string {
	t.Helper()
	bin, err := BuildEngineBinary(context.Background(), tags)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return bin
}

// BuildEngineBinary builds ./cmd/cdcinvalidate of this module with go
// build -o (and -tags tags, if not ""), once per process and set of tags,
// and returns the binary's path; ctx bounds the first build. The binary
// has a temporary directory of its own, which outlives the process (see
// BuildEngine); a command that is done with it may remove
// filepath.Dir(path).
func BuildEngineBinary(ctx context.Context, tags string) (string, error) {
	return buildOnce(ctx, enginePkg, tags)
}

// BuildCommand builds another main package of this module (pkg relative to
// the module root, e.g. "./writebehind/internal/wbflusher") as
// BuildEngineTags builds the engine: once per test process, package and
// tags (may be ""). A failed build fails the test with the compiler output.
func BuildCommand(t TB, pkg, tags string) string {
	t.Helper()
	bin, err := buildOnce(context.Background(), pkg, tags)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return bin
}

func buildOnce(ctx context.Context, pkg, tags string) (string, error) {
	key := pkg + "\x00" + tags
	buildsMu.Lock()
	b := builds[key]
	if b == nil {
		b = &build{}
		builds[key] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() { b.path, b.err = buildPackage(ctx, pkg, tags) })
	return b.path, b.err
}

func buildPackage(ctx context.Context, pkg, tags string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	goBin, err := goCommand()
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
	cmd := exec.CommandContext(ctx, goBin, append(args, pkg)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("build %s: go %s in %s: %w\n%s", pkg, strings.Join(cmd.Args[1:], " "), root, err, bytes.TrimSpace(out))
	}
	return bin, nil
}

// goInstallPath is where the official Go tarball puts the go command.
const goInstallPath = "/usr/local/go/bin/go"

// goCommand is the go command: on PATH, or at goInstallPath.
func goCommand() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if fi, err := os.Stat(goInstallPath); err == nil && !fi.IsDir() {
		return goInstallPath, nil
	}
	return "", fmt.Errorf("the go command is not on PATH (nor at %s); it is needed to build the engine", goInstallPath)
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
