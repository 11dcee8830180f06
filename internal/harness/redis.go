package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RedisOptions configures StartRedis.
type RedisOptions struct {
	// Args are extra redis-server arguments, e.g. "--maxmemory", "10mb".
	Args []string
	// Cluster starts the server with cluster-enabled yes, its nodes.conf in
	// its directory and a cluster bus port of its own (see StartCluster).
	Cluster bool
	// ConfigText, when set, is written to redis.conf in the server's
	// directory (once: a sentinel rewrites it) and passed as the config
	// file, before the other arguments (see StartSentinel).
	ConfigText string
}

// Redis is a throwaway redis-server child process on a loopback port,
// without persistence, with its own temporary directory. Its methods are
// safe for concurrent use.
type Redis struct {
	bin     string
	dir     string
	logPath string
	outPath string
	port    int
	busPort int // cluster bus port, 0 outside cluster mode
	args    []string
	cluster bool
	conf    string // config file path, "" for none

	mu     sync.Mutex
	proc   *Process // nil when not running
	closed bool
}

const (
	redisReadyTimeout = 15 * time.Second
	redisPortAttempts = 3
	redisLogTailLines = 20
	redisDefaultBin   = "/usr/bin/redis-server"
	redisInstallHint  = "apt-get install redis-server (Debian/Ubuntu)"
)

// StartRedis starts redis-server on a free port of 127.0.0.1 and waits
// until it answers PING. The server keeps running after ctx ends; ctx
// bounds only the start. Call Close to kill it and remove its directory.
func StartRedis(ctx context.Context, opts RedisOptions) (*Redis, error) {
	r, err := startRedis(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("start redis: %w", err)
	}
	return r, nil
}

func startRedis(ctx context.Context, opts RedisOptions) (_ *Redis, err error) {
	bin, err := findRedisServer()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cdcinvalidate-redis-*")
	if err != nil {
		return nil, fmt.Errorf("create dir: %w", err)
	}
	r := &Redis{
		bin:     bin,
		dir:     dir,
		logPath: filepath.Join(dir, "redis.log"),
		outPath: filepath.Join(dir, "redis.out"),
		args:    append([]string(nil), opts.Args...),
		cluster: opts.Cluster,
	}
	if opts.ConfigText != "" {
		r.conf = filepath.Join(dir, "redis.conf")
		if err := os.WriteFile(r.conf, []byte(opts.ConfigText), 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("write %s: %w", r.conf, err)
		}
	}
	defer func() {
		if err != nil {
			if cerr := r.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
			}
		}
	}()
	for attempt := 1; ; attempt++ {
		port, err := pickPort()
		if err != nil {
			return nil, err
		}
		r.port = port
		if r.cluster {
			if r.busPort, err = pickPort(); err != nil {
				return nil, err
			}
		}
		portInUse, err := r.start(ctx)
		if err == nil {
			return r, nil
		}
		if !portInUse || attempt == redisPortAttempts {
			return nil, err
		}
	}
}

func findRedisServer() (string, error) {
	if path, err := exec.LookPath("redis-server"); err == nil {
		return path, nil
	}
	if fi, err := os.Stat(redisDefaultBin); err == nil && !fi.IsDir() && fi.Mode().Perm()&0o111 != 0 {
		return redisDefaultBin, nil
	}
	return "", fmt.Errorf("redis-server not found on PATH or at %s; install it with: %s", redisDefaultBin, redisInstallHint)
}

// Addr is "127.0.0.1:PORT".
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// Port is the TCP port the server listens on at 127.0.0.1.
func (r *Redis) Port() int { return r.port }

// Dir is the server's working directory (nodes.conf, redis.conf, logs).
func (r *Redis) Dir() string { return r.dir }

// LogTail returns the last lines of the server's log, for test failures.
func (r *Redis) LogTail() string {
	return LastLines(readFrom(r.logPath, 0)+readFrom(r.outPath, 0), redisLogTailLines)
}

// Pause stops the server process with SIGSTOP: connections are still
// accepted by the kernel, but no command is answered until Resume.
func (r *Redis) Pause() error {
	if err := r.signal(syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pause redis: %w", err)
	}
	return nil
}

// Resume continues a paused server with SIGCONT.
func (r *Redis) Resume() error {
	if err := r.signal(syscall.SIGCONT); err != nil {
		return fmt.Errorf("resume redis: %w", err)
	}
	return nil
}

