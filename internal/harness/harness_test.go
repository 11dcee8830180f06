package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFreePort(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if port <= 0 || port > 65535 {
		t.Fatalf("FreePort() = %d", port)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("port %d from FreePort is not free: %v", port, err)
	}
	l.Close()
}

func TestModuleRoot(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mod), "module github.com/cdcinvalidate/cdcinvalidate") {
		t.Fatalf("%s/go.mod is not this module's:\n%s", root, mod)
	}
	if want := filepath.Join(root, "internal", "harness"); !sameDir(t, want, ".") {
		t.Fatalf("ModuleRoot() = %s, but the test runs in %s", root, want)
	}
}

func sameDir(t *testing.T, a, b string) bool {
	t.Helper()
	fa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(fa, fb)
}

// queryString runs a one-value query on a fresh connection.
func queryString(ctx context.Context, dsn, sql string) (string, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var s string
	err = conn.QueryRow(ctx, sql).Scan(&s)
	return s, err
}

func TestPostgres(t *testing.T) {
	ctx := testCtx(t)
	p := PostgresT(t, PostgresOptions{Settings: map[string]string{
		"logical_decoding_work_mem": "64kB",
		"wal_sender_timeout":        "5s",
		"cluster_name":              `it's a \ test`, // needs quoting and escaping
	}})

	if p.Port() == 5432 {
		t.Fatal("harness took the default port 5432")
	}
	wantDSN := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/app?sslmode=disable", p.Port())
	if got := p.DSN("app"); got != wantDSN {
		t.Fatalf("DSN = %q, want %q", got, wantDSN)
	}
	if v := p.ServerVersionNum(); v < 100000 {
		t.Fatalf("ServerVersionNum = %d", v)
	}
	if os.Getenv(EnvPGBinDir) == "" && os.Getenv(EnvPGVersion) == "" {
		// A system install; the fetched npm packages carry no client programs.
		for _, bin := range []string{"pg_recvlogical", "psql"} {
			if _, err := os.Stat(filepath.Join(p.BinDir(), bin)); err != nil {
				t.Errorf("BinDir %s: %v", p.BinDir(), err)
			}
		}
	}
	if b, err := os.ReadFile(p.LogPath()); err != nil || !bytes.Contains(b, []byte("ready to accept connections")) {
		t.Errorf("log %s: err %v, content:\n%s", p.LogPath(), err, b)
	}

	dsn := p.DSN("postgres")
	for setting, want := range map[string]string{
		"wal_level":                 "logical",
		"wal_sender_timeout":        "5s",
		"logical_decoding_work_mem": "64kB",
		"cluster_name":              `it's a \ test`,
		"listen_addresses":          "127.0.0.1",
		"fsync":                     "off",
	} {
		got, err := queryString(ctx, dsn, "SHOW "+setting)
		if err != nil {
			t.Fatalf("SHOW %s: %v", setting, err)
		}
		if got != want {
			t.Errorf("SHOW %s = %q, want %q", setting, got, want)
		}
	}

	if err := p.Exec(ctx, "SELECT pg_create_logical_replication_slot('t', 'pgoutput')"); err != nil {
		t.Fatalf("create logical slot: %v", err)
	}
	slotPlugin := "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = 't'"
	if got, err := queryString(ctx, dsn, slotPlugin); err != nil || got != "pgoutput" {
		t.Fatalf("slot plugin = %q, %v; want pgoutput", got, err)
	}

	// Crash and restart: same port, the slot survives.
	if err := p.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	if _, err := queryString(ctx, dsn, "SELECT 1::text"); err == nil {
		t.Fatal("query succeeded on a stopped server")
	}
	if err := p.Stop("fast"); err == nil {
		t.Fatal("Stop on a stopped server succeeded")
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err == nil {
		t.Fatal("Start on a running server succeeded")
	}
	if got, err := queryString(ctx, dsn, "SHOW wal_level"); err != nil || got != "logical" {
		t.Fatalf("after restart: wal_level = %q, %v", got, err)
	}
	if got, err := queryString(ctx, dsn, slotPlugin); err != nil || got != "pgoutput" {
		t.Fatalf("after restart: slot plugin = %q, %v; want pgoutput", got, err)
	}

	// A role with a password: scram-sha-256 over TCP.
	const password = "p@ss:w/rd?'"
	if err := p.Exec(ctx, "CREATE ROLE app LOGIN PASSWORD 'p@ss:w/rd?'''"); err != nil {
		t.Fatal(err)
	}
	_, err := queryString(ctx, p.UserDSN("app", "wrong", "postgres"), "SELECT current_user::text")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("wrong password: err = %v, want SQLSTATE 28P01 (invalid_password)", err)
	}
	if got, err := queryString(ctx, p.UserDSN("app", password, "postgres"), "SELECT current_user::text"); err != nil || got != "app" {
		t.Fatalf("right password: current_user = %q, %v", got, err)
	}

	if err := p.Stop("fast"); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(p.LogPath())); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("data dir still there after Close: %v", err)
	}
	if err := p.Start(); err == nil {
		t.Fatal("Start after Close succeeded")
	}
}

func TestPostgresLogWriterAndClose(t *testing.T) {
	ctx := testCtx(t)
	var logBuf SyncBuffer
	p, err := StartPostgres(ctx, PostgresOptions{Log: &logBuf})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if !strings.Contains(logBuf.String(), "ready to accept connections") {
		t.Fatalf("Log writer got:\n%s", logBuf.String())
	}
	if err := p.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	// Close on a running server stops it (immediate) and waits for its
	// output to end.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logBuf.String(), "immediate shutdown request") {
		t.Fatalf("Log writer lacks the shutdown:\n%s", logBuf.String())
	}
	if err := p.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("Exec succeeded after Close")
	}
	if _, err := os.Stat(filepath.Dir(p.LogPath())); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("data dir still there after Close: %v", err)
	}
}

