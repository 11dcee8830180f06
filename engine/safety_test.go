package engine

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/cdcinvalidate/cdcinvalidate/config"
)

func TestSyncStandbyMatch(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		setting string
		want    bool
	}{
		{"", false},
		{"*", true},
		{"replica1, replica2", false},
		{"replica1, cdcinvalidate", true},
		{"FIRST 1 (replica1, *)", true},
		{"ANY 2 (a, b, CDCInvalidate)", true},
		{`2 ("cdcinvalidate", b)`, true},
		{`FIRST 1 ("CDCinvalidate")`, false}, // quoted names are case-sensitive
		{"FIRST 1 (replica1)", false},
	} {
		if got := syncStandbyMatch(c.setting, "cdcinvalidate"); got != c.want {
			t.Errorf("syncStandbyMatch(%q) = %v, want %v", c.setting, got, c.want)
		}
	}
}

func TestRetainedWarner(t *testing.T) {
	t.Parallel()
	w := retainedWarner{threshold: 100, every: time.Minute}
	now := time.Now()
	log := zap.NewNop()
	if w.check(log, 99, now) {
		t.Error("warned below the threshold")
	}
	if !w.check(log, 100, now) {
		t.Error("no warning at the threshold")
	}
	if w.check(log, 500, now.Add(30*time.Second)) {
		t.Error("warned again within the interval")
	}
	if !w.check(log, 500, now.Add(61*time.Second)) {
		t.Error("no warning after the interval")
	}
	if (&retainedWarner{}).check(log, 1<<40, now) {
		t.Error("warned with the warning off")
	}
}

func TestIsLoopback(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]bool{
		"127.0.0.1": true, "::1": true, "localhost": true, "/var/run/postgresql": true, "": true,
		"10.0.0.5": false, "db.internal": false, "192.168.1.2": false,
	} {
		if got := isLoopback(host); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestWarnPlaintext(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		dsn, redisAddr string
		redisTLS       bool
		want           []string // messages containing these
	}{
		{"postgres://u@127.0.0.1/db?sslmode=disable", "127.0.0.1:6379", false, nil},
		{"postgres://u@db.internal/db?sslmode=disable", "cache.internal:6379", false, []string{"PostgreSQL connection", "Redis connection"}},
		{"postgres://u@db.internal/db?sslmode=require", "cache.internal:6379", true, []string{"PostgreSQL connection"}},
		{"postgres://u@db.internal/db?sslmode=verify-full", "127.0.0.1:6379", false, nil},
	} {
		core, logs := observer.New(zap.WarnLevel)
		cfg := &config.Config{Postgres: config.Postgres{DSN: c.dsn}, Redis: config.Redis{Addr: c.redisAddr, TLS: c.redisTLS}}
		pg, err := pgconn.ParseConfig(c.dsn)
		if err != nil {
			t.Fatal(err)
		}
		(&Engine{cfg: cfg, log: zap.New(core)}).warnPlaintext(pg)
		var got []string
		for _, e := range logs.All() {
			got = append(got, e.Message)
		}
		if len(got) != len(c.want) {
			t.Errorf("%s, %s: warnings %q, want ones containing %q", c.dsn, c.redisAddr, got, c.want)
			continue
		}
		for i, w := range c.want {
			if !strings.Contains(got[i], w) {
				t.Errorf("%s: warning %q lacks %q", c.dsn, got[i], w)
			}
		}
	}
}
