package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeBinDir makes a directory with executable files named like the
// server binaries, enough for the harness to choose it.
func fakeBinDir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestChooseBinDir(t *testing.T) {
	cache := t.TempDir()
	v16 := fakeBinDir(t, filepath.Join(cache, "16", filepath.FromSlash(pgCachePackage)))
	explicit := fakeBinDir(t, filepath.Join(t.TempDir(), "bin"))
	empty := t.TempDir()
	t.Setenv(EnvPGCache, cache)

	for _, tc := range []struct {
		name      string
		opts      PostgresOptions
		env       map[string]string
		wantDir   string
		wantMajor int
		wantErr   []string
	}{
		{name: "option BinDir", opts: PostgresOptions{BinDir: explicit, Version: 16}, wantDir: explicit},
		{name: "option Version from the cache", opts: PostgresOptions{Version: 16}, wantDir: v16, wantMajor: 16},
		{name: "options win over the environment", opts: PostgresOptions{Version: 16}, env: map[string]string{EnvPGBinDir: explicit}, wantDir: v16, wantMajor: 16},
		{name: "env bin dir", env: map[string]string{EnvPGBinDir: explicit, EnvPGVersion: "16"}, wantDir: explicit},
		{name: "env version", env: map[string]string{EnvPGVersion: "16"}, wantDir: v16, wantMajor: 16},
		{name: "option BinDir without binaries", opts: PostgresOptions{BinDir: empty}, wantErr: []string{"PostgresOptions.BinDir", "no PostgreSQL server binaries"}},
		{name: "env bin dir without binaries", env: map[string]string{EnvPGBinDir: empty}, wantErr: []string{EnvPGBinDir, "no PostgreSQL server binaries"}},
		{name: "version not fetched", opts: PostgresOptions{Version: 13}, wantErr: []string{"no PostgreSQL 13 server binaries", "scripts/fetch-postgres.sh 13"}},
		{name: "env version not a number", env: map[string]string{EnvPGVersion: "seventeen"}, wantErr: []string{EnvPGVersion, "major version"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvPGBinDir, tc.env[EnvPGBinDir])
			t.Setenv(EnvPGVersion, tc.env[EnvPGVersion])
			dir, major, err := chooseBinDir(tc.opts)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("chose %s, want an error", dir)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if dir != tc.wantDir || major != tc.wantMajor {
				t.Fatalf("chose %s (major %d), want %s (major %d)", dir, major, tc.wantDir, tc.wantMajor)
			}
		})
	}
}

func TestPGCacheDir(t *testing.T) {
	t.Setenv(EnvPGCache, "/some/where")
	if got := PGCacheDir(); got != "/some/where" {
		t.Fatalf("PGCacheDir() = %s with %s set", got, EnvPGCache)
	}
	t.Setenv(EnvPGCache, "")
	want := "/var/cache/cdcinvalidate/postgres" // readable by the OS user postgres
	if os.Geteuid() != 0 {
		t.Setenv("XDG_CACHE_HOME", "/xdg")
		want = "/xdg/cdcinvalidate/postgres"
	}
	if got := PGCacheDir(); got != want {
		t.Fatalf("PGCacheDir() = %s, want %s", got, want)
	}
}

// TestStandbyAndPromote makes a physical standby by copying the data dir,
// checks that it replays the primary's writes, and promotes it; on the
// default server, or on each version of CDC_COMPAT_VERSIONS.
func TestStandbyAndPromote(t *testing.T) {
	versions := MatrixVersions(t)
	if versions == nil {
		versions = []int{0} // the default server
	}
	for _, major := range versions {
		name := fmt.Sprint("pg", major)
		if major == 0 {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			if major != 0 {
				RequireVersion(t, major)
			}
			ctx := testCtx(t)
			primary := PostgresT(t, PostgresOptions{Version: major})
			if got := primary.ServerVersionNum() / 10000; major != 0 && got != major {
				t.Fatalf("server version %d, want %d", primary.ServerVersionNum(), major)
			}
			if err := primary.Exec(ctx, `CREATE TABLE t (v int); INSERT INTO t VALUES (1)`); err != nil {
				t.Fatal(err)
			}
			standby, err := primary.StartStandby(ctx, StandbyOptions{Settings: map[string]string{"hot_standby_feedback": "on"}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = standby.Close() })
			if standby.Port() == primary.Port() {
				t.Fatal("standby on the primary's port")
			}
			if err := primary.Exec(ctx, `INSERT INTO t VALUES (2)`); err != nil {
				t.Fatalf("primary after the copy: %v", err)
			}
			var got string
			for try := 0; try < 200 && got != "2"; try++ {
				got, _ = queryString(ctx, standby.DSN("postgres"), `SELECT count(*)::text FROM t`)
				if got != "2" {
					time.Sleep(50 * time.Millisecond)
				}
			}
			if got != "2" {
				t.Fatalf("standby sees %s rows, want 2 (replayed from the primary)", got)
			}
			if r, err := queryString(ctx, standby.DSN("postgres"), `SELECT pg_is_in_recovery()::text`); err != nil || r != "true" {
				t.Fatalf("standby in recovery = %s, %v", r, err)
			}
			if err := standby.Exec(ctx, `INSERT INTO t VALUES (3)`); err == nil {
				t.Fatal("a write on the standby succeeded")
			}
			if err := standby.Promote(ctx); err != nil {
				t.Fatal(err)
			}
			if err := standby.Exec(ctx, `INSERT INTO t VALUES (3)`); err != nil {
				t.Fatalf("write after promotion: %v", err)
			}
		})
	}
}
