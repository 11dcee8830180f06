package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func noEnv(string) (string, bool) { return "", false }

func mapEnv(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func loadTestdata(t *testing.T, name string, env func(string) (string, bool)) (*Config, error) {
	t.Helper()
	return Load(filepath.Join("testdata", name), env)
}

func configError(t *testing.T, err error) *Error {
	t.Helper()
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a *config.Error", err, err)
	}
	if len(ce.Problems) == 0 {
		t.Fatal("*config.Error without problems")
	}
	return ce
}

func TestLoadGoodDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := loadTestdata(t, "config-good.yaml", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"dsn", cfg.Postgres.DSN, "postgres://app@127.0.0.1:5432/app?sslmode=disable"},
		{"slot", cfg.Postgres.Slot, "cdcinvalidate"},
		{"publication", cfg.Postgres.Publication, "cdcinvalidate"},
		{"status_interval", cfg.Postgres.StatusInterval, 10 * time.Second},
		{"streaming", cfg.Postgres.StreamingEnabled(), true},
		{"txn_buffer_mb", cfg.Postgres.TxnBufferMB, 64},
		{"spill_dir", cfg.Postgres.SpillDir, ""},
		{"postgres.max_backoff", cfg.Postgres.MaxBackoff, 10 * time.Second},
		{"addr", cfg.Redis.Addr, "127.0.0.1:6379"},
		{"db", cfg.Redis.DB, 0},
		{"dial_timeout", cfg.Redis.DialTimeout, 5 * time.Second},
		{"read_timeout", cfg.Redis.ReadTimeout, 10 * time.Second},
		{"write_timeout", cfg.Redis.WriteTimeout, 10 * time.Second},
		{"delete_command", cfg.Sink.DeleteCommand, DeleteCommand("unlink")},
		{"max_batch_keys", cfg.Sink.MaxBatchKeys, 10000},
		{"scan_count", cfg.Sink.ScanCount, 1000},
		{"sink.max_backoff", cfg.Sink.MaxBackoff, 5 * time.Second},
		{"sink.on_long_key", cfg.Sink.OnLongKey, LongKeySend},
		{"log.level", cfg.Log.Level, LogLevel("info")},
		{"log.format", cfg.Log.Format, LogFormat("json")},
		{"rules", len(cfg.Rules), 2},
		{"rules[1].table", cfg.Rules[1].Table, "shop.orders"},
		{"rules[1].keys", strings.Join(cfg.Rules[1].Keys, ","), "order:{id},user:{user_id}:orders"},
		{"rules[1].unsafe", cfg.Rules[1].UnsafeAllowStaleOldKeys, true},
		{"rules[0].unsafe", cfg.Rules[0].UnsafeAllowStaleOldKeys, false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	rules := cfg.MappingRules("config-good.yaml")
	if len(rules) != 2 {
		t.Fatalf("MappingRules returned %d rules", len(rules))
	}
	if r := rules[1]; r.Schema != "shop" || r.Table != "orders" || !r.AllowStaleOldKeys || len(r.Templates) != 2 || r.Templates[1].String() != "user:{user_id}:orders" {
		t.Errorf("rules[1] = %+v", r)
	}
	if r := rules[0]; r.Schema != "public" || r.Table != "users" || !strings.Contains(r.Where, "rules[0]") || !strings.Contains(r.Where, "config-good.yaml") {
		t.Errorf("rules[0] = %+v", r)
	}
}

