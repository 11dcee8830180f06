// Package config loads cdcinvalidate's configuration: one typed struct, read
// from YAML (unknown fields are errors), overridden by CDC_* environment
// variables and then by flags, with defaults filled in one place and every
// problem reported at once with its place in the file.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.yaml.in/yaml/v3"

	"github.com/cdcinvalidate/cdcinvalidate/mapping"
)

// Config is the whole configuration.
type Config struct {
	Postgres    Postgres    `yaml:"postgres"`
	Redis       Redis       `yaml:"redis"`
	Rules       []Rule      `yaml:"rules"`
	Sink        Sink        `yaml:"sink"`
	Client      Client      `yaml:"client"`
	Metrics     Metrics     `yaml:"metrics"`
	Consistency Consistency `yaml:"consistency"`
	Log         Log         `yaml:"log"`
}

// Metrics configures the HTTP endpoint for Prometheus and health checks.
type Metrics struct {
	// Listen is the address of /metrics, /healthz and /readyz, e.g.
	// "127.0.0.1:9187" or ":9187". Default "": no HTTP server.
	Listen string `yaml:"listen"`
	// ReadyMaxLag is the lag above which /readyz answers 503. Default 30s.
	ReadyMaxLag time.Duration `yaml:"ready_max_lag"`
	// SlotPollInterval is how often the slot's statistics are read. Default 15s.
	SlotPollInterval time.Duration `yaml:"slot_poll_interval"`
	// Pprof serves /debug/pprof/ on the same address. Default false.
	Pprof bool `yaml:"pprof"`
}

// Client turns on the engine's side of the cacheaside client library.
type Client struct {
	// Leases fences (or deletes) the cacheaside lease of every invalidated
	// key with it, so a fill that started before the commit is refused.
	// Default false.
	Leases bool `yaml:"leases"`
	// LeaseFence is how long the lease holds the engine's fence after an
	// invalidation: readers that miss meanwhile wait (no one takes the
	// lease), since a commit reaches the WAL a moment before other sessions
	// see it. 0 deletes the lease instead. Default 50ms.
	LeaseFence *time.Duration `yaml:"lease_fence"`
	// PublishChannel, when set, receives one JSON message per applied batch
	// ({"lsn":"0/16B3748","keys":[...]}) for in-process (L1) caches. Default "".
	PublishChannel string `yaml:"publish_channel"`
}

// Postgres is where changes come from.
type Postgres struct {
	// DSN is an ordinary connection string (URL or key=value); the engine adds
	// replication=database itself. Env: CDC_POSTGRES_DSN.
	DSN string `yaml:"dsn"`
	// Slot is the logical replication slot (plugin pgoutput), created if absent. Default "cdcinvalidate".
	Slot string `yaml:"slot"`
	// Publication is used as it is if it exists, else created FOR TABLE
	// every rule table. Default "cdcinvalidate".
	Publication string `yaml:"publication"`
	// StatusInterval is the longest time between standby status updates. Default 10s.
	StatusInterval time.Duration `yaml:"status_interval"`
	// Streaming receives large in-progress transactions as they happen
	// (PostgreSQL 14+). Default true.
	Streaming *bool `yaml:"streaming"`
	// TxnBufferMB bounds the memory for keys of streamed transactions;
	// beyond it they spill to SpillDir. Default 64.
	TxnBufferMB int `yaml:"txn_buffer_mb"`
	// SpillDir holds spilled transactions. Default: the system temp dir.
	SpillDir string `yaml:"spill_dir"`
	// MaxBackoff caps the wait between reconnects. Default 10s.
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// StandbyRetry is how often a standby instance (the slot is active for
	// another one) tries to take it over. Default 1s.
	StandbyRetry time.Duration `yaml:"standby_retry"`
	// WarnRetainedWALMB logs a warning (every 10 minutes) while the slot
	// retains more WAL than this. Default 4096; a negative value turns it off.
	WarnRetainedWALMB int `yaml:"warn_retained_wal_mb"`
	// WALSenderTimeout sets wal_sender_timeout for the replication
	// connection (PostgreSQL 12+). Default 0: the server's setting.
	WALSenderTimeout time.Duration `yaml:"wal_sender_timeout"`
	// FailoverSlot creates the slot with the failover property (and turns
	// it on for an existing slot), so standbys with sync_replication_slots
	// keep a copy and the engine resumes on a promoted standby without
	// losing history. PostgreSQL 17+. Default false.
	FailoverSlot bool `yaml:"failover_slot"`
}

// Consistency says what to do when the engine cannot prove it saw every change.
type Consistency struct {
	// OnHistoryLost: "flush" (default) deletes every key the rules manage,
	// then streams on; "stop" exits with an error that says what happened.
	OnHistoryLost string `yaml:"on_history_lost"`
	// OnFirstStart: "flush" (default) deletes every managed key when the
	// slot is created, since cached values may predate it; "keep" trusts them.
	OnFirstStart string `yaml:"on_first_start"`
}

