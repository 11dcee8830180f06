// Package defaults holds every default value of cdcinvalidate, as named
// constants in one place. The config package fills a configuration's
// missing options with them; replication.New and sink.New fill a zero
// field of their Config with the same constants, so a component built
// directly (tests, benchmarks) behaves as the daemon does.
//
// It imports nothing, so every package can use it: replication and sink
// cannot import config (config imports mapping, which imports replication).
// The documented defaults (docs/configuration.md and the JSON Schema
// config/cdcinvalidate.schema.json) are checked against what the loader
// fills in by config/defaults_test.go.
package defaults

import "time"

// postgres section.
const (
	Slot              = "cdcinvalidate"
	Publication       = "cdcinvalidate"
	StatusInterval    = 10 * time.Second
	TxnBufferMB       = 64
	PostgresBackoff   = 10 * time.Second // postgres.max_backoff
	StandbyRetry      = time.Second
	WarnRetainedWALMB = 4096
	// CatalogCheckInterval is postgres.catalog_check_interval.
	CatalogCheckInterval = 30 * time.Second
)

// consistency section (spellings of config.OnHistoryLost and OnFirstStart).
const (
	OnHistoryLost = "flush"
	OnFirstStart  = "flush"
)

// redis section.
const (
	DialTimeout  = 5 * time.Second
	ReadTimeout  = 10 * time.Second
	WriteTimeout = 10 * time.Second
	// WaitTimeout bounds one WAIT of redis.wait_replicas.
	WaitTimeout = time.Second
)

// sink section.
const (
	DeleteCommand = "unlink" // spelling of config.DeleteCommand
	MaxBatchKeys  = 10000
	MaxInFlight   = 1 // sink.max_in_flight
	ScanCount     = 1000
	MaxKeyBytes   = 64 << 10
	OnLongKey     = "send"          // spelling of config.OnLongKey
	SinkBackoff   = 5 * time.Second // sink.max_backoff
)

// client section.
const LeaseFence = 50 * time.Millisecond

// metrics section.
const (
	ReadyMaxLag      = 30 * time.Second
	SlotPollInterval = 15 * time.Second
)

// verify section (the windows are config.DefaultVerifyWindows: a slice
// cannot be a constant).
const (
	VerifySampleRate     = 1000
	VerifyMaxPending     = 10000
	VerifyReportInterval = 10 * time.Second
)

// log section (spellings of config.LogLevel and LogFormat).
const (
	LogLevel  = "info"
	LogFormat = "json"
)

// Rule options.
const (
	// Channel is the publish channel and the stream key of a rule.
	Channel = "cdcinvalidate:changes"
	// VersionKey names a key's version key, {key} standing for the key.
	VersionKey = "{key}:v"
	// StreamMaxLen caps a rule's stream (MAXLEN ~).
	StreamMaxLen = 100000
)

// Internal tunables: not configuration options, used by the components
// themselves.
const (
	// MinBackoff is the first wait between reconnects (replication) and
	// between Redis retries (sink).
	MinBackoff = 100 * time.Millisecond
	// ChunkKeys is how many keys of one transaction go into one event.
	ChunkKeys = 2048
	// ChunkBytes bounds the bytes of one such event (keys and actions,
	// refreshed rows included).
	ChunkBytes = 128 << 10
	// QueueEvents is how many events the stream hands ahead of the sink
	// (many small transactions queue while a pipeline is out), and
	// QueueBytes bounds their bytes (large ones do not pile up).
	QueueEvents = 1024
	QueueBytes  = 4 << 20
	// MaxBatchBytes bounds the bytes of the events one Redis pipeline
	// gathers (sink.max_batch_keys bounds their count).
	MaxBatchBytes = 4 << 20
	// ShutdownWait is how long the stream waits at shutdown for the sink to
	// apply what was handed over.
	ShutdownWait = 5 * time.Second
	// KeysPerCommand is how many keys one UNLINK or DEL carries.
	KeysPerCommand = 256
	// GatherWait is how long a batch waits for more events while the
	// engine catches up on a backlog.
	GatherWait = 2 * time.Millisecond
	// EscalateAfter is how long a Redis operation, the replication
	// connection or a start-up connection may keep failing before it is
	// logged as an error and counted as stalled (retrying goes on).
	EscalateAfter = time.Minute
	// SoftMemoryHeadroom is what the garbage collector's soft limit
	// (GOMEMLIMIT, unless set) allows above postgres.txn_buffer_mb.
	SoftMemoryHeadroom = 32 << 20
)