func TestLoadFull(t *testing.T) {
	t.Parallel()
	cfg, err := loadTestdata(t, "config-full.yaml", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Postgres: Postgres{DSN: "host=db user=app dbname=app sslmode=disable", Slot: "my_slot", Publication: "my_pub",
			StatusInterval: 2 * time.Second, Streaming: cfg.Postgres.Streaming, TxnBufferMB: 16, SpillDir: "/var/tmp", MaxBackoff: 30 * time.Second,
			StandbyRetry: 2 * time.Second, WALSenderTimeout: 20 * time.Second, WarnRetainedWALMB: 4096, CatalogCheckInterval: 30 * time.Second},
		Redis:       Redis{Addr: "redis:6380", WaitTimeout: time.Second, DB: 3, Username: "cdc", Password: "pw", DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 3 * time.Second},
		Rules:       []Rule{{Table: "users", Keys: []string{"user:{id}"}}},
		Sink:        Sink{DeleteCommand: "del", MaxBatchKeys: 500, ScanCount: 50, MaxBackoff: time.Second, MaxKeyBytes: 64 << 10, MaxInFlight: 1, OnLongKey: LongKeyStop},
		Client:      Client{Leases: true, PublishChannel: "cdc-events"},
		Metrics:     Metrics{Listen: "127.0.0.1:9187", ReadyMaxLag: 5 * time.Second, SlotPollInterval: 3 * time.Second, Pprof: true},
		Consistency: Consistency{OnHistoryLost: "stop", OnFirstStart: "keep"},
		Verify:      Verify{SampleRate: DefaultVerifySampleRate, Windows: DefaultVerifyWindows, MaxPending: DefaultVerifyMaxPending, ReportInterval: DefaultVerifyReportInterval},
		Log:         Log{Level: "debug", Format: "console"},
	}
	if fmt.Sprint(*cfg) != fmt.Sprint(want) {
		t.Errorf("config =\n%+v\nwant\n%+v", *cfg, want)
	}
	if cfg.Postgres.Streaming == nil || cfg.Postgres.StreamingEnabled() {
		t.Error("streaming: false not honoured")
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join("testdata", "does-not-exist.yaml"), noEnv)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file = %v, want ErrNotExist", err)
	}
}

func TestEnvOverrides(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"CDC_POSTGRES_DSN":             "host=other user=x password=secret",
		"CDC_POSTGRES_STREAMING":       "false",
		"CDC_POSTGRES_STATUS_INTERVAL": "250ms",
		"CDC_REDIS_ADDR":               "[::1]:6390",
		"CDC_REDIS_DB":                 "7",
		"CDC_REDIS_PASSWORD":           "redispw",
		"CDC_LOG_LEVEL":                "warn",
		"CDC_LOG_FORMAT":               "console",
		"CDC_SINK_DELETE_COMMAND":      "del",
		"CDC_UNRELATED":                "x",
	}
	var asked []string
	cfg, err := loadTestdata(t, "config-good.yaml", func(k string) (string, bool) {
		asked = append(asked, k)
		return mapEnv(env)(k)
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Postgres.DSN != env["CDC_POSTGRES_DSN"] || cfg.Postgres.StreamingEnabled() || cfg.Postgres.StatusInterval != 250*time.Millisecond ||
		cfg.Redis.Addr != "[::1]:6390" || cfg.Redis.DB != 7 || cfg.Redis.Password != "redispw" ||
		cfg.Log.Level != "warn" || cfg.Log.Format != "console" || cfg.Sink.DeleteCommand != "del" {
		t.Errorf("environment not applied: %+v", cfg)
	}
	// Options the environment does not set keep the file's value or default.
	if cfg.Postgres.Slot != "cdcinvalidate" || len(cfg.Rules) != 2 {
		t.Errorf("unrelated options changed: %+v", cfg)
	}
	slices.Sort(asked)
	if !slices.Equal(asked, EnvNames()) {
		t.Errorf("variables read %q, EnvNames %q", asked, EnvNames())
	}
	for _, n := range []string{"CDC_POSTGRES_DSN", "CDC_REDIS_ADDR", "CDC_REDIS_DB", "CDC_LOG_LEVEL", "CDC_POSTGRES_STREAMING", "CDC_REDIS_PASSWORD"} {
		if !slices.Contains(EnvNames(), n) {
			t.Errorf("EnvNames lacks %s", n)
		}
	}

	// The environment can supply what the file lacks.
	cfg, err = Parse("min.yaml", []byte("rules:\n  - table: t\n    keys: [\"t:{id}\"]\n"), mapEnv(map[string]string{
		"CDC_POSTGRES_DSN": "postgres://h/db", "CDC_REDIS_ADDR": "h:1",
	}))
	if err != nil || cfg.Postgres.DSN != "postgres://h/db" || cfg.Redis.Addr != "h:1" {
		t.Errorf("Parse with env = %+v, %v", cfg, err)
	}
}

func TestEnvBadValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, value, want string
	}{
		{"CDC_REDIS_DB", "zero", "not a whole number"},
		{"CDC_POSTGRES_STREAMING", "nope", "not true or false"},
		{"CDC_POSTGRES_STATUS_INTERVAL", "10", "not a duration"},
		{"CDC_POSTGRES_TXN_BUFFER_MB", "1.5", "not a whole number"},
		{"CDC_LOG_LEVEL", "loud", "not one of"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadTestdata(t, "config-good.yaml", mapEnv(map[string]string{tc.name: tc.value}))
			ce := configError(t, err)
			found := false
			for _, p := range ce.Problems {
				if strings.Contains(p.Msg, tc.want) && (strings.Contains(p.Where, tc.name) || tc.name == "CDC_LOG_LEVEL") {
					found = true
				}
			}
			if !found {
				t.Errorf("problems %+v do not report %s=%q (%q)", ce.Problems, tc.name, tc.value, tc.want)
			}
		})
	}
	// Several bad variables are all reported, each naming its variable.
	_, err := loadTestdata(t, "config-good.yaml", mapEnv(map[string]string{"CDC_REDIS_DB": "x", "CDC_POSTGRES_STREAMING": "y"}))
	ce := configError(t, err)
	var wheres []string
	for _, p := range ce.Problems {
		wheres = append(wheres, p.Where)
	}
	slices.Sort(wheres)
	if want := []string{"env CDC_POSTGRES_STREAMING", "env CDC_REDIS_DB"}; !slices.Equal(wheres, want) {
		t.Errorf("problems at %q, want %q", wheres, want)
	}
}

