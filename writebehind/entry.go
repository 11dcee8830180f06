package writebehind

import (
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"time"
)

// streamID is a Redis stream entry ID, ms-seq.
type streamID struct{ ms, seq uint64 }

func parseStreamID(s string) (streamID, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return streamID{}, fmt.Errorf("stream id %q: want MS-SEQ", s)
	}
	ms, err := strconv.ParseUint(a, 10, 64)
	if err != nil {
		return streamID{}, fmt.Errorf("stream id %q: %w", s, err)
	}
	seq, err := strconv.ParseUint(b, 10, 64)
	if err != nil {
		return streamID{}, fmt.Errorf("stream id %q: %w", s, err)
	}
	return streamID{ms, seq}, nil
}

func (id streamID) String() string {
	return strconv.FormatUint(id.ms, 10) + "-" + strconv.FormatUint(id.seq, 10)
}

func (id streamID) less(o streamID) bool {
	return id.ms < o.ms || (id.ms == o.ms && id.seq < o.seq)
}

// time is when Redis created the entry (its ID's milliseconds).
func (id streamID) time() time.Time { return time.UnixMilli(int64(id.ms)) }

// entry is one stream entry: the ops of one Incr, Set or Apply, in order.
type entry struct {
	id  streamID
	ops []rawOp
	// deleted: the stream no longer has the entry (it was trimmed while
	// still pending); it has no ops.
	deleted bool
}

type rawOp struct{ key, value string }

// parseEntries parses a list of entries as XREADGROUP and XAUTOCLAIM
// return them: [[id, [k1, v1, k2, v2, ...]], ...]. An entry whose fields
// are nil was deleted from the stream while pending.
func parseEntries(v any) ([]entry, error) {
	list, ok := v.([]any)
	if !ok {
		if v == nil {
			return nil, nil
		}
		return nil, fmt.Errorf("stream entries: unexpected %T", v)
	}
	out := make([]entry, 0, len(list))
	for _, it := range list {
		pair, ok := it.([]any)
		if !ok || len(pair) != 2 {
			return nil, fmt.Errorf("stream entry: unexpected %v", it)
		}
		idStr, ok := pair[0].(string)
		if !ok {
			return nil, fmt.Errorf("stream entry id: unexpected %T", pair[0])
		}
		id, err := parseStreamID(idStr)
		if err != nil {
			return nil, err
		}
		e := entry{id: id}
		switch f := pair[1].(type) {
		case nil:
			e.deleted = true
		case []any:
			if len(f)%2 != 0 {
				return nil, fmt.Errorf("stream entry %s: odd number of fields", idStr)
			}
			e.ops = make([]rawOp, 0, len(f)/2)
			for i := 0; i < len(f); i += 2 {
				k, ok1 := f[i].(string)
				val, ok2 := f[i+1].(string)
				if !ok1 || !ok2 {
					return nil, fmt.Errorf("stream entry %s: field %d is not a string", idStr, i)
				}
				e.ops = append(e.ops, rawOp{k, val})
			}
		default:
			return nil, fmt.Errorf("stream entry %s: unexpected fields %T", idStr, pair[1])
		}
		out = append(out, e)
	}
	return out, nil
}

// parseReadGroup parses an XREADGROUP reply for one stream, in RESP2
// ([[stream, entries]]) or RESP3 ({stream: entries}) form; nil is no
// entries.
func parseReadGroup(v any) ([]entry, error) {
	switch r := v.(type) {
	case nil:
		return nil, nil
	case []any:
		if len(r) == 0 {
			return nil, nil
		}
		pair, ok := r[0].([]any)
		if !ok || len(pair) != 2 {
			return nil, fmt.Errorf("XREADGROUP: unexpected %v", r[0])
		}
		return parseEntries(pair[1])
	case map[any]any:
		for _, es := range r {
			return parseEntries(es)
		}
		return nil, nil
	}
	return nil, fmt.Errorf("XREADGROUP: unexpected reply %T", v)
}

// sum is an exact sum of int64 deltas (it turns to big.Int on overflow).
type sum struct {
	small int64
	big   *big.Int
}

func (s *sum) add(d int64) {
	if s.big != nil {
		s.big.Add(s.big, big.NewInt(d))
		return
	}
	r := s.small + d
	if (d > 0 && r < s.small) || (d < 0 && r > s.small) {
		s.big = new(big.Int).SetInt64(s.small)
		s.big.Add(s.big, big.NewInt(d))
		return
	}
	s.small = r
}

func (s *sum) String() string {
	if s.big != nil {
		return s.big.String()
	}
	return strconv.FormatInt(s.small, 10)
}

// rowWrite is what one window does to one row: the net effect of its ops.
type rowWrite struct {
	table   *tableInfo
	keyVals []string // in table.keyCols order
	cols    []colWrite
}

type colWrite struct {
	col   string
	mode  Mode
	sum   sum    // Add
	value string // Set: the last value
}

// aggregate folds the ops of entries into one write per row, with rows in
// a stable order (table, then key values), so that two windows lock rows
// in the same order. tables maps each compiled mapping (by index) to its
// table. An op whose key no mapping matches is an error: the writer and
// the flusher disagree on the mappings, and skipping would lose writes.
func aggregate(ms []compiled, tables []*tableInfo, entries []entry) ([]*rowWrite, int, error) {
	rows := map[string]*rowWrite{}
	ops := 0
	for _, e := range entries {
		for _, op := range e.ops {
			m, vals, err := resolve(ms, op.key)
			if err != nil {
				return nil, 0, fmt.Errorf("entry %s: %w; the flusher's mappings must be the writers' (fix them and restart the flusher; the entry stays pending)", e.id, err)
			}
			ti := tables[m.index]
			keyVals := make([]string, len(ti.keyCols))
			for i, c := range m.tmpl.cols {
				keyVals[ti.keyPos[c]] = vals[i]
			}
			rk := ti.qualified + "\x00" + strings.Join(keyVals, "\x00")
			rw := rows[rk]
			if rw == nil {
				rw = &rowWrite{table: ti, keyVals: keyVals}
				rows[rk] = rw
			}
			var cw *colWrite
			for i := range rw.cols {
				if rw.cols[i].col == m.Column {
					cw = &rw.cols[i]
					break
				}
			}
			if cw == nil {
				rw.cols = append(rw.cols, colWrite{col: m.Column, mode: m.Mode})
				cw = &rw.cols[len(rw.cols)-1]
			}
			switch m.Mode {
			case Add:
				d, err := strconv.ParseInt(op.value, 10, 64)
				if err != nil {
					return nil, 0, fmt.Errorf("entry %s: delta %q of %q is not an integer (was it written by this library?)", e.id, op.value, op.key)
				}
				cw.sum.add(d)
			case Set:
				cw.value = op.value
			}
			ops++
		}
	}
	out := make([]*rowWrite, 0, len(rows))
	keys := make([]string, 0, len(rows))
	for k := range rows {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		rw := rows[k]
		sort.Slice(rw.cols, func(i, j int) bool { return rw.cols[i].col < rw.cols[j].col })
		out = append(out, rw)
	}
	return out, ops, nil
}