// Redis is where keys are invalidated.
type Redis struct {
	// Addr is host:port. Env: CDC_REDIS_ADDR.
	Addr string `yaml:"addr"`
	// DB is the database number. Default 0.
	DB int `yaml:"db"`
	// Username and Password for AUTH (ACL). Env: CDC_REDIS_USERNAME, CDC_REDIS_PASSWORD.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// DialTimeout, ReadTimeout and WriteTimeout of one command. Defaults 5s, 10s, 10s.
	DialTimeout  time.Duration `yaml:"dial_timeout"`
	ReadTimeout  time.Duration `yaml:"read_timeout"`
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// TLS connects with TLS (Redis 6+ tls-port; "rediss"). Default false.
	TLS bool `yaml:"tls"`
	// TLSCAFile verifies the server against this CA bundle (PEM) instead of
	// the system roots; setting it turns TLS on.
	TLSCAFile string `yaml:"tls_ca_file"`
	// TLSServerName is the name the server certificate must carry. Default:
	// the host of addr.
	TLSServerName string `yaml:"tls_server_name"`
	// TLSCertFile and TLSKeyFile are a client certificate (PEM) for servers
	// that require one (tls-auth-clients yes).
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// TLSInsecureSkipVerify accepts any server certificate: encryption
	// without authentication, for tests only. Default false.
	TLSInsecureSkipVerify bool `yaml:"tls_insecure_skip_verify"`
}

// TLSEnabled reports whether Redis is reached over TLS.
func (r Redis) TLSEnabled() bool {
	return r.TLS || r.TLSCAFile != "" || r.TLSCertFile != "" || r.TLSInsecureSkipVerify
}

// Rule maps one table to cache keys.
type Rule struct {
	// Table is "table" or "schema.table" (default schema public).
	Table string `yaml:"table"`
	// Keys are templates such as "user:{id}".
	Keys []string `yaml:"keys"`
	// UnsafeAllowStaleOldKeys lets templates use columns outside the replica
	// identity; keys of the old row that need them are then skipped, which
	// can leave stale entries until their TTL.
	UnsafeAllowStaleOldKeys bool `yaml:"unsafe_allow_stale_old_keys"`
	// Ops are the operations the rule applies to: insert, update, delete,
	// truncate. Default (absent): all of them.
	Ops []string `yaml:"ops"`
	// WhenChanged limits UPDATEs to those that change at least one of these
	// columns (a column whose old value the change does not carry counts as
	// changed). INSERT and DELETE are not filtered.
	WhenChanged []string `yaml:"when_changed"`
	// When is a CEL condition over op, old and new; changes for which it is
	// false invalidate nothing through this rule.
	When string `yaml:"when"`

	// Actions is what the rule does with its keys: delete, version,
	// publish, stream, refresh, generation. Default: [delete].
	Actions []string `yaml:"actions"`
	// DeleteCommand overrides sink.delete_command for this rule (unlink, del).
	DeleteCommand string `yaml:"delete_command"`
	// VersionKey names the version key of a key, {key} standing for it.
	// Default "{key}:v".
	VersionKey string `yaml:"version_key"`
	// VersionTTL expires version keys; renewed at every raise. Default 0: none.
	VersionTTL time.Duration `yaml:"version_ttl"`
	// PublishChannel receives one JSON message per transaction. Default
	// "cdcinvalidate:changes".
	PublishChannel string `yaml:"publish_channel"`
	// StreamKey is the Redis Stream events are appended to. Default
	// "cdcinvalidate:changes".
	StreamKey string `yaml:"stream_key"`
	// StreamMaxLen caps the stream at about this many entries (MAXLEN ~);
	// 0 means no cap. Default 100000.
	StreamMaxLen *int64 `yaml:"stream_maxlen"`
	// RefreshColumns are the columns refresh writes. Default: all.
	RefreshColumns []string `yaml:"refresh_columns"`
	// RefreshTTL expires refreshed values. Default 0: no TTL.
	RefreshTTL time.Duration `yaml:"refresh_ttl"`
	// RefreshTTLJitter takes up to this fraction of refresh_ttl off at
	// random (0 to 0.9), so values written together do not expire together.
	RefreshTTLJitter float64 `yaml:"refresh_ttl_jitter"`
	// GenerationKey is the key generation increments. Default "gen:<table>"
	// (with the schema when it is not public).
	GenerationKey string `yaml:"generation_key"`
	// OnTruncate is "scan" (SCAN + UNLINK the rule's keys, default) or
	// "generation" (only increment the generation key).
	OnTruncate string `yaml:"on_truncate"`

	cond *mapping.Condition // When, compiled by validate
}

// Rule action names.
const (
	ActionDelete     = "delete"
	ActionVersion    = "version"
	ActionPublish    = "publish"
	ActionStream     = "stream"
	ActionRefresh    = "refresh"
	ActionGeneration = "generation"
)

// DefaultChannel is the default publish channel and stream key of rules.
const DefaultChannel = "cdcinvalidate:changes"

// DefaultStreamMaxLen is the default stream_maxlen.
const DefaultStreamMaxLen = 100000

// hasAction reports whether the rule lists action a (delete when none are listed).
func (r *Rule) hasAction(a string) bool {
	if len(r.Actions) == 0 {
		return a == ActionDelete
	}
	return slices.Contains(r.Actions, a)
}