var placeRE = regexp.MustCompile(`^testdata/config-bad-[a-z-]+\.yaml:(\d+)(?::(\d+))?\b`)

func TestBadFileReportsEveryProblem(t *testing.T) {
	t.Parallel()
	file := filepath.Join("testdata", "config-bad-many.yaml")
	_, err := Load(file, noEnv)
	ce := configError(t, err)
	if ce.File != file {
		t.Errorf("Error.File = %q, want %q", ce.File, file)
	}
	want := []struct {
		msg  string // substring of Msg
		line string // line of the problem
		col  string // column, "" when the place has no column
	}{
		{`unknown option "slott" in postgres`, "2", "3"},
		{"postgres.dsn is required", "2", "3"},
		{`slot name "Bad-Slot" is invalid`, "3", "9"},
		{`rule for table "orders" has no keys`, "9", "5"},
		{`"item:{id"`, "11", "12"},
	}
	if len(ce.Problems) != len(want) {
		t.Errorf("%d problems, want %d:\n%v", len(ce.Problems), len(want), err)
	}
	for _, w := range want {
		i := slices.IndexFunc(ce.Problems, func(p Problem) bool { return strings.Contains(p.Msg, w.msg) })
		if i < 0 {
			t.Errorf("no problem mentions %q:\n%v", w.msg, err)
			continue
		}
		p := ce.Problems[i]
		g := placeRE.FindStringSubmatch(p.Where)
		if g == nil || g[1] != w.line || g[2] != w.col {
			t.Errorf("problem %q is at %q, want %s:%s:%s", p.Msg, p.Where, file, w.line, w.col)
		}
	}
	text := err.Error()
	if !strings.HasPrefix(text, "configuration "+file+" has 5 problems:") {
		t.Errorf("error text starts %q", text[:min(len(text), 80)])
	}
	if strings.Count(text, "\n  - ") != len(ce.Problems) {
		t.Errorf("error text does not list every problem:\n%s", text)
	}
}

