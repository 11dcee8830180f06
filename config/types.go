// Package config loads cdcinvalidate's configuration: one typed struct, read
// from YAML (unknown fields are errors), overridden by CDC_* environment
// variables and then by flags, with defaults filled in one place and every
// problem reported at once with its place in the file.
package config

import (
	"slices"
	"strings"
	"time"

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
	Verify      Verify      `yaml:"verify"`
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
	// CatalogCheckInterval is how often, while streaming, the rule tables
	// and the publication are checked against the rules again: a table
	// dropped from the publication sends nothing more, and a partition
	// created since the start may lack the replica identity the rules
	// need; either stops the engine. Default 30s; at least 100ms.
	CatalogCheckInterval time.Duration `yaml:"catalog_check_interval"`
}

// Consistency says what to do when the engine cannot prove it saw every change.
type Consistency struct {
	// OnHistoryLost: "flush" (default) deletes every key the rules manage,
	// then streams on; "stop" exits with an error that says what happened.
	OnHistoryLost OnHistoryLost `yaml:"on_history_lost"`
	// OnFirstStart: "flush" (default) deletes every managed key when the
	// slot is created, since cached values may predate it; "keep" trusts them.
	OnFirstStart OnFirstStart `yaml:"on_first_start"`
}

// Redis is where keys are invalidated.
type Redis struct {
	// Addr is host:port of a standalone Redis. Env: CDC_REDIS_ADDR.
	Addr string `yaml:"addr"`
	// Addrs lists host:port of several servers: the seed nodes of a Redis
	// Cluster (with Cluster), or the sentinels (with MasterName). Env:
	// CDC_REDIS_ADDRS, comma-separated.
	Addrs []string `yaml:"addrs"`
	// Cluster speaks the Redis Cluster protocol to the nodes of Addrs.
	// Default false.
	Cluster bool `yaml:"cluster"`
	// MasterName is the name of the master the sentinels of Addrs monitor:
	// the engine asks them for the master and follows its failovers.
	MasterName string `yaml:"master_name"`
	// SentinelUsername and SentinelPassword authenticate to the sentinels
	// (when they require it; Username and Password are for the servers).
	// Env: CDC_REDIS_SENTINEL_USERNAME, CDC_REDIS_SENTINEL_PASSWORD.
	SentinelUsername string `yaml:"sentinel_username"`
	SentinelPassword string `yaml:"sentinel_password"`
	// WaitReplicas, when above 0, sends WAIT WaitReplicas after every
	// batch, on the connection that wrote it, and confirms the batch to
	// PostgreSQL only once that many replicas acknowledged it (retrying
	// the batch, which is idempotent, until they do): durability over
	// latency. On a Redis Cluster, every master gets a write and WAIT on
	// one connection after every batch. Default 0.
	WaitReplicas int `yaml:"wait_replicas"`
	// WaitTimeout bounds one WAIT. Default 1s.
	WaitTimeout time.Duration `yaml:"wait_timeout"`
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

// Topology names how Redis is deployed: "standalone", "cluster" or
// "sentinel".
func (r Redis) Topology() string {
	switch {
	case r.Cluster:
		return "cluster"
	case r.MasterName != "":
		return "sentinel"
	}
	return "standalone"
}

// Servers lists the configured addresses: Addr, or Addrs.
func (r Redis) Servers() []string {
	if r.Addr != "" {
		return []string{r.Addr}
	}
	return r.Addrs
}

// Describe names the topology and its addresses for messages, e.g.
// "cluster 10.0.0.1:7000,10.0.0.2:7000" or "127.0.0.1:6379".
func (r Redis) Describe() string {
	addrs := strings.Join(r.Servers(), ",")
	switch r.Topology() {
	case "cluster":
		return "cluster " + addrs
	case "sentinel":
		return "sentinel master " + r.MasterName + " via " + addrs
	}
	return addrs
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
	DeleteCommand DeleteCommand `yaml:"delete_command"`
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
	OnTruncate OnTruncate `yaml:"on_truncate"`

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
	DeleteCommand DeleteCommand `yaml:"delete_command"`
	// MaxBatchKeys bounds the keys of one Redis pipeline. Default 10000.
	MaxBatchKeys int `yaml:"max_batch_keys"`
	// ScanCount is the COUNT hint for TRUNCATE's SCAN. Default 1000.
	ScanCount int `yaml:"scan_count"`
	// MaxBackoff caps the wait between Redis retries. Default 5s.
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// MaxKeyBytes is the key length beyond which a key is logged and
	// counted (a template over a huge value). Default 65536.
	MaxKeyBytes int `yaml:"max_key_bytes"`
	// MaxInFlight is how many pipelines of plain deletes may be in flight
	// at once when their keys differ (a fresh commit need not wait for
	// the round trip of the batch ahead of it); 1 sends each after the one
	// before was answered. Default 1 (see docs/benchmarks.md for when more
	// pays).
	MaxInFlight int `yaml:"max_in_flight"`
	// OnLongKey is what happens to a key longer than MaxKeyBytes: "send"
	// (default: it is invalidated all the same) or "stop" (the engine stops
	// with an error). A key is never skipped.
	OnLongKey OnLongKey `yaml:"on_long_key"`
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
	Level LogLevel `yaml:"level"`
	// Format is json (default) or console. Env: CDC_LOG_FORMAT.
	Format LogFormat `yaml:"format"`
}

// StreamingEnabled reports whether in-progress streaming is on.
func (p Postgres) StreamingEnabled() bool { return p.Streaming == nil || *p.Streaming }