// Sink tunes how keys are deleted.
type Sink struct {
	// DeleteCommand is "unlink" (default) or "del".
	DeleteCommand string `yaml:"delete_command"`
	// MaxBatchKeys bounds the keys of one Redis pipeline. Default 10000.
	MaxBatchKeys int `yaml:"max_batch_keys"`
	// ScanCount is the COUNT hint for TRUNCATE's SCAN. Default 1000.
	ScanCount int `yaml:"scan_count"`
	// MaxBackoff caps the wait between Redis retries. Default 5s.
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// MaxKeyBytes is the key length beyond which a key is logged and
	// counted (a template over a huge value). Default 65536.
	MaxKeyBytes int `yaml:"max_key_bytes"`
	// OnLongKey is what happens to a key longer than MaxKeyBytes: "send"
	// (default: it is invalidated all the same) or "stop" (the engine stops
	// with an error). A key is never skipped.
	OnLongKey string `yaml:"on_long_key"`
	// Watermark keeps the key cdcinvalidate:<slot>:lsn at the end LSN of the
	// last applied transaction (never lowered). Default true.
	Watermark *bool `yaml:"watermark"`
}

// WatermarkKey returns the watermark key name, or "" when it is off.
func (c *Config) WatermarkKey() string {
	if c.Sink.Watermark != nil && !*c.Sink.Watermark {
		return ""
	}
	return "cdcinvalidate:" + c.Postgres.Slot + ":lsn"
}

// ManagedKey returns the key that records which patterns and generation
// keys the rules managed when the engine last ran, or "" when the watermark
// is off.
func (c *Config) ManagedKey() string {
	if c.WatermarkKey() == "" {
		return ""
	}
	return "cdcinvalidate:" + c.Postgres.Slot + ":managed"
}

// Log configures logging.
type Log struct {
	// Level is debug, info (default), warn or error. Env: CDC_LOG_LEVEL.
	Level string `yaml:"level"`
	// Format is json (default) or console. Env: CDC_LOG_FORMAT.
	Format string `yaml:"format"`
}

// StreamingEnabled reports whether in-progress streaming is on.
func (p Postgres) StreamingEnabled() bool { return p.Streaming == nil || *p.Streaming }

// Problem is one mistake in the configuration.
type Problem struct {
	Where string // "rules.yaml:12:5 (rules[1].keys[0])" or "env CDC_REDIS_DB"
	Msg   string
}

// Error lists every problem found.
type Error struct {
	File     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	n := len(e.Problems)
	plural := "s"
	if n == 1 {
		plural = ""
	}
	fmt.Fprintf(&b, "configuration %s has %d problem%s:", e.File, n, plural)
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n  - %s: %s", p.Where, p.Msg)
	}
	return b.String()
}

// Load reads, overrides from the environment (env may be nil for
// os.LookupEnv), fills defaults and validates a configuration file.
func Load(path string, env func(string) (string, bool)) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	return Parse(path, data, env)
}

// Parse is Load for configuration text; name is used in messages.
func Parse(name string, data []byte, env func(string) (string, bool)) (*Config, error) {
	if env == nil {
		env = os.LookupEnv
	}
	e := &Error{File: name}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		e.Problems = append(e.Problems, yamlProblem(name, strings.TrimPrefix(err.Error(), "yaml: "), nil, ""))
		return nil, e
	}
	if len(root.Content) == 0 {
		e.Problems = append(e.Problems, Problem{Where: name, Msg: "the file is empty; see rules.yaml in the repository for an example"})
		return nil, e
	}
	// One document only: a second one ("---") would otherwise be ignored silently.
	docs := yaml.NewDecoder(strings.NewReader(string(data)))
	var first, second yaml.Node
	if docs.Decode(&first) == nil && docs.Decode(&second) == nil {
		e.Problems = append(e.Problems, Problem{Where: fmt.Sprintf("%s:%d", name, second.Line), Msg: "a second YAML document (after ---) would be ignored: keep the whole configuration in one document"})
		return nil, e
	}
	if a := findAlias(&root); a != nil {
		e.Problems = append(e.Problems, Problem{Where: fmt.Sprintf("%s:%d:%d", name, a.Line, a.Column), Msg: "YAML aliases (*name) are not allowed in the configuration"})
		return nil, e
	}
	var cfg Config
	if err := root.Content[0].Decode(&cfg); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, m := range te.Errors {
				e.Problems = append(e.Problems, yamlProblem(name, m, nil, ""))
			}
		} else {
			e.Problems = append(e.Problems, yamlProblem(name, err.Error(), nil, ""))
		}
	}
	// Strict: unknown fields are mistakes (a misspelt option must not be ignored).
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	var strict Config
	if err := dec.Decode(&strict); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, m := range te.Errors {
				if strings.Contains(m, "not found in type") {
					var key string
					if g := fieldRE.FindStringSubmatch(m); g != nil {
						key = g[1]
					}
					e.Problems = append(e.Problems, yamlProblem(name, unknownField(m), root.Content[0], key))
				}
			}
		}
	}
	loc := locator{file: name, root: root.Content[0]}
	e.Problems = append(e.Problems, applyEnv(&cfg, env)...)
	cfg.setDefaults()
	e.Problems = append(e.Problems, cfg.validate(loc)...)
	if len(e.Problems) > 0 {
		return nil, e
	}
	return &cfg, nil
}

var fieldRE = regexp.MustCompile(`field (\S+) not found in type config\.(\w+)`)

