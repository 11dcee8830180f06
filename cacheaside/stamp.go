package cacheaside

import "encoding/binary"

// A stamped value is the cached value behind a header that tells the
// engine's consistency verifier when its load began, by the engine's
// applied watermark (an LSN, 8 bytes big endian) read before the load.
// The verifier compares it with the commit LSNs of the invalidations the
// key saw: a fill whose load began after an invalidation was applied is
// provably fresh. A load that began before is stale only if something
// proves it read the row before the commit, which the watermark alone
// cannot (the engine applies a delete some time after its commit):
//
//   - "\x00cdc\x01" + watermark (AppendStamp): nothing more; such a fill
//     is never proven stale.
//   - "\x00cdc\x02" + watermark (AppendLeaseStamp): filled under a lease
//     taken before the watermark was read, as this library fills. With
//     the engine's client.leases, an invalidation fences or deletes the
//     lease, so such a fill stamped below the watermark the engine had
//     before an invalidation cannot survive it: if it did, the
//     invalidation did not take effect.
//   - "\x00cdc\x03" + watermark + the server's WAL insert position read
//     after the load's snapshot (AppendLoadStamp): a fill whose snapshot
//     was taken before the commit record existed is provably older than
//     that commit, lease or not.
//
// Get unwraps stamped values whether or not Options.StampKey is set, so
// stamping can be turned on and off.
const (
	stampMagic      = "\x00cdc\x01"
	leaseStampMagic = "\x00cdc\x02"
	loadStampMagic  = "\x00cdc\x03"
)

// stampLen is the length of a stamp header ("\x00cdc\x01" or "\x02");
// loadStampLen of a "\x00cdc\x03" one.
const (
	stampLen     = len(stampMagic) + 8
	loadStampLen = stampLen + 8
)

// Stamp is what a stamp header says about a fill.
type Stamp struct {
	// Watermark is the engine's applied watermark read before the load.
	Watermark uint64
	// Leased: filled under a lease taken before Watermark was read.
	Leased bool
	// LoadedBefore, when not 0, is a WAL position read after the load's
	// snapshot was taken: no commit at or above it is in the value.
	LoadedBefore uint64
}

// AppendStamp appends val behind a stamp header holding lsn, the
// watermark read before the load.
func AppendStamp(dst []byte, lsn uint64, val []byte) []byte {
	dst = append(dst, stampMagic...)
	dst = binary.BigEndian.AppendUint64(dst, lsn)
	return append(dst, val...)
}

// AppendLeaseStamp is AppendStamp for a fill made under a lease that the
// engine fences (client.leases), taken before the watermark lsn was read:
// the library's own fills. Only such fills are proven stale by their
// watermark alone.
func AppendLeaseStamp(dst []byte, lsn uint64, val []byte) []byte {
	dst = append(dst, leaseStampMagic...)
	dst = binary.BigEndian.AppendUint64(dst, lsn)
	return append(dst, val...)
}

// AppendLoadStamp is AppendStamp with a bound on the load's snapshot:
// loadedBefore is the server's WAL insert position read after the load's
// snapshot was taken (pg_current_wal_insert_lsn() in the same statement
// or a later one of the same session; pg_last_wal_replay_lsn() on a
// standby). A commit at or above it is not in the value, so a fill that
// survived the invalidation of such a commit is provably stale.
func AppendLoadStamp(dst []byte, lsn, loadedBefore uint64, val []byte) []byte {
	dst = append(dst, loadStampMagic...)
	dst = binary.BigEndian.AppendUint64(dst, lsn)
	dst = binary.BigEndian.AppendUint64(dst, loadedBefore)
	return append(dst, val...)
}

// ParseStamp splits a stamped value into its stamp's watermark and the
// cached value; ok is false for a value without a stamp (returned whole
// as val).
func ParseStamp(v []byte) (lsn uint64, val []byte, ok bool) {
	s, val, ok := ParseStampInfo(v)
	return s.Watermark, val, ok
}

// ParseStampInfo splits a stamped value into its stamp and the cached
// value; ok is false for a value without a stamp (returned whole as val).
func ParseStampInfo(v []byte) (s Stamp, val []byte, ok bool) {
	if len(v) < stampLen {
		return Stamp{}, v, false
	}
	switch string(v[:len(stampMagic)]) {
	case stampMagic:
	case leaseStampMagic:
		s.Leased = true
	case loadStampMagic:
		if len(v) < loadStampLen {
			return Stamp{}, v, false
		}
		s.LoadedBefore = binary.BigEndian.Uint64(v[stampLen:loadStampLen])
		s.Watermark = binary.BigEndian.Uint64(v[len(stampMagic):stampLen])
		return s, v[loadStampLen:], true
	default:
		return Stamp{}, v, false
	}
	s.Watermark = binary.BigEndian.Uint64(v[len(stampMagic):stampLen])
	return s, v[stampLen:], true
}
