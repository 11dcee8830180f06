package cacheaside

import (
	"encoding/binary"
	"strings"
)

// A stamped value is the cached value behind a 13-byte header: the magic
// "\x00cdc\x01" and the engine's applied watermark (an LSN, 8 bytes big
// endian) read when the fill's lease was taken, before the load. The
// engine's consistency verifier compares it with the commit LSNs of the
// invalidations the key saw: a fill whose load began after an invalidation
// was applied is provably fresh, one whose load began before it and that
// survived it is the stale-set race. Get unwraps stamped values whether or
// not Options.StampKey is set, so stamping can be turned on and off.
const stampMagic = "\x00cdc\x01"

// stampLen is the length of a stamp header.
const stampLen = len(stampMagic) + 8

// AppendStamp appends val behind a stamp header holding lsn.
func AppendStamp(dst []byte, lsn uint64, val []byte) []byte {
	dst = append(dst, stampMagic...)
	dst = binary.BigEndian.AppendUint64(dst, lsn)
	return append(dst, val...)
}

// ParseStamp splits a stamped value into its stamp and the cached value;
// ok is false for a value without a stamp (returned whole as val).
func ParseStamp(v []byte) (lsn uint64, val []byte, ok bool) {
	if len(v) < stampLen || !strings.HasPrefix(string(v[:len(stampMagic)]), stampMagic) {
		return 0, v, false
	}
	return binary.BigEndian.Uint64(v[len(stampMagic):stampLen]), v[stampLen:], true
}
