package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a PostgreSQL WAL position.
type LSN = pglogrepl.LSN

// Column is one column of a published relation, as the Relation message describes it.
type Column struct {
	Name    string
	Key     bool // part of the replica identity
	TypeOID uint32
}

// Relation describes a published table. pgoutput sends it before the first
// change of the table in a session and again after its definition changed.
type Relation struct {
	ID              uint32
	Namespace       string
	Name            string
	ReplicaIdentity byte // 'd' default, 'n' nothing, 'f' full, 'i' index
	Columns         []Column
}

// QualifiedName returns "schema.table".
func (r *Relation) QualifiedName() string { return r.Namespace + "." + r.Name }

// Kinds of a tuple value, as pgoutput encodes them.
const (
	ValueNull      byte = 'n'
	ValueUnchanged byte = 'u' // unchanged TOASTed value: not sent, take it from the old row
	ValueText      byte = 't'
	ValueBinary    byte = 'b'
)

// Value is one column value of a tuple. Data points into the receive buffer
// and is valid only while the change is being handled.
type Value struct {
	Kind byte
	Data []byte
}

// Tuple is a row image.
type Tuple struct {
	Values []Value
}

// Op is the kind of a row change.
type Op byte

// Row change kinds.
const (
	OpInsert Op = 'I'
	OpUpdate Op = 'U'
	OpDelete Op = 'D'
)

func (o Op) String() string {
	switch o {
	case OpInsert:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	}
	return fmt.Sprintf("op(%q)", byte(o))
}

// Change is one decoded row change. Old is set (HasOld) for deletes and for
// updates that carry an old image: OldKind 'K' (replica identity columns
// only, others are null) or 'O' (the whole old row, REPLICA IDENTITY FULL).
// An update without an old image did not change its replica identity.
type Change struct {
	Op      Op
	Rel     *Relation
	HasOld  bool
	OldKind byte
	Old     Tuple
	New     Tuple
}

// message kinds of the pgoutput protocol
// (https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html).
const (
	msgBegin        = 'B'
	msgMessage      = 'M'
	msgCommit       = 'C'
	msgOrigin       = 'O'
	msgRelation     = 'R'
	msgType         = 'Y'
	msgInsert       = 'I'
	msgUpdate       = 'U'
	msgDelete       = 'D'
	msgTruncate     = 'T'
	msgStreamStart  = 'S'
	msgStreamStop   = 'E'
	msgStreamCommit = 'c'
	msgStreamAbort  = 'A'
)

// ErrMalformed is wrapped by every decode error: the server sent bytes this
// decoder does not understand. It is never retried silently.
var ErrMalformed = errors.New("malformed pgoutput message")

// message is the decoded form of one pgoutput message. The decoder reuses
// one message value and its tuple slices, so nothing in it may be kept after
// the next decode call (Relation messages are the exception: decode
// allocates a new *Relation for each).
type message struct {
	kind byte
	xid  uint32 // Begin, stream messages, and in-stream changes
	// subXid is the subtransaction of a StreamAbort.
	subXid       uint32
	lsn          LSN // Begin: final LSN; Commit/StreamCommit: commit LSN; Message: its LSN
	endLSN       LSN // Commit/StreamCommit: end of the transaction
	time         time.Time
	firstSegment bool

	relID    uint32
	relation *Relation

	oldKind byte
	old     Tuple
	new     Tuple

	truncRelIDs  []uint32
	truncOptions byte

	transactional bool
	prefix        string
	content       []byte
}

// decoder decodes pgoutput messages with bounds checks on every field; it
// never panics on input.
type decoder struct {
	m   message
	buf []byte
	pos int
	err error
}

// pgEpoch is 2000-01-01, the origin of PostgreSQL timestamps.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %q message: %s at byte %d of %d", ErrMalformed, d.m.kind, what, d.pos, len(d.buf))
	}
}

func (d *decoder) u8(what string) byte {
	if d.err != nil || d.pos+1 > len(d.buf) {
		d.fail("short " + what)
		return 0
	}
	v := d.buf[d.pos]
	d.pos++
	return v
}