func (r *Redis) signal(sig os.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return errors.New("not running")
	}
	return r.proc.Signal(sig)
}

// Kill kills the server with SIGKILL (paused or not) and waits until the
// process has been reaped. Its data is lost; Start starts an empty one.
func (r *Redis) Kill() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return errors.New("kill redis: not running")
	}
	if err := r.kill(); err != nil {
		return fmt.Errorf("kill redis: %w", err)
	}
	return nil
}

// Start starts the server again on the same port, with an empty dataset,
// and waits until it answers PING.
func (r *Redis) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("restart redis: closed")
	}
	if r.proc != nil {
		return errors.New("restart redis: already running")
	}
	if _, err := r.start(context.Background()); err != nil {
		return fmt.Errorf("restart redis on port %d: %w", r.port, err)
	}
	return nil
}

// Close kills the server if it is running and removes its directory. It
// is idempotent.
func (r *Redis) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	var errs []error
	if r.proc != nil {
		if err := r.kill(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(r.dir); err != nil {
		errs = append(errs, fmt.Errorf("remove dir: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close redis: %w", err)
	}
	return nil
}

// kill sends SIGKILL to the running process and waits until it is
// reaped. Called with r.mu held and r.proc != nil.
func (r *Redis) kill() error {
	if err := r.proc.Kill(); err != nil {
		return err
	}
	r.proc = nil
	return nil
}

// start runs redis-server and waits until it answers PING. Called with
// r.mu held (or before r is shared). portInUse reports that the server
// could not bind its port. On failure no process is left running.
func (r *Redis) start(ctx context.Context) (portInUse bool, err error) {
	// --save "" and --appendonly no already keep the dataset in memory
	// only; removing a leftover dump keeps Start's "empty" promise even if
	// Args turned persistence on.
	_ = os.Remove(filepath.Join(r.dir, "dump.rdb"))
	logOffset, outOffset := fileSize(r.logPath), fileSize(r.outPath)
	out, err := os.OpenFile(r.outPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", r.outPath, err)
	}
	var args []string
	if r.conf != "" {
		args = append(args, r.conf)
	}
	args = append(args,
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", r.dir,
		"--daemonize", "no",
		"--protected-mode", "no",
		"--logfile", r.logPath,
	)
	if r.cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(r.busPort), "--cluster-node-timeout", "2000")
	}
	args = append(args, r.args...)
	// Its own process group: a Ctrl-C in the terminal must not reach the
	// server before the owner stops it.
	p, err := StartProcess(Command{Name: "redis-server", Path: r.bin, Args: args, Dir: r.dir, OutputFile: out, OwnProcessGroup: true})
	out.Close() // the child has its own copy
	if err != nil {
		return false, err
	}
	r.proc = p

	if err := waitRedisReady(ctx, r.Addr(), p.Done()); err != nil {
		if kerr := r.kill(); kerr != nil {
			err = errors.Join(err, kerr)
		}
		logText := readFrom(r.logPath, logOffset) + readFrom(r.outPath, outOffset)
		portInUse = strings.Contains(logText, "Address already in use")
		msg := fmt.Sprintf("redis-server on port %d: %v", r.port, err)
		if tail := LastLines(logText, redisLogTailLines); tail != "" {
			msg += "\nlast lines of the redis log:\n" + tail
		}
		return portInUse, errors.New(msg)
	}
	return false, nil
}

// waitRedisReady pings addr until the server answers, the process exits
// (done is closed), ctx ends or redisReadyTimeout passes.
func waitRedisReady(ctx context.Context, addr string, done <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, redisReadyTimeout)
	defer cancel()
	for {
		err := pingRedis(ctx, addr)
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return errors.New("exited before answering PING")
		case <-ctx.Done():
			return fmt.Errorf("no answer to PING: %w (last: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// pingRedis sends an inline PING. Any reply but a "still loading" error
// means the server is serving (an auth error means it is up too).
func pingRedis(ctx context.Context, addr string) error {
	d := net.Dialer{Timeout: 500 * time.Millisecond}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	line = strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, "+"):
		return nil
	case strings.HasPrefix(line, "-LOADING"), strings.HasPrefix(line, "-BUSY"):
		return fmt.Errorf("not ready: %s", line)
	case strings.HasPrefix(line, "-"):
		return nil
	default:
		return fmt.Errorf("unexpected reply to PING: %q", line)
	}
}