func TestBadFiles(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file string
		want []string // substrings of the problems, in any order
		at   []string // places ("LINE" or "LINE:COL") the problems must include
	}{
		{"config-bad-syntax.yaml", []string{"unexpected end of stream"}, []string{"4"}},
		{"config-bad-alias.yaml", []string{"aliases"}, []string{"7:12"}},
		{"config-bad-empty.yaml", []string{"the file is empty"}, nil},
		{"config-bad-comment-only.yaml", []string{"the file is empty"}, nil},
		{
			"config-bad-types.yaml",
			[]string{"`soon` into time.Duration", "`lots` into int", "redis.db must not be negative", `delete_command "remove"`, `log level "verbose"`, `log format "xml"`, `"user:{id}" is listed twice`},
			[]string{"3", "4", "7:7", "12:19", "14:10", "15:11", "10:25"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			cfg, err := loadTestdata(t, tc.file, noEnv)
			if cfg != nil {
				t.Errorf("config returned with an error: %+v", cfg)
			}
			ce := configError(t, err)
			for _, w := range tc.want {
				if !slices.ContainsFunc(ce.Problems, func(p Problem) bool { return strings.Contains(p.Msg, w) }) {
					t.Errorf("no problem mentions %q:\n%v", w, err)
				}
			}
			if len(ce.Problems) != len(tc.want) {
				t.Errorf("%d problems, want %d:\n%v", len(ce.Problems), len(tc.want), err)
			}
			for _, at := range tc.at {
				if !slices.ContainsFunc(ce.Problems, func(p Problem) bool {
					g := placeRE.FindStringSubmatch(p.Where)
					return g != nil && (g[1] == at || g[1]+":"+g[2] == at)
				}) {
					t.Errorf("no problem at %s:%s:\n%v", tc.file, at, err)
				}
			}
		})
	}
}

func TestParseValidation(t *testing.T) {
	t.Parallel()
	const base = "postgres:\n  dsn: \"postgres://h/db\"\nredis:\n  addr: \"h:6379\"\n"
	const rules = "rules:\n  - table: users\n    keys: [\"user:{id}\"]\n"
	tests := []struct {
		name, yaml string
		want       string // "" = valid
	}{
		{"valid", base + rules, ""},
		{"no rules", base, "no rules"},
		{"empty rules", base + "rules: []\n", "no rules"},
		{"rule without table", base + "rules:\n  - keys: [\"a:{id}\"]\n", "rule has no table"},
		{"bad table name", base + "rules:\n  - table: Users\n    keys: [\"a:{id}\"]\n", `table "Users"`},
		{"three-part table name", base + "rules:\n  - table: a.b.c\n    keys: [\"a:{id}\"]\n", `table "a.b.c"`},
		{"schema table", base + "rules:\n  - table: app.users\n    keys: [\"a:{id}\"]\n", ""},
		{"template without literal", base + "rules:\n  - table: t\n    keys: [\"{id}\"]\n", "literal text"},
		{"template filter", base + "rules:\n  - table: t\n    keys: [\"t:{id|lower}\"]\n", ""},
		{"unknown template filter", base + "rules:\n  - table: t\n    keys: [\"t:{id|upper}\"]\n", `unknown filter "upper"`},
		{"missing redis addr", "postgres:\n  dsn: \"postgres://h/db\"\n" + rules, "redis.addr is required"},
		{"redis addr without port", "postgres:\n  dsn: \"postgres://h/db\"\nredis:\n  addr: localhost\n" + rules, "not host:port"},
		{"bad dsn", "postgres:\n  dsn: \"postgres://h:port/db\"\nredis:\n  addr: \"h:1\"\n" + rules, "not a valid connection string"},
		{"duplicate key", base + rules + "postgres:\n  dsn: x\n", "already defined"},
		{"status interval too small", "postgres:\n  dsn: \"postgres://h/db\"\n  status_interval: 10ms\nredis:\n  addr: \"h:1\"\n" + rules, "out of range"},
		{"status interval too large", "postgres:\n  dsn: \"postgres://h/db\"\n  status_interval: 1m\nredis:\n  addr: \"h:1\"\n" + rules, "out of range"},
		{"negative buffer", "postgres:\n  dsn: \"postgres://h/db\"\n  txn_buffer_mb: -1\nredis:\n  addr: \"h:1\"\n" + rules, "txn_buffer_mb"},
		{"negative backoff", "postgres:\n  dsn: \"postgres://h/db\"\n  max_backoff: -1s\nredis:\n  addr: \"h:1\"\n" + rules, "max_backoff"},
		{"bad publication", "postgres:\n  dsn: \"postgres://h/db\"\n  publication: 1pub\nredis:\n  addr: \"h:1\"\n" + rules, "publication name"},
		{"long slot", "postgres:\n  dsn: \"postgres://h/db\"\n  slot: " + strings.Repeat("a", 64) + "\nredis:\n  addr: \"h:1\"\n" + rules, "slot name"},
		{"batch keys", base + rules + "sink:\n  max_batch_keys: -5\n", "max_batch_keys"},
		{"scan count", base + rules + "sink:\n  scan_count: -1\n", "scan_count"},
		{"on long key", base + rules + "sink:\n  on_long_key: skip\n", `on_long_key "skip" is not one of send, stop`},
		{"on long key stop", base + rules + "sink:\n  on_long_key: stop\n", ""},
		{"unknown top-level option", base + rules + "sinks: {}\n", `unknown option "sinks"`},
		{"unknown rule option", base + "rules:\n  - table: t\n    key: [\"t:{id}\"]\n", `unknown option "key" in rule`},
		{"wrong type", base + rules + "log: debug\n", "cannot unmarshal"},
		{"top-level scalar", "hello\n", "cannot unmarshal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := Parse("c.yaml", []byte(tc.yaml), noEnv)
			if tc.want == "" {
				if err != nil || cfg == nil {
					t.Fatalf("Parse = %v, want success", err)
				}
				return
			}
			ce := configError(t, err)
			if !slices.ContainsFunc(ce.Problems, func(p Problem) bool { return strings.Contains(p.Msg, tc.want) }) {
				t.Errorf("no problem mentions %q:\n%v", tc.want, err)
			}
			for _, p := range ce.Problems {
				if !strings.HasPrefix(p.Where, "c.yaml") {
					t.Errorf("problem place %q does not name the file", p.Where)
				}
			}
		})
	}
}