func (d *decoder) u16(what string) uint16 {
	if d.err != nil || d.pos+2 > len(d.buf) {
		d.fail("short " + what)
		return 0
	}
	v := binary.BigEndian.Uint16(d.buf[d.pos:])
	d.pos += 2
	return v
}

func (d *decoder) u32(what string) uint32 {
	if d.err != nil || d.pos+4 > len(d.buf) {
		d.fail("short " + what)
		return 0
	}
	v := binary.BigEndian.Uint32(d.buf[d.pos:])
	d.pos += 4
	return v
}

func (d *decoder) u64(what string) uint64 {
	if d.err != nil || d.pos+8 > len(d.buf) {
		d.fail("short " + what)
		return 0
	}
	v := binary.BigEndian.Uint64(d.buf[d.pos:])
	d.pos += 8
	return v
}

func (d *decoder) timestamp(what string) time.Time {
	us := int64(d.u64(what))
	return pgEpoch.Add(time.Duration(us) * time.Microsecond)
}

func (d *decoder) bytes(n int, what string) []byte {
	if d.err != nil || n < 0 || d.pos+n > len(d.buf) {
		d.fail("short " + what)
		return nil
	}
	v := d.buf[d.pos : d.pos+n : d.pos+n]
	d.pos += n
	return v
}

// cstring reads a NUL-terminated string.
func (d *decoder) cstring(what string) string {
	if d.err != nil {
		return ""
	}
	for i := d.pos; i < len(d.buf); i++ {
		if d.buf[i] == 0 {
			s := string(d.buf[d.pos:i])
			d.pos = i + 1
			return s
		}
	}
	d.fail("unterminated " + what)
	return ""
}

// tupleWhat names a tuple's fields in errors. The names are built once,
// not per column value: a string built per value was the decoder's main
// cost on wide rows.
type tupleWhat struct{ name, count, kind, length, value string }

func tupleNames(name string) tupleWhat {
	return tupleWhat{name: name, count: name + " column count", kind: name + " value kind",
		length: name + " value length", value: name + " value"}
}

var (
	newTuple = tupleNames("new tuple")
	oldTuple = tupleNames("old tuple")
)

func (d *decoder) tuple(t *Tuple, w *tupleWhat) {
	n := int(d.u16(w.count))
	if d.err != nil {
		return
	}
	// Every column takes at least one byte; reject counts the buffer cannot hold
	// before allocating for them.
	if n > len(d.buf)-d.pos {
		d.fail(w.name + " column count larger than the message")
		return
	}
	if cap(t.Values) < n {
		t.Values = make([]Value, n)
	}
	t.Values = t.Values[:n]
	for i := 0; i < n; i++ {
		k := d.u8(w.kind)
		if d.err != nil {
			return
		}
		switch k {
		case ValueNull, ValueUnchanged:
			t.Values[i] = Value{Kind: k}
		case ValueText, ValueBinary:
			l := d.u32(w.length)
			if d.err == nil && l > uint32(len(d.buf)) {
				d.fail(w.name + " value length larger than the message")
			}
			if d.err != nil {
				return
			}
			t.Values[i] = Value{Kind: k, Data: d.bytes(int(l), w.value)}
		default:
			d.fail(fmt.Sprintf("unknown %s value kind %q", w.name, k))
			return
		}
	}
}