func TestPostgresRejectsReservedSetting(t *testing.T) {
	_, err := StartPostgres(testCtx(t), PostgresOptions{Settings: map[string]string{"port": "5432"}})
	if err == nil || !strings.Contains(err.Error(), "managed by the harness") {
		t.Fatalf("err = %v, want a refusal of setting port", err)
	}
}

func TestRedis(t *testing.T) {
	ctx := testCtx(t)
	r := RedisT(t, RedisOptions{})
	if r.Port() == 6379 {
		t.Fatal("harness took the default port 6379")
	}
	if want := fmt.Sprintf("127.0.0.1:%d", r.Port()); r.Addr() != want {
		t.Fatalf("Addr = %q, want %q", r.Addr(), want)
	}
	newClient := func() *redis.Client {
		c := redis.NewClient(&redis.Options{
			Addr:         r.Addr(),
			MaxRetries:   -1,
			DialTimeout:  time.Second,
			ReadTimeout:  300 * time.Millisecond,
			WriteTimeout: 300 * time.Millisecond,
		})
		t.Cleanup(func() { c.Close() })
		return c
	}
	c := newClient()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k = %q, %v", got, err)
	}

	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	start := time.Now()
	err := c.Get(short, "k").Err()
	cancel()
	if err == nil || errors.Is(err, redis.Nil) {
		t.Fatalf("GET on a paused server: err = %v, want a timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("GET on a paused server took %v", d)
	}
	if err := r.Resume(); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("after Resume: GET k = %q, %v", got, err)
	}

	// Kill while paused: SIGKILL still ends it.
	if err := r.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded on a killed server")
	}
	if err := r.Kill(); err == nil {
		t.Fatal("Kill on a stopped server succeeded")
	}
	if err := r.Pause(); err == nil {
		t.Fatal("Pause on a stopped server succeeded")
	}
	port := r.Port()
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	if r.Port() != port {
		t.Fatalf("port changed on restart: %d -> %d", port, r.Port())
	}
	if err := r.Start(); err == nil {
		t.Fatal("Start on a running server succeeded")
	}
	c2 := newClient()
	if err := c2.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("after Kill and Start: GET k err = %v, want redis.Nil", err)
	}

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(r.dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dir still there after Close: %v", err)
	}
	if err := c2.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded after Close")
	}
	if err := r.Start(); err == nil {
		t.Fatal("Start after Close succeeded")
	}
}

func TestRedisArgs(t *testing.T) {
	ctx := testCtx(t)
	r := RedisT(t, RedisOptions{Args: []string{"--maxmemory", "10mb"}})
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer c.Close()
	got, err := c.ConfigGet(ctx, "maxmemory").Result()
	if err != nil {
		t.Fatal(err)
	}
	if got["maxmemory"] != "10485760" {
		t.Fatalf("CONFIG GET maxmemory = %v, want 10485760", got)
	}
	for param, want := range map[string]string{"save": "", "appendonly": "no", "bind": "127.0.0.1"} {
		got, err := c.ConfigGet(ctx, param).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got[param] != want {
			t.Errorf("CONFIG GET %s = %q, want %q", param, got[param], want)
		}
	}
}

func TestBuildEngine(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if files, _ := filepath.Glob(filepath.Join(root, "cmd", "cdcinvalidate", "*.go")); len(files) == 0 {
		t.Skip("cmd/cdcinvalidate has no Go files yet")
	}
	bin := BuildEngine(t)
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("%s is not executable", bin)
	}
	if again := BuildEngine(t); again != bin {
		t.Fatalf("second BuildEngine = %s, want the cached %s", again, bin)
	}
}

// occupyPort listens on a free port for the rest of the test and makes
// pickPort return it first (always, if always is set), then free ports.
func occupyPort(t *testing.T, always bool) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	taken := l.Addr().(*net.TCPAddr).Port
	calls := 0
	pickPort = func() (int, error) {
		calls++
		if always || calls == 1 {
			return taken, nil
		}
		return FreePort()
	}
	t.Cleanup(func() { pickPort = FreePort })
	return taken
}

func TestPortCollisionRetry(t *testing.T) {
	ctx := testCtx(t)
	taken := occupyPort(t, false)
	p := PostgresT(t, PostgresOptions{})
	if p.Port() == taken {
		t.Fatalf("postgres reports the taken port %d", taken)
	}
	if err := p.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	r := RedisT(t, RedisOptions{})
	if r.Port() == taken {
		t.Fatalf("redis reports the taken port %d", taken)
	}
	if err := pingRedis(ctx, r.Addr()); err != nil {
		t.Fatal(err)
	}
}

func TestPortCollisionGivesUp(t *testing.T) {
	ctx := testCtx(t)
	occupyPort(t, true)
	_, err := StartRedis(ctx, RedisOptions{})
	if err == nil || !strings.Contains(err.Error(), "Address already in use") {
		t.Fatalf("redis: err = %v, want one quoting the bind failure", err)
	}
	_, err = StartPostgres(ctx, PostgresOptions{})
	if err == nil || !strings.Contains(err.Error(), "Address already in use") {
		t.Fatalf("postgres: err = %v, want one quoting the bind failure", err)
	}
	t.Logf("postgres start error:\n%v", err)
}

func TestPostgresBadSettingShowsLog(t *testing.T) {
	_, err := StartPostgres(testCtx(t), PostgresOptions{Settings: map[string]string{"shared_buffers": "lots"}})
	if err == nil || !strings.Contains(err.Error(), `invalid value for parameter "shared_buffers"`) {
		t.Fatalf("err = %v, want one quoting the server log", err)
	}
}
