package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
	"unsafe"
)

// ActionKind says what an Action asks of Redis.
type ActionKind uint8

// Action kinds. Plain deletes with the sink's default command travel as
// Event.Keys, or as ActDelete actions where their place among the other
// actions matters; everything else is an Action.
const (
	// ActUnlink deletes Key with UNLINK.
	ActUnlink ActionKind = iota + 1
	// ActDel deletes Key with DEL.
	ActDel
	// ActVersion raises the version key Key to the transaction's commit
	// LSN, never lowering it; TTL, when set, is renewed.
	ActVersion
	// ActPublish announces Key (of Table, changed by Op) in one JSON
	// message per transaction on channel Target.
	ActPublish
	// ActStream appends the same event to the Redis Stream Target
	// (MAXLEN ~ MaxLen when MaxLen > 0).
	ActStream
	// ActSet sets Key to Value (the row as JSON), with TTL less up to
	// Jitter (a fraction) of it.
	ActSet
	// ActIncr increments the generation key Key.
	ActIncr
	// ActDelete deletes Key with the sink's command, as Event.Keys do, at
	// its place among the actions: the mapper sends plain deletes so when
	// rules refresh keys (and explicit invalidations always), so that a
	// refresh and a delete of one key in one transaction end in statement
	// order.
	ActDelete

	actLast = ActDelete
)

func (k ActionKind) String() string {
	switch k {
	case ActUnlink:
		return "unlink"
	case ActDel:
		return "del"
	case ActVersion:
		return "version"
	case ActPublish:
		return "publish"
	case ActStream:
		return "stream"
	case ActSet:
		return "refresh"
	case ActIncr:
		return "generation"
	case ActDelete:
		return "delete"
	}
	return fmt.Sprintf("action(%d)", uint8(k))
}

// Action is one thing a change asks of Redis besides a plain delete. All
// actions are idempotent under replay, or (ActPublish, ActIncr) harmless
// when repeated.
type Action struct {
	Kind   ActionKind
	Op     Op     // the row change (0 for TRUNCATE)
	Key    string // the cache key, version key or generation key
	Target string // channel (ActPublish) or stream key (ActStream)
	Table  string // schema.table, for ActPublish and ActStream
	Value  string // ActSet: the row as JSON
	TTL    time.Duration
	Jitter float64 // ActSet: fraction of TTL taken off at random
	MaxLen int64   // ActStream: approximate length cap; 0 means none
	// Stamp, on ActUnlink and ActDel, records the delete as the key's
	// latest change (the refresh action's deletes): an older refresh of the
	// key, from an instance that lost the slot and woke up late, is then
	// refused. ActSet always records its commit LSN.
	Stamp bool
}

// stampBit marks Stamp in the kind byte of a spilled action.
const stampBit = 0x80

// appendAction encodes a for a spill file.
func appendAction(dst []byte, a *Action) []byte {
	kind := byte(a.Kind)
	if a.Stamp {
		kind |= stampBit
	}
	dst = append(dst, kind, byte(a.Op))
	for _, s := range [...]string{a.Key, a.Target, a.Table, a.Value} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	dst = binary.AppendVarint(dst, int64(a.TTL))
	dst = binary.BigEndian.AppendUint64(dst, math.Float64bits(a.Jitter))
	return binary.AppendVarint(dst, a.MaxLen)
}

var errBadAction = errors.New("malformed action record")

// parseAction decodes what appendAction wrote. The action's strings are
// substrings of s: a record read back from a transaction buffer is copied
// once (into s), not once more per field; a refreshed row's JSON is most
// of it.
func parseAction(s string) (Action, error) {
	var a Action
	if len(s) < 2 {
		return a, errBadAction
	}
	a.Kind, a.Op, a.Stamp = ActionKind(s[0]&^stampBit), Op(s[1]), s[0]&stampBit != 0
	if a.Kind == 0 || a.Kind > actLast {
		return a, errBadAction
	}
	s = s[2:]
	for _, p := range [...]*string{&a.Key, &a.Target, &a.Table, &a.Value} {
		n, w := uvarint(s)
		if w <= 0 || n > uint64(len(s)-w) {
			return a, errBadAction
		}
		*p = s[w : w+int(n)]
		s = s[w+int(n):]
	}
	ttl, w := varint(s)
	if w <= 0 || len(s)-w < 8 {
		return a, errBadAction
	}
	a.TTL = time.Duration(ttl)
	s = s[w:]
	a.Jitter = math.Float64frombits(binary.BigEndian.Uint64(bytesOf(s[:8])))
	s = s[8:]
	ml, w := varint(s)
	if w <= 0 || w != len(s) {
		return a, errBadAction
	}
	a.MaxLen = ml
	return a, nil
}

// uvarint is binary.Uvarint over a string, without copying it.
func uvarint(s string) (uint64, int) { return binary.Uvarint(bytesOf(s)) }

// varint is binary.Varint over a string, without copying it.
func varint(s string) (int64, int) { return binary.Varint(bytesOf(s)) }

// bytesOf views s as bytes, for reading only.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