// decode decodes one pgoutput message. inStream says whether the message
// arrived between Stream Start and Stream Stop, where changes carry an xid.
func (d *decoder) decode(data []byte, inStream bool) (*message, error) {
	d.buf, d.pos, d.err = data, 0, nil
	m := &d.m
	m.kind = 0
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty message", ErrMalformed)
	}
	m.kind = d.u8("kind")
	m.xid = 0
	streamXid := func() {
		if inStream {
			m.xid = d.u32("xid")
		}
	}
	switch m.kind {
	case msgBegin:
		m.lsn = LSN(d.u64("final lsn"))
		m.time = d.timestamp("commit time")
		m.xid = d.u32("xid")
	case msgCommit:
		_ = d.u8("flags")
		m.lsn = LSN(d.u64("commit lsn"))
		m.endLSN = LSN(d.u64("end lsn"))
		m.time = d.timestamp("commit time")
	case msgOrigin:
		m.lsn = LSN(d.u64("origin lsn"))
		m.prefix = d.cstring("origin name")
	case msgMessage:
		streamXid()
		flags := d.u8("flags")
		m.transactional = flags&1 == 1
		m.lsn = LSN(d.u64("lsn"))
		m.prefix = d.cstring("prefix")
		n := d.u32("content length")
		if n > uint32(len(data)) {
			d.fail("content length larger than the message")
			break
		}
		m.content = d.bytes(int(n), "content")
	case msgRelation:
		streamXid()
		r := &Relation{}
		r.ID = d.u32("relation id")
		r.Namespace = d.cstring("namespace")
		r.Name = d.cstring("relation name")
		r.ReplicaIdentity = d.u8("replica identity")
		n := int(d.u16("column count"))
		if d.err == nil && n > len(data)-d.pos {
			d.fail("column count larger than the message")
			break
		}
		r.Columns = make([]Column, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			flags := d.u8("column flags")
			name := d.cstring("column name")
			typ := d.u32("column type")
			_ = d.u32("column type modifier")
			r.Columns = append(r.Columns, Column{Name: name, Key: flags&1 == 1, TypeOID: typ})
		}
		m.relID = r.ID
		m.relation = r
	case msgType:
		streamXid()
		_ = d.u32("type oid")
		_ = d.cstring("type namespace")
		_ = d.cstring("type name")
	case msgInsert:
		streamXid()
		m.relID = d.u32("relation id")
		if k := d.u8("tuple marker"); d.err == nil && k != 'N' {
			d.fail(fmt.Sprintf("insert tuple marker %q, want 'N'", k))
			break
		}
		m.oldKind = 0
		d.tuple(&m.new, &newTuple)
	case msgUpdate:
		streamXid()
		m.relID = d.u32("relation id")
		m.oldKind = 0
		k := d.u8("tuple marker")
		if k == 'K' || k == 'O' {
			m.oldKind = k
			d.tuple(&m.old, &oldTuple)
			k = d.u8("tuple marker")
		}
		if d.err == nil && k != 'N' {
			d.fail(fmt.Sprintf("update tuple marker %q, want 'N'", k))
			break
		}
		d.tuple(&m.new, &newTuple)
	case msgDelete:
		streamXid()
		m.relID = d.u32("relation id")
		k := d.u8("tuple marker")
		if d.err == nil && k != 'K' && k != 'O' {
			d.fail(fmt.Sprintf("delete tuple marker %q, want 'K' or 'O'", k))
			break
		}
		m.oldKind = k
		d.tuple(&m.old, &oldTuple)
	case msgTruncate:
		streamXid()
		n := d.u32("relation count")
		m.truncOptions = d.u8("options")
		if d.err == nil && uint64(n)*4 > uint64(len(data)-d.pos) {
			d.fail("relation count larger than the message")
			break
		}
		m.truncRelIDs = m.truncRelIDs[:0]
		for i := uint32(0); i < n && d.err == nil; i++ {
			m.truncRelIDs = append(m.truncRelIDs, d.u32("relation id"))
		}
	case msgStreamStart:
		m.xid = d.u32("xid")
		m.firstSegment = d.u8("first segment") == 1
	case msgStreamStop:
	case msgStreamCommit:
		m.xid = d.u32("xid")
		_ = d.u8("flags")
		m.lsn = LSN(d.u64("commit lsn"))
		m.endLSN = LSN(d.u64("end lsn"))
		m.time = d.timestamp("commit time")
	case msgStreamAbort:
		m.xid = d.u32("xid")
		m.subXid = d.u32("subxid")
		// Protocol version 4 adds abort LSN and time; they are not needed.
	default:
		return nil, fmt.Errorf("%w: unknown message kind %q", ErrMalformed, m.kind)
	}
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}
