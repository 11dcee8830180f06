package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// Options that take one of a few words are typed, so the engine and the
// command switch on constants, not on spellings. The spellings are the YAML
// and environment values; validate checks them all through oneOf.

// OnHistoryLost is consistency.on_history_lost.
type OnHistoryLost string

const (
	// HistoryLostFlush deletes every key the rules manage, then streams on.
	HistoryLostFlush OnHistoryLost = "flush"
	// HistoryLostStop exits with an error that says what happened.
	HistoryLostStop OnHistoryLost = "stop"
)

// OnFirstStart is consistency.on_first_start.
type OnFirstStart string

const (
	// FirstStartFlush deletes every managed key when the slot is created.
	FirstStartFlush OnFirstStart = "flush"
	// FirstStartKeep trusts the cached values.
	FirstStartKeep OnFirstStart = "keep"
)

// DeleteCommand is sink.delete_command and a rule's delete_command.
type DeleteCommand string

const (
	DeleteUnlink DeleteCommand = "unlink"
	DeleteDel    DeleteCommand = "del"
)

// ActionKind returns the replication action that deletes with the command;
// 0 for "" (a rule that keeps the sink's command).
func (d DeleteCommand) ActionKind() replication.ActionKind {
	switch d {
	case DeleteUnlink:
		return replication.ActUnlink
	case DeleteDel:
		return replication.ActDel
	}
	return 0
}

// OnTruncate is a rule's on_truncate.
type OnTruncate string

const (
	// TruncateScan deletes the rule's keys with SCAN + UNLINK.
	TruncateScan OnTruncate = "scan"
	// TruncateGeneration only increments the rule's generation key.
	TruncateGeneration OnTruncate = "generation"
)

// OnLongKey is sink.on_long_key: what happens to a key longer than
// sink.max_key_bytes. A key is never skipped.
type OnLongKey string

const (
	// LongKeySend invalidates it all the same, logs and counts it.
	LongKeySend OnLongKey = "send"
	// LongKeyStop stops the engine with an error before its batch is sent.
	LongKeyStop OnLongKey = "stop"
)

// LogLevel is log.level.
type LogLevel string

const (
	LogDebug LogLevel = "debug"
	LogInfo  LogLevel = "info"
	LogWarn  LogLevel = "warn"
	LogError LogLevel = "error"
)

// LogFormat is log.format.
type LogFormat string

const (
	LogJSON    LogFormat = "json"
	LogConsole LogFormat = "console"
)

// The accepted spellings of each option, in the order messages list them.
var (
	onHistoryLostValues = []OnHistoryLost{HistoryLostFlush, HistoryLostStop}
	onFirstStartValues  = []OnFirstStart{FirstStartFlush, FirstStartKeep}
	deleteCommandValues = []DeleteCommand{DeleteUnlink, DeleteDel}
	onLongKeyValues     = []OnLongKey{LongKeySend, LongKeyStop}
	onTruncateValues    = []OnTruncate{TruncateScan, TruncateGeneration}
	logLevelValues      = []LogLevel{LogDebug, LogInfo, LogWarn, LogError}
	logFormatValues     = []LogFormat{LogJSON, LogConsole}
)

// oneOf returns "" when v is one of values, else a message naming what is
// accepted, such as `on_history_lost "x" is not one of flush, stop`.
func oneOf[T ~string](label string, v T, values []T) string {
	if slices.Contains(values, v) {
		return ""
	}
	words := make([]string, len(values))
	for i, w := range values {
		words[i] = string(w)
	}
	return fmt.Sprintf("%s %q is not one of %s", label, v, strings.Join(words, ", "))
}