func unknownField(m string) string {
	if g := fieldRE.FindStringSubmatch(m); g != nil {
		return strings.Replace(m, g[0], fmt.Sprintf("unknown option %q in %s (check the spelling against the configuration reference in README.md)", g[1], strings.ToLower(g[2])), 1)
	}
	return m
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): `)

// yamlProblem places a message of the YAML library ("line 3: ...") at
// "file:3", or at "file:3:COL" when key names a mapping key of root found on
// that line.
func yamlProblem(name, msg string, root *yaml.Node, key string) Problem {
	g := yamlLineRE.FindStringSubmatch(msg)
	if g == nil {
		return Problem{Where: name, Msg: msg}
	}
	line, err := strconv.Atoi(g[1])
	if err != nil {
		return Problem{Where: name, Msg: msg}
	}
	where := fmt.Sprintf("%s:%d", name, line)
	if k := findKey(root, key, line); k != nil {
		where = fmt.Sprintf("%s:%d:%d", name, line, k.Column)
	}
	return Problem{Where: where, Msg: msg[len(g[0]):]}
}

// findKey returns the mapping key node named key on the given line.
func findKey(n *yaml.Node, key string, line int) *yaml.Node {
	if n == nil || key == "" {
		return nil
	}
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Value == key && k.Line == line {
				return k
			}
		}
	}
	for _, c := range n.Content {
		if k := findKey(c, key, line); k != nil {
			return k
		}
	}
	return nil
}

// findAlias returns the first YAML alias: a configuration has no use for
// them and they allow "billion laughs" expansion, so they are refused.
func findAlias(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode {
		return n
	}
	for _, c := range n.Content {
		if a := findAlias(c); a != nil {
			return a
		}
	}
	return nil
}

func (c *Config) setDefaults() {
	p := &c.Postgres
	if p.Slot == "" {
		p.Slot = "cdcinvalidate"
	}
	if p.Publication == "" {
		p.Publication = "cdcinvalidate"
	}
	if p.StatusInterval == 0 {
		p.StatusInterval = 10 * time.Second
	}
	if p.TxnBufferMB == 0 {
		p.TxnBufferMB = 64
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = 10 * time.Second
	}
	if p.WarnRetainedWALMB == 0 {
		p.WarnRetainedWALMB = 4096
	}
	if p.StandbyRetry == 0 {
		p.StandbyRetry = time.Second
	}
	if c.Consistency.OnHistoryLost == "" {
		c.Consistency.OnHistoryLost = "flush"
	}
	if c.Consistency.OnFirstStart == "" {
		c.Consistency.OnFirstStart = "flush"
	}
	r := &c.Redis
	if r.DialTimeout == 0 {
		r.DialTimeout = 5 * time.Second
	}
	if r.ReadTimeout == 0 {
		r.ReadTimeout = 10 * time.Second
	}
	if r.WriteTimeout == 0 {
		r.WriteTimeout = 10 * time.Second
	}
	s := &c.Sink
	if s.DeleteCommand == "" {
		s.DeleteCommand = "unlink"
	}
	if s.MaxBatchKeys == 0 {
		s.MaxBatchKeys = 10000
	}
	if s.ScanCount == 0 {
		s.ScanCount = 1000
	}
	if s.MaxKeyBytes == 0 {
		s.MaxKeyBytes = 64 << 10
	}
	if s.OnLongKey == "" {
		s.OnLongKey = "send"
	}
	if s.MaxBackoff == 0 {
		s.MaxBackoff = 5 * time.Second
	}
	if c.Metrics.ReadyMaxLag == 0 {
		c.Metrics.ReadyMaxLag = 30 * time.Second
	}
	if c.Metrics.SlotPollInterval == 0 {
		c.Metrics.SlotPollInterval = 15 * time.Second
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
}

var (
	slotRE  = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
)

// SplitTable splits "schema.table" (default schema public).
func SplitTable(t string) (schema, table string) {
	if s, n, ok := strings.Cut(t, "."); ok {
		return s, n
	}
	return "public", t
}

func (c *Config) validate(loc locator) []Problem {
	var ps []Problem
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Where: loc.where(path), Msg: fmt.Sprintf(format, args...)})
	}
	if c.Postgres.DSN == "" {
		add("postgres.dsn", "postgres.dsn is required (or set CDC_POSTGRES_DSN), e.g. postgres://app@127.0.0.1:5432/app?sslmode=disable")
	} else if _, err := pgconn.ParseConfig(c.Postgres.DSN); err != nil {
		// pgconn quotes the connection string after its own best-effort
		// redaction, which misses passwords such as "p@ss" in a URL or
		// "se\ cret" in keyword/value form: redact it first.
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) {
			pe.ConnString = Redact(pe.ConnString)
		}
		add("postgres.dsn", "postgres.dsn is not a valid connection string: %s", Redact(err.Error()))
	}
	if !slotRE.MatchString(c.Postgres.Slot) {
		add("postgres.slot", "slot name %q is invalid: use 1-63 lower-case letters, digits and underscores", c.Postgres.Slot)
	}
	if !identRE.MatchString(c.Postgres.Publication) {
		add("postgres.publication", "publication name %q is invalid: use a lower-case identifier (letters, digits, underscores; not starting with a digit)", c.Postgres.Publication)
	}
	if c.Postgres.StatusInterval < 100*time.Millisecond || c.Postgres.StatusInterval > 30*time.Second {
		add("postgres.status_interval", "status_interval %s is out of range: use 100ms to 30s (it must stay well below the server's wal_sender_timeout)", c.Postgres.StatusInterval)
	}
	if c.Postgres.TxnBufferMB < 1 {
		add("postgres.txn_buffer_mb", "txn_buffer_mb must be at least 1")
	}
	if c.Postgres.MaxBackoff < 0 {
		add("postgres.max_backoff", "max_backoff must not be negative")
	}
	if c.Postgres.StandbyRetry < 100*time.Millisecond {
		add("postgres.standby_retry", "standby_retry must be at least 100ms")
	}
	if w := c.Postgres.WALSenderTimeout; w != 0 && w < 2*c.Postgres.StatusInterval {
		add("postgres.wal_sender_timeout", "wal_sender_timeout %s must be at least twice status_interval (%s), or the server drops the engine between two status updates", w, c.Postgres.StatusInterval)
	}
	switch c.Consistency.OnHistoryLost {
	case "flush", "stop":
	default:
		add("consistency.on_history_lost", "on_history_lost %q is not one of flush, stop", c.Consistency.OnHistoryLost)
	}
	switch c.Consistency.OnFirstStart {
	case "flush", "keep":
	default:
		add("consistency.on_first_start", "on_first_start %q is not one of flush, keep", c.Consistency.OnFirstStart)
	}
	if c.Redis.Addr == "" {
		add("redis.addr", "redis.addr is required (or set CDC_REDIS_ADDR), e.g. 127.0.0.1:6379")
	} else if _, _, err := net.SplitHostPort(c.Redis.Addr); err != nil {
		add("redis.addr", "redis.addr %q is not host:port", c.Redis.Addr)
	}
	for _, f := range []struct{ path, name string }{
		{c.Redis.TLSCAFile, "redis.tls_ca_file"}, {c.Redis.TLSCertFile, "redis.tls_cert_file"}, {c.Redis.TLSKeyFile, "redis.tls_key_file"},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			add(f.name, "%s: %v", f.name, err)
		}
	}
	if (c.Redis.TLSCertFile == "") != (c.Redis.TLSKeyFile == "") {
		add("redis.tls_cert_file", "tls_cert_file and tls_key_file go together: set both for a client certificate, or neither")
	}
	if c.Redis.DB < 0 {
		add("redis.db", "redis.db must not be negative")
	}
	switch c.Sink.DeleteCommand {
	case "unlink", "del":
	default:
		add("sink.delete_command", "delete_command %q is not one of unlink, del", c.Sink.DeleteCommand)
	}
	if c.Sink.MaxBatchKeys < 1 {
		add("sink.max_batch_keys", "max_batch_keys must be at least 1")
	}
	if c.Sink.MaxBackoff < 0 {
		add("sink.max_backoff", "max_backoff must not be negative")
	}
	if c.Postgres.TxnBufferMB > 1<<20 {
		add("postgres.txn_buffer_mb", "txn_buffer_mb %d is larger than 1 TiB", c.Postgres.TxnBufferMB)
	}
	if c.Sink.MaxKeyBytes < 1 {
		add("sink.max_key_bytes", "max_key_bytes must be at least 1")
	}
	switch c.Sink.OnLongKey {
	case "send", "stop":
	default:
		add("sink.on_long_key", "on_long_key %q is not one of send, stop", c.Sink.OnLongKey)
	}
	if c.Sink.ScanCount < 1 {
		add("sink.scan_count", "scan_count must be at least 1")
	}
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			add("metrics.listen", "metrics.listen %q is not host:port (e.g. 127.0.0.1:9187 or :9187)", c.Metrics.Listen)
		}
	}
	if f := c.Client.LeaseFence; f != nil && (*f < 0 || *f > time.Minute || (*f > 0 && *f < time.Millisecond)) {
		add("client.lease_fence", "lease_fence %s must be 0 (delete leases) or between 1ms and 1m", *f)
	}
	if c.Client.LeaseFence != nil && !c.Client.Leases {
		add("client.lease_fence", "lease_fence is set, but client.leases is off: turn leases on, or remove lease_fence")
	}
	if c.Metrics.ReadyMaxLag < 0 {
		add("metrics.ready_max_lag", "ready_max_lag must not be negative")
	}
	if c.Metrics.SlotPollInterval < time.Second {
		add("metrics.slot_poll_interval", "slot_poll_interval must be at least 1s")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "log level %q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		add("log.format", "log format %q is not one of json, console", c.Log.Format)
	}
	if len(c.Rules) == 0 {
		add("rules", "no rules: add at least one, e.g.\n      rules:\n        - table: users\n          keys: [\"user:{id}\"]")
	}
	for i, r := range c.Rules {
		base := fmt.Sprintf("rules[%d]", i)
		if r.Table == "" {
			add(base, "rule has no table")
		} else {
			s, t := SplitTable(r.Table)
			if !identRE.MatchString(s) || !identRE.MatchString(t) {
				add(base+".table", "table %q is not a plain lower-case name or schema.name", r.Table)
			}
		}
		if len(r.Keys) == 0 && !(len(r.Actions) > 0 && slices.Equal(slices.Compact(slices.Clone(r.Actions)), []string{ActionGeneration})) {
			add(base+".keys", "rule for table %q has no keys (only a rule whose actions are [generation] may leave keys out)", r.Table)
		}
		seen := map[string]bool{}
		for j, k := range r.Keys {
			kp := fmt.Sprintf("%s.keys[%d]", base, j)
			if seen[k] {
				add(kp, "key template %q is listed twice", k)
				continue
			}
			seen[k] = true
			if _, err := mapping.ParseTemplate(k); err != nil {
				add(kp, "%s", err.Error())
			}
		}
		ps = append(ps, c.validateRuleOptions(loc, i)...)
	}
	return ps
}

// validateRuleOptions checks ops, when_changed and when of rule i, and
// compiles when.
func (c *Config) validateRuleOptions(loc locator, i int) []Problem {
	var ps []Problem
	r := &c.Rules[i]
	base := fmt.Sprintf("rules[%d]", i)
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Where: loc.where(path), Msg: fmt.Sprintf(format, args...)})
	}
	var ops mapping.OpSet
	if r.Ops != nil && len(r.Ops) == 0 {
		add(base+".ops", "ops is empty, so the rule would never invalidate anything: list some of %s, or leave ops out for all of them", mapping.OpNames)
	}
	for j, o := range r.Ops {
		op, ok := mapping.ParseOp(o)
		switch {
		case !ok:
			add(fmt.Sprintf("%s.ops[%d]", base, j), "unknown operation %q in ops: use %s", o, mapping.OpNames)
		case ops&op != 0:
			add(fmt.Sprintf("%s.ops[%d]", base, j), "operation %q is listed twice in ops", o)
		}
		ops |= op
	}
	if r.WhenChanged != nil && len(r.WhenChanged) == 0 {
		add(base+".when_changed", "when_changed is empty, so no UPDATE would invalidate anything through this rule: name columns, or leave when_changed out")
	}
	columnList(add, base, "when_changed", r.WhenChanged)
	if len(r.WhenChanged) > 0 && !ops.Has(mapping.OnUpdate) {
		add(base+".when_changed", "when_changed filters UPDATEs only, but the rule's ops %v leave out update: remove when_changed or add update to ops", r.Ops)
	}
	ps = append(ps, c.validateRuleActions(loc, i, ops)...)
	if r.When != "" {
		cond, err := mapping.CompileCondition(r.When)
		var ce *mapping.ConditionError
		switch {
		case errors.As(err, &ce):
			for _, is := range ce.Issues {
				ps = append(ps, Problem{Where: loc.whereKey(base + ".when"),
					Msg: fmt.Sprintf("when condition %q: %s (line %d, column %d of the condition)", r.When, is.Msg, is.Line, is.Column)})
			}
		case err != nil:
			ps = append(ps, Problem{Where: loc.whereKey(base + ".when"), Msg: err.Error()})
		default:
			r.cond = cond
		}
	}
	return ps
}

// columnList reports empty and repeated names in a rule's list of columns.
func columnList(add func(path, format string, args ...any), base, field string, cols []string) {
	seen := map[string]bool{}
	for j, col := range cols {
		p := fmt.Sprintf("%s.%s[%d]", base, field, j)
		switch {
		case strings.TrimSpace(col) == "":
			add(p, "%s has an empty column name", field)
		case seen[col]:
			add(p, "column %q is listed twice in %s", col, field)
		}
		seen[col] = true
	}
}

// validateRuleActions checks the actions of rule i and their options.
func (c *Config) validateRuleActions(loc locator, i int, ops mapping.OpSet) []Problem {
	var ps []Problem
	r := &c.Rules[i]
	base := fmt.Sprintf("rules[%d]", i)
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Where: loc.where(path), Msg: fmt.Sprintf(format, args...)})
	}
	if r.Actions != nil && len(r.Actions) == 0 {
		add(base+".actions", "actions is empty, so the rule would do nothing: list some of %s, or leave actions out to delete", mapping.ActionNames)
	}
	seen := map[string]bool{}
	for j, a := range r.Actions {
		p := fmt.Sprintf("%s.actions[%d]", base, j)
		switch a {
		case ActionDelete, ActionVersion, ActionPublish, ActionStream, ActionRefresh, ActionGeneration:
		default:
			add(p, "unknown action %q: use %s", a, mapping.ActionNames)
		}
		if seen[a] {
			add(p, "action %q is listed twice", a)
		}
		seen[a] = true
	}
	if r.hasAction(ActionDelete) && r.hasAction(ActionRefresh) {
		add(base+".actions", "delete and refresh are both listed: refresh writes the keys that delete would remove (and deletes them when the row goes); keep one")
	}
	// An option of an action the rule does not list is a mistake.
	needs := func(path, action string, set bool) {
		if set && !r.hasAction(action) {
			add(base+"."+path, "%s is set, but actions does not list %s: add %s to actions, or remove %s", path, action, action, path)
		}
	}
	needs("delete_command", ActionDelete, r.DeleteCommand != "")
	needs("version_key", ActionVersion, r.VersionKey != "")
	needs("version_ttl", ActionVersion, r.VersionTTL != 0)
	needs("publish_channel", ActionPublish, r.PublishChannel != "")
	needs("stream_key", ActionStream, r.StreamKey != "")
	needs("stream_maxlen", ActionStream, r.StreamMaxLen != nil)
	needs("refresh_columns", ActionRefresh, r.RefreshColumns != nil)
	needs("refresh_ttl", ActionRefresh, r.RefreshTTL != 0)
	needs("refresh_ttl_jitter", ActionRefresh, r.RefreshTTLJitter != 0)
	needs("generation_key", ActionGeneration, r.GenerationKey != "")
	switch r.DeleteCommand {
	case "", "unlink", "del":
	default:
		add(base+".delete_command", "delete_command %q is not one of unlink, del", r.DeleteCommand)
	}
	if r.VersionKey != "" {
		if err := mapping.CheckVersionKey(r.VersionKey); err != nil {
			add(base+".version_key", "%v", err)
		}
	}
	if r.VersionTTL < 0 {
		add(base+".version_ttl", "version_ttl must not be negative")
	}
	if r.VersionTTL > 0 && r.VersionTTL < time.Millisecond {
		add(base+".version_ttl", "version_ttl must be at least 1ms")
	}
	if r.StreamMaxLen != nil && *r.StreamMaxLen < 0 {
		add(base+".stream_maxlen", "stream_maxlen must not be negative (0: no cap)")
	}
	if r.RefreshTTL < 0 || (r.RefreshTTL > 0 && r.RefreshTTL < time.Millisecond) {
		add(base+".refresh_ttl", "refresh_ttl must be 0 (no TTL) or at least 1ms")
	}
	if r.RefreshTTLJitter < 0 || r.RefreshTTLJitter > 0.9 {
		add(base+".refresh_ttl_jitter", "refresh_ttl_jitter %g must be between 0 and 0.9 (a fraction of refresh_ttl)", r.RefreshTTLJitter)
	} else if r.RefreshTTLJitter > 0 && r.RefreshTTL == 0 {
		add(base+".refresh_ttl_jitter", "refresh_ttl_jitter needs refresh_ttl")
	}
	if r.RefreshColumns != nil && len(r.RefreshColumns) == 0 {
		add(base+".refresh_columns", "refresh_columns is empty: name columns, or leave it out to write every column")
	}
	columnList(add, base, "refresh_columns", r.RefreshColumns)
	switch r.OnTruncate {
	case "", "scan":
	case "generation":
		if !r.hasAction(ActionGeneration) {
			add(base+".on_truncate", "on_truncate: generation needs generation in actions")
		}
		if !ops.Has(mapping.OnTruncate) {
			add(base+".on_truncate", "on_truncate is set, but the rule's ops %v leave out truncate", r.Ops)
		}
	default:
		add(base+".on_truncate", "on_truncate %q is not one of scan, generation", r.OnTruncate)
	}
	return ps
}

// MappingRules converts the rules for the mapping package; Validate must have passed.
func (c *Config) MappingRules(file string) []mapping.Rule {
	out := make([]mapping.Rule, 0, len(c.Rules))
	for i, r := range c.Rules {
		s, t := SplitTable(r.Table)
		mr := mapping.Rule{Schema: s, Table: t, AllowStaleOldKeys: r.UnsafeAllowStaleOldKeys, Where: fmt.Sprintf("rules[%d] (table %s in %s)", i, r.Table, file)}
		for _, k := range r.Keys {
			tpl, err := mapping.ParseTemplate(k)
			if err == nil {
				mr.Templates = append(mr.Templates, tpl)
			}
		}
		for _, o := range r.Ops {
			op, _ := mapping.ParseOp(o)
			mr.Ops |= op
		}
		mr.WhenChanged = slices.Clone(r.WhenChanged)
		mr.Actions = r.mappingActions()
		mr.When = r.cond
		if mr.When == nil && r.When != "" {
			mr.When, _ = mapping.CompileCondition(r.When)
		}
		out = append(out, mr)
	}
	return out
}

// applyEnv overrides scalar options from CDC_<SECTION>_<OPTION> variables,
// e.g. CDC_POSTGRES_DSN, CDC_REDIS_ADDR, CDC_REDIS_PASSWORD, CDC_LOG_LEVEL.
func applyEnv(c *Config, env func(string) (string, bool)) []Problem {
	var ps []Problem
	v := reflect.ValueOf(c).Elem()
	for i := 0; i < v.NumField(); i++ {
		sec := v.Field(i)
		if sec.Kind() != reflect.Struct {
			continue
		}
		secName := yamlName(v.Type().Field(i))
		for j := 0; j < sec.NumField(); j++ {
			f := sec.Type().Field(j)
			name := "CDC_" + strings.ToUpper(secName+"_"+yamlName(f))
			val, ok := env(name)
			if !ok {
				continue
			}
			if err := setScalar(sec.Field(j), val); err != nil {
				ps = append(ps, Problem{Where: "env " + name, Msg: err.Error()})
			}
		}
	}
	return ps
}

// EnvNames lists every environment variable applyEnv reads.
func EnvNames() []string {
	var names []string
	t := reflect.TypeOf(Config{})
	for i := 0; i < t.NumField(); i++ {
		if t.Field(i).Type.Kind() != reflect.Struct {
			continue
		}
		sec := t.Field(i).Type
		for j := 0; j < sec.NumField(); j++ {
			names = append(names, "CDC_"+strings.ToUpper(yamlName(t.Field(i))+"_"+yamlName(sec.Field(j))))
		}
	}
	sort.Strings(names)
	return names
}

func yamlName(f reflect.StructField) string {
	n, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return n
}

func setScalar(f reflect.Value, s string) error {
	if f.Kind() == reflect.Pointer {
		nv := reflect.New(f.Type().Elem())
		if err := setScalar(nv.Elem(), s); err != nil {
			return err
		}
		f.Set(nv)
		return nil
	}
	switch {
	case f.Type() == reflect.TypeOf(time.Duration(0)):
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 10s", s)
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(s)
	case f.Kind() == reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", s)
		}
		f.SetInt(int64(n))
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		f.SetBool(b)
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}

// locator finds the line and column of a dotted path in the YAML tree.
type locator struct {
	file string
	root *yaml.Node
}

var pathRE = regexp.MustCompile(`([a-z_]+)|\[(\d+)\]`)

func (l locator) where(path string) string {
	n := l.root
	var found *yaml.Node
	for _, m := range pathRE.FindAllStringSubmatch(path, -1) {
		if n == nil {
			break
		}
		var next *yaml.Node
		if m[1] != "" && n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == m[1] {
					next = n.Content[i+1]
					if next.Kind != yaml.ScalarNode || next.Value != "" {
						found = next
					} else {
						found = n.Content[i]
					}
				}
			}
		} else if m[2] != "" && n.Kind == yaml.SequenceNode {
			idx, _ := strconv.Atoi(m[2])
			if idx < len(n.Content) {
				next = n.Content[idx]
				found = next
			}
		}
		n = next
	}
	if found == nil {
		return fmt.Sprintf("%s (%s)", l.file, path)
	}
	return fmt.Sprintf("%s:%d:%d (%s)", l.file, found.Line, found.Column, path)
}

// whereKey is like where, but for path's last element (such as
// rules[0].when) it gives the place of the mapping key, not of its value.
func (l locator) whereKey(path string) string {
	dot := strings.LastIndexByte(path, '.')
	if dot < 0 {
		return l.where(path)
	}
	parent, key := path[:dot], path[dot+1:]
	n := l.root
	for _, m := range pathRE.FindAllStringSubmatch(parent, -1) {
		var next *yaml.Node
		switch {
		case n == nil:
		case m[1] != "" && n.Kind == yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == m[1] {
					next = n.Content[i+1]
				}
			}
		case m[2] != "" && n.Kind == yaml.SequenceNode:
			if idx, _ := strconv.Atoi(m[2]); idx < len(n.Content) {
				next = n.Content[idx]
			}
		}
		n = next
	}
	if n != nil && n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Value == key {
				return fmt.Sprintf("%s:%d:%d (%s)", l.file, k.Line, k.Column, path)
			}
		}
	}
	return l.where(path)
}

// userinfoRE matches the password of a URL up to the last '@' before the
// path, as url.Parse (and so pgconn) reads it: "postgres://u:p@ss@h/db" has
// the password "p@ss".
var userinfoRE = regexp.MustCompile(`(://[^:/@\s]*:)[^/\s]*@`)

// passwordKVRE matches a keyword/value password: quoted, or unquoted where a
// backslash escapes the next character (libpq reads password=se\ cret as
// "se cret").
var passwordKVRE = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|(?:\\.|[^\s\\])+\\?)`)

// Redact removes passwords from connection strings and messages that may
// quote them.
func Redact(s string) string {
	s = userinfoRE.ReplaceAllString(s, "${1}xxxxx@")
	return passwordKVRE.ReplaceAllString(s, "${1}xxxxx")
}

// mappingActions converts the rule's actions and their options.
func (r *Rule) mappingActions() mapping.Actions {
	if len(r.Actions) == 0 && r.DeleteCommand == "" {
		return mapping.Actions{}
	}
	a := mapping.Actions{
		Delete:        r.hasAction(ActionDelete),
		DeleteCommand: r.DeleteCommand,
		Version:       r.hasAction(ActionVersion), VersionKey: r.VersionKey, VersionTTL: r.VersionTTL,
		Publish: r.hasAction(ActionPublish), PublishChannel: r.PublishChannel,
		Stream: r.hasAction(ActionStream), StreamKey: r.StreamKey, StreamMaxLen: DefaultStreamMaxLen,
		Refresh: r.hasAction(ActionRefresh), RefreshColumns: slices.Clone(r.RefreshColumns), RefreshTTL: r.RefreshTTL, RefreshJitter: r.RefreshTTLJitter,
		Generation: r.hasAction(ActionGeneration), GenerationKey: r.GenerationKey, TruncateGeneration: r.OnTruncate == "generation",
	}
	if r.StreamMaxLen != nil {
		a.StreamMaxLen = *r.StreamMaxLen
	}
	if a.Publish && a.PublishChannel == "" {
		a.PublishChannel = DefaultChannel
	}
	if a.Stream && a.StreamKey == "" {
		a.StreamKey = DefaultChannel
	}
	if a.Generation && a.GenerationKey == "" {
		s, t := SplitTable(r.Table)
		a.GenerationKey = "gen:" + t
		if s != "public" {
			a.GenerationKey = "gen:" + s + "." + t
		}
	}
	return a
}

// LeaseFenceOrDefault returns client.lease_fence with its default.
func (c Client) LeaseFenceOrDefault() time.Duration {
	if c.LeaseFence == nil {
		return 50 * time.Millisecond
	}
	return *c.LeaseFence
}