func TestSplitTable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, schema, table string }{
		{"users", "public", "users"},
		{"app.users", "app", "users"},
		{"a.b.c", "a", "b.c"},
	} {
		if s, n := SplitTable(tc.in); s != tc.schema || n != tc.table {
			t.Errorf("SplitTable(%q) = %q, %q", tc.in, s, n)
		}
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
		secret   string // must not survive
	}{
		{"postgres://u:secret@h/db", "postgres://u:xxxxx@h/db", "secret"},
		{"postgresql://u:secret@h:5432/db?sslmode=disable", "postgresql://u:xxxxx@h:5432/db?sslmode=disable", "secret"},
		{"postgres://:secret@h/db", "postgres://:xxxxx@h/db", "secret"},
		{"postgres://u:p@ss@h/db", "postgres://u:xxxxx@h/db", "ss"}, // url.Parse takes the last '@' of the authority
		{"postgres://u:p%40ss@h/db", "postgres://u:xxxxx@h/db", "ss"},
		{"redis://u:secret@h:6379/0", "redis://u:xxxxx@h:6379/0", "secret"},
		{"postgres://u@h/db", "postgres://u@h/db", ""},
		{"password=secret host=x", "password=xxxxx host=x", "secret"},
		{"host=x password=secret", "host=x password=xxxxx", "secret"},
		{"host=x PASSWORD = secret port=1", "host=x PASSWORD = xxxxx port=1", "secret"},
		{"password='se cret' host=x", "password=xxxxx host=x", "cret"},
		{`password='se\'cret' host=x`, "password=xxxxx host=x", "cret"},
		{`password=se\ cret host=x`, "password=xxxxx host=x", "cret"}, // libpq: backslash escapes a space in an unquoted value
		{"dial postgres://u:secret@h/db: refused; password=secret2", "dial postgres://u:xxxxx@h/db: refused; password=xxxxx", "secret"},
		{"nothing to hide", "nothing to hide", ""},
	}
	for _, tc := range tests {
		got := Redact(tc.in)
		if got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if tc.secret != "" && strings.Contains(got, tc.secret) {
			t.Errorf("Redact(%q) = %q keeps %q", tc.in, got, tc.secret)
		}
		if again := Redact(got); again != got {
			t.Errorf("Redact is not idempotent on %q: %q", got, again)
		}
	}
}

func TestRedactAll(t *testing.T) {
	t.Parallel()
	in := []string{"postgres://u:secret@h/db", "nothing to hide"}
	got := RedactAll(in)
	if want := []string{"postgres://u:xxxxx@h/db", "nothing to hide"}; !slices.Equal(got, want) {
		t.Errorf("RedactAll = %q, want %q", got, want)
	}
	if in[0] != "postgres://u:secret@h/db" {
		t.Errorf("RedactAll changed its argument: %q", in)
	}
	if got := RedactAll(nil); len(got) != 0 {
		t.Errorf("RedactAll(nil) = %q", got)
	}
}

// The problem reported for an invalid DSN never quotes its password.
func TestInvalidDSNErrorHidesPassword(t *testing.T) {
	t.Parallel()
	const pw = "Sup3rS3cr3t"
	dsns := []string{
		"postgres://u:" + pw + "@h:notaport/db",
		"postgres://u:" + pw + "@h/db?sslmode=bogus",
		"postgres://u:" + pw + "@h/db?port=x",
		"postgresql://u:" + pw + "@[::1/db",
		"postgres://u:" + pw[:4] + "@" + pw[4:] + "@h:x/db",
		"postgres://u:" + pw[:4] + "@" + pw[4:] + "@h/db?sslmode=bogus",
		"postgres://h/db?password=" + pw + "&port=x",
		"host=h password=" + pw + " port=x",
		"host=h port=x password=" + pw,
		"host=h password=" + pw + " sslmode=bogus",
		"host=h password='" + pw[:4] + " " + pw[4:] + "' port=x",
		"host=h password=" + pw[:4] + `\ ` + pw[4:] + " port=x",
		"host=h password = " + pw + " port=x",
	}
	for _, dsn := range dsns {
		for _, viaEnv := range []bool{false, true} {
			data := fmt.Sprintf("postgres:\n  dsn: %q\nredis:\n  addr: \"h:1\"\nrules:\n  - table: t\n    keys: [\"t:{id}\"]\n", dsn)
			env := noEnv
			if viaEnv {
				data = "redis:\n  addr: \"h:1\"\nrules:\n  - table: t\n    keys: [\"t:{id}\"]\n"
				env = mapEnv(map[string]string{"CDC_POSTGRES_DSN": dsn})
			}
			_, err := Parse("c.yaml", []byte(data), env)
			if err == nil {
				t.Errorf("DSN %q accepted", dsn)
				continue
			}
			if !strings.Contains(err.Error(), "not a valid connection string") {
				t.Errorf("DSN %q: %v", dsn, err)
			}
			for _, frag := range []string{pw, pw[:4], pw[4:]} {
				if strings.Contains(err.Error(), frag) {
					t.Errorf("error for DSN %q reveals %q: %v", dsn, frag, err)
				}
			}
		}
	}
}

func TestErrorText(t *testing.T) {
	t.Parallel()
	one := &Error{File: "f.yaml", Problems: []Problem{{Where: "f.yaml:1:2 (x)", Msg: "bad"}}}
	if got, want := one.Error(), "configuration f.yaml has 1 problem:\n  - f.yaml:1:2 (x): bad"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	two := &Error{File: "f.yaml", Problems: []Problem{{"a", "b"}, {"c", "d"}}}
	if got, want := two.Error(), "configuration f.yaml has 2 problems:\n  - a: b\n  - c: d"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

// FuzzParse feeds arbitrary bytes to Parse: it must never panic, and it
// returns either a configuration or a *config.Error with problems.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{"", "---\n", "~", "a: &x 1\nb: *x\n", "a: [\n", "\t", "rules: [{table: t, keys: ['{']}]", "postgres: {dsn: 'password=x port=y'}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, noEnv)
		if err == nil {
			if cfg == nil {
				t.Fatal("nil config without an error")
			}
			if len(cfg.Rules) == 0 || cfg.Postgres.DSN == "" || cfg.Redis.Addr == "" {
				t.Fatalf("invalid config accepted: %+v", cfg)
			}
			return
		}
		if cfg != nil {
			t.Fatal("config returned with an error")
		}
		var ce *Error
		if !errors.As(err, &ce) || len(ce.Problems) == 0 {
			t.Fatalf("error %v is not a *config.Error with problems", err)
		}
		_ = err.Error()
	})
}

func TestSecondDocumentIsRefused(t *testing.T) {
	t.Parallel()
	text := "postgres:\n  dsn: postgres://a@h/db\nredis:\n  addr: h:1\nrules:\n  - table: t\n    keys: [\"t:{id}\"]\n---\nrules:\n  - table: u\n    keys: [\"u:{id}\"]\n"
	_, err := Parse("c.yaml", []byte(text), func(string) (string, bool) { return "", false })
	if err == nil || !strings.Contains(err.Error(), "second YAML document") || !strings.Contains(err.Error(), "c.yaml:8") {
		t.Fatalf("err = %v, want the second document refused at line 8", err)
	}
}
