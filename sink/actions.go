package sink

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/jsonstr"
	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// MessageKeys is the most keys (or patterns) one publish message or stream
// entry carries; a transaction with more is sent in parts.
const MessageKeys = 1000

// actionBatch is what the actions of one batch ask of Redis, deduplicated
// and in the order the pipeline sends it: versions, deletes with the other
// command, refreshed values, generation bumps, then messages.
type actionBatch struct {
	other     []string // deletes with the command that is not the sink's default
	otherSeen map[string]struct{}
	sets      []setItem
	setIdx    map[string]int
	versions  []versionItem
	verIdx    map[string]int
	incrs     []string
	incrSeen  map[string]struct{}
	msgs      []outMsg
	// The messages' bytes (bodies, IDs, LSN texts) and the XADDs'
	// arguments, reused from batch to batch: a batch's pipeline is
	// answered before the next batch is gathered (messages never fly).
	msgBuf  []byte
	msgArgs []any
	counts  [8]int // actions by kind, for the observer (ActDelete, 8, is a plain delete: counted as keys)
}

// setItem is a refresh write of a key, or a delete of a refreshed key
// (dropped), recorded with its commit LSN (see order.go).
type setItem struct {
	key, value string
	ttl        time.Duration
	jitter     float64
	lsn        replication.LSN
	dropped    bool // a later delete in the batch removed it, or a stamped delete
}

type versionItem struct {
	key string
	lsn replication.LSN
	ttl time.Duration
}

// outMsg is one publish message or stream entry ready to send.
type outMsg struct {
	stream bool
	target string
	id     []byte // stream entry ID "<commit LSN>-<part>"
	lsn    []byte
	maxLen int64
	body   []byte
}

// Message is the JSON that the publish action sends and the stream action
// appends (as the entry's "event" field), for Go consumers to decode: one
// per transaction and channel or stream, in parts of MessageKeys keys.
type Message struct {
	// LSN is the transaction's commit LSN ("16/B374D848"), the version that
	// version keys hold and that stream entry IDs are made of.
	LSN string `json:"lsn"`
	// Part numbers the parts of one transaction from 0; Last marks the
	// final one.
	Part    int             `json:"part"`
	Last    bool            `json:"last"`
	Changes []MessageChange `json:"changes"`
}

// MessageChange lists the keys one table's rows invalidated with one
// operation ("insert", "update", "delete"), or for "truncate" the patterns.
type MessageChange struct {
	Table    string   `json:"table"`
	Op       string   `json:"op"`
	Keys     []string `json:"keys,omitempty"`
	Patterns []string `json:"patterns,omitempty"`
}

// msgAcc gathers the changes of one transaction for one channel or stream.
type msgAcc struct {
	stream  bool
	target  string
	maxLen  int64
	lsn     replication.LSN
	part    int
	n       int
	changes []msgChange
	seen    map[msgKey]struct{}
}

// msgKey identifies a key within a transaction's message.
type msgKey struct {
	table string
	op    replication.Op
	key   string
}

type msgChange struct {
	table string
	op    replication.Op
	keys  []string
}

func (b *actionBatch) reset() {
	b.other = b.other[:0]
	clear(b.otherSeen)
	b.sets = b.sets[:0]
	clear(b.setIdx)
	b.versions = b.versions[:0]
	clear(b.verIdx)
	b.incrs = b.incrs[:0]
	clear(b.incrSeen)
	b.msgs = b.msgs[:0]
	if cap(b.msgBuf) > maxKeptMsgBytes {
		b.msgBuf = nil // a rare large batch's buffers are not kept
	}
	if cap(b.msgArgs)*16 > maxKeptMsgBytes {
		b.msgArgs = nil
	}
	b.msgBuf = b.msgBuf[:0]
	b.counts = [8]int{}
}

// maxKeptMsgBytes bounds each message buffer kept between batches.
const maxKeptMsgBytes = 1 << 20

// drop turns the refresh write sets[j] into a delete, recorded at the
// deleting transaction's commit LSN (0: unknown, keep the write's).
func (b *actionBatch) drop(j int, lsn replication.LSN) {
	b.sets[j].dropped = true
	b.sets[j].lsn = max(b.sets[j].lsn, lsn)
}

func (b *actionBatch) size() int {
	return len(b.other) + len(b.sets) + len(b.versions) + len(b.incrs) + len(b.msgs)
}

// addActions adds an event's actions to the batch; lsn is the commit LSN
// of their transaction.
func (s *Sink) addActions(acts []replication.Action, lsn replication.LSN) error {
	b := &s.acts
	if b.otherSeen == nil {
		b.otherSeen, b.setIdx, b.verIdx, b.incrSeen = map[string]struct{}{}, map[string]int{}, map[string]int{}, map[string]struct{}{}
	}
	for i := range acts {
		a := &acts[i]
		if int(a.Kind) < len(b.counts) {
			b.counts[a.Kind]++
		}
		switch a.Kind {
		case replication.ActDelete:
			// A plain delete at its place among the actions: a refresh write
			// of the key before it is dropped (addKeys), one after it stays.
			if err := s.addKeys([]string{a.Key}, lsn); err != nil {
				return err
			}
		case replication.ActUnlink, replication.ActDel:
			if a.Stamp {
				// A delete of a refreshed key goes through the refresh
				// script only, in its place among the key's writes and
				// fenced by the watermark as they are: a replay after a
				// restart (the watermark is past the slot's position) that
				// deleted here while it skipped the key's later write would
				// leave the key missing (TestActionsKill9AtRandomMoments).
				if err := s.checkLongKey(a.Key); err != nil {
					return err
				}
				if j, ok := b.setIdx[a.Key]; ok {
					b.drop(j, lsn)
				} else {
					b.setIdx[a.Key] = len(b.sets)
					b.sets = append(b.sets, setItem{key: a.Key, lsn: lsn, dropped: true})
				}
				break
			}
			if (a.Kind == replication.ActDel) == s.cfg.UseDel {
				if err := s.addKeys([]string{a.Key}, lsn); err != nil {
					return err
				}
			} else {
				s.addOther(a.Key)
			}
			if j, ok := b.setIdx[a.Key]; ok {
				b.drop(j, lsn)
			}
		case replication.ActSet:
			// With leases, the refresh script fences (or deletes) the key's
			// lease before the write: a fill under a lease taken before this
			// commit must not overwrite the new value.
			it := setItem{key: a.Key, value: a.Value, ttl: a.TTL, jitter: a.Jitter, lsn: lsn}
			if j, ok := b.setIdx[a.Key]; ok {
				b.sets[j] = it
			} else {
				b.setIdx[a.Key] = len(b.sets)
				b.sets = append(b.sets, it)
			}
		case replication.ActVersion:
			if j, ok := b.verIdx[a.Key]; ok {
				b.versions[j].lsn = max(b.versions[j].lsn, lsn)
				b.versions[j].ttl = a.TTL
			} else {
				b.verIdx[a.Key] = len(b.versions)
				b.versions = append(b.versions, versionItem{key: a.Key, lsn: lsn, ttl: a.TTL})
			}
		case replication.ActIncr:
			if _, ok := b.incrSeen[a.Key]; !ok {
				b.incrSeen[a.Key] = struct{}{}
				b.incrs = append(b.incrs, a.Key)
			}
		case replication.ActPublish, replication.ActStream:
			s.addMessageKey(a, lsn)
		}
	}
	return nil
}

// addOther queues a delete with the command that is not the default;
// with Companion, as the lease and the key, fenced or deleted together
// like plain deletes.
func (s *Sink) addOther(key string) {
	b := &s.acts
	if _, ok := b.otherSeen[key]; ok {
		return
	}
	b.otherSeen[key] = struct{}{}
	if s.cfg.Companion != nil {
		b.other = append(b.other, s.cfg.Companion(key))
	}
	b.other = append(b.other, key)
}

func (s *Sink) addMessageKey(a *replication.Action, lsn replication.LSN) {
	id := a.Target
	if a.Kind == replication.ActStream {
		id = "\x00" + a.Target // streams and channels of one name are apart
	}
	acc := s.accs[id]
	if acc == nil {
		acc = &msgAcc{stream: a.Kind == replication.ActStream, target: a.Target, seen: map[msgKey]struct{}{}}
		s.accs[id] = acc
		s.accOrder = append(s.accOrder, id)
	}
	if acc.lsn != lsn {
		// A new transaction; the last one ended with its End event.
		if acc.n > 0 {
			s.emitMessage(acc, true)
		}
		acc.lsn, acc.part = lsn, 0
	}
	acc.maxLen = a.MaxLen
	dedup := msgKey{a.Table, a.Op, a.Key}
	if _, dup := acc.seen[dedup]; dup {
		return
	}
	if acc.n >= MessageKeys {
		s.emitMessage(acc, false)
	}
	acc.seen[dedup] = struct{}{}
	acc.n++
	if c := len(acc.changes); c > 0 && acc.changes[c-1].table == a.Table && acc.changes[c-1].op == a.Op {
		acc.changes[c-1].keys = append(acc.changes[c-1].keys, a.Key)
		return
	}
	if c := len(acc.changes); c < cap(acc.changes) {
		// Reuse the keys array a sent part left behind.
		acc.changes = acc.changes[:c+1]
		ch := &acc.changes[c]
		ch.table, ch.op, ch.keys = a.Table, a.Op, append(ch.keys[:0], a.Key)
		return
	}
	acc.changes = append(acc.changes, msgChange{table: a.Table, op: a.Op, keys: []string{a.Key}})
}

// restartMessages forgets the unsent parts of transactions that a new
// replication session will send again from their start: their messages
// then come out as after a restart of the engine (parts already sent are
// sent again with the same stream IDs, which Redis refuses as written).
func (s *Sink) restartMessages() {
	for _, acc := range s.accs {
		acc.lsn, acc.part, acc.n = 0, 0, 0
		acc.changes = acc.changes[:0]
		clear(acc.seen)
	}
}

// endTxn sends the last part of every message of the transaction that
// committed at lsn.
func (s *Sink) endTxn(lsn replication.LSN) {
	for _, id := range s.accOrder {
		if acc := s.accs[id]; acc.n > 0 && acc.lsn == lsn {
			s.emitMessage(acc, true)
		}
	}
}

// emitMessage queues the gathered part of a transaction's message (see
// Message): {"lsn":"0/16B3748","part":0,"last":true,"changes":[{"table":
// "public.users","op":"update","keys":["user:1"]}]} ("patterns" instead of
// "keys" for a TRUNCATE, op "truncate").
func (s *Sink) emitMessage(acc *msgAcc, last bool) {
	size := 96
	for _, c := range acc.changes {
		size += len(c.table) + 40
		for _, k := range c.keys {
			size += len(k) + 3
		}
	}
	// Appended to the batch's buffer; slices of an array the buffer
	// outgrew stay valid (nothing writes to them again).
	buf := s.acts.msgBuf
	if cap(buf)-len(buf) < size {
		buf = make([]byte, 0, max(2*cap(buf), size, 4096))
	}
	start := len(buf)
	buf = appendLSN(buf, acc.lsn)
	lsnEnd := len(buf)
	buf = strconv.AppendUint(buf, uint64(acc.lsn), 10)
	buf = append(buf, '-')
	buf = strconv.AppendInt(buf, int64(acc.part), 10)
	idEnd := len(buf)
	buf = append(buf, `{"lsn":"`...)
	buf = append(buf, buf[start:lsnEnd]...)
	buf = append(buf, `","part":`...)
	buf = strconv.AppendInt(buf, int64(acc.part), 10)
	buf = append(buf, `,"last":`...)
	buf = strconv.AppendBool(buf, last)
	buf = append(buf, `,"changes":[`...)
	for i, c := range acc.changes {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"table":`...)
		buf = jsonstr.Append(buf, c.table)
		field := "keys"
		op := "truncate"
		if c.op != 0 {
			op = c.op.String()
		} else {
			field = "patterns"
		}
		buf = append(buf, `,"op":"`...)
		buf = append(buf, op...)
		buf = append(buf, `","`...)
		buf = append(buf, field...)
		buf = append(buf, `":[`...)
		for j, k := range c.keys {
			if j > 0 {
				buf = append(buf, ',')
			}
			buf = jsonstr.Append(buf, k)
		}
		buf = append(buf, "]}"...)
	}
	buf = append(buf, "]}"...)
	s.acts.msgBuf = buf
	s.acts.msgs = append(s.acts.msgs, outMsg{
		stream: acc.stream, target: acc.target, maxLen: acc.maxLen,
		lsn: buf[start:lsnEnd:lsnEnd], id: buf[lsnEnd:idEnd:idEnd], body: buf[idEnd:len(buf):len(buf)],
	})
	acc.part++
	acc.n = 0
	acc.changes = acc.changes[:0]
	clear(acc.seen)
}

// queueVersions queues the version raises (before any delete: a reader
// that fences its fill on the version must see it raised before the key
// is gone).
func (s *Sink) queueVersions(ctx context.Context, p redis.Pipeliner) {
	v := s.acts.versions
	per := max(1, s.cfg.KeysPerCommand)
	// Raises of transactions the cluster's watermark has passed go.
	v = clusterUnfenced(s, v, func(it *versionItem) replication.LSN { return it.lsn })
	if s.cfg.Cluster && len(v) > 1 {
		// One script touches the keys of one slot only.
		groups := keyslot.GroupBySlot(len(v), func(i int) string { return v[i].key })
		if len(groups) > 1 {
			sorted := make([]versionItem, 0, len(v))
			for _, g := range groups {
				for _, i := range g {
					sorted = append(sorted, v[i])
				}
			}
			v = sorted
			for _, g := range groups {
				s.queueVersionChunks(ctx, p, v[:len(g)], per)
				v = v[len(g):]
			}
			return
		}
	}
	s.queueVersionChunks(ctx, p, v, per)
}

func (s *Sink) queueVersionChunks(ctx context.Context, p redis.Pipeliner, v []versionItem, per int) {
	mark := s.markInScript()
	for i := 0; i < len(v); i += per {
		chunk := v[i:min(i+per, len(v))]
		keys := make([]string, 0, 1+len(chunk))
		if mark {
			keys = append(keys, s.cfg.WatermarkKey)
		}
		for _, it := range chunk {
			keys = append(keys, it.key)
		}
		args := appendVersionRuns(append(make([]any, 0, 4), boolArg(mark)), chunk, s.lsnArg)
		c := versionScript.Eval(ctx, p, keys, args...)
		if mark {
			s.fenceCmds = append(s.fenceCmds, c)
		}
	}
}

// appendVersionRuns appends versionScript's arguments from its usual TTL
// (ARGV[2]) on for items (see there) to args: runs of consecutive items
// with the same commit LSN (as lsnArg gives it) and TTL. The usual TTL is
// the TTL of most runs.
func appendVersionRuns(args []any, items []versionItem, lsnArg func(replication.LSN) any) []any {
	type run struct {
		end int // items[start:end], start the previous run's end
		ms  int64
	}
	var runs []run
	for i := 0; i < len(items); {
		j := i + 1
		for j < len(items) && items[j].lsn == items[i].lsn && items[j].ttl.Milliseconds() == items[i].ttl.Milliseconds() {
			j++
		}
		runs = append(runs, run{j, items[i].ttl.Milliseconds()})
		i = j
	}
	usual := int64(0)
	if len(runs) > 0 {
		usual = mostRuns(runs, func(r run) int64 { return r.ms })
	}
	args = append(args, usual)
	start := 0
	for _, r := range runs {
		args = append(args, lsnArg(items[start].lsn))
		if r.ms == usual {
			args = append(args, r.end-start)
		} else {
			args = append(args, start-r.end, r.ms)
		}
		start = r.end
	}
	return args
}

// queueAfterDeletes queues deletes with the other command, refreshed
// values and generation bumps.
func (s *Sink) queueAfterDeletes(ctx context.Context, p redis.Pipeliner) {
	b := &s.acts
	s.delWith(ctx, p, b.other, !s.cfg.UseDel)
	s.queueRefresh(ctx, p)
	for _, k := range b.incrs {
		p.Incr(ctx, k)
	}
}

// queueMessages queues the batch's publish messages and stream entries.
func (s *Sink) queueMessages(ctx context.Context, p redis.Pipeliner) {
	const perXAdd = 10 // xadd, key, maxlen ~ N, id, lsn, L, event, body
	b := &s.acts
	if n := len(b.msgs) * perXAdd; cap(b.msgArgs) < n {
		b.msgArgs = make([]any, 0, n)
	}
	b.msgArgs = b.msgArgs[:0]
	for _, m := range b.msgs {
		if !m.stream {
			p.Publish(ctx, m.target, m.body)
			continue
		}
		// Each XADD's arguments are a capped slice of msgArgs (reused by
		// the next attempt or batch, when this pipeline was answered).
		off := len(b.msgArgs)
		args := append(b.msgArgs[off:off:off+perXAdd], "xadd", m.target)
		if m.maxLen > 0 {
			args = append(args, "maxlen", "~", m.maxLen)
		}
		args = append(args, m.id, "lsn", m.lsn, "event", m.body)
		b.msgArgs = b.msgArgs[:off+len(args)]
		p.Do(ctx, args...)
	}
}

// replayedEntry reports an XADD refused because the stream already holds
// an entry with this ID or a later one: written before a crash, replayed now.
func replayedEntry(c redis.Cmder) bool {
	err := c.Err()
	return err != nil && c.Name() == "xadd" && strings.Contains(err.Error(), "equal or smaller than the target stream top item")
}

// versionScript raises version keys, never lowering them. ARGV[1] is "1"
// when KEYS[1] is the watermark (then the version keys follow it), "0"
// when there is none; ARGV[2] is the usual TTL in milliseconds (used when
// positive). Then the version keys, in runs of consecutive keys of one
// commit LSN and TTL (built by appendVersionRuns): the run's commit LSN
// ("X/Y", what its keys are raised to) and its number of keys, then, when
// that number is negative (minus the number), their TTL, which is ARGV[2]
// otherwise. The keys of a transaction share its commit LSN and mostly a
// TTL, so a raise costs Redis its key and no argument of its own. A raise
// of a transaction the watermark has passed is not made (see fencedByMark
// in order.go). It returns how many it raised and how many raises the
// watermark fenced.
var versionScript = redis.NewScript(lsnLua + markLua(1) + `
local n = 0
local usual = ARGV[2]
local usualpx = tonumber(usual) > 0
local i, a, nkeys = first, 3, #KEYS
while i <= nkeys do
  local v = ARGV[a]
  local lsn = num(v)
  local count = ARGV[a+1]
  if count == '1' then count = 1 else count = tonumber(count) end
  local ttl, px = usual, usualpx
  if count < 0 then
    count = -count
    ttl = ARGV[a+2]
    px = tonumber(ttl) > 0
    a = a + 3
  else
    a = a + 2
  end
  local last = i + count - 1
  local skip = passed(lsn, 0) -- counted below, per raise it fences
  for j = i, last do
    local k = KEYS[j]
    if num(redis.call('GET', k)) >= lsn then
    elseif skip then
      fenced = fenced + 1
    else
      if px then
        redis.call('SET', k, v, 'PX', ttl)
      else
        redis.call('SET', k, v)
      end
      n = n + 1
    end
  end
  i = last + 1
end
return {n, fenced}`)

// lsnArg returns lsn as PostgreSQL prints it ("16/B374D848"), ready as a
// command argument: the items of a batch mostly share their transaction's
// LSN, so the text of the last one is kept (LSN.String is an fmt.Sprintf,
// and each conversion to an argument an allocation).
func (s *Sink) lsnArg(lsn replication.LSN) any {
	if lsn != s.lsnArgOf || s.lsnArgText == nil {
		s.lsnArgOf, s.lsnArgText = lsn, string(appendLSN(make([]byte, 0, 17), lsn))
	}
	return s.lsnArgText
}

// appendLSN appends lsn as PostgreSQL (and LSN.String) prints it:
// upper-case hexadecimal, "16/B374D848".
func appendLSN(b []byte, lsn replication.LSN) []byte {
	b = appendHexUpper(b, uint32(lsn>>32))
	b = append(b, '/')
	return appendHexUpper(b, uint32(lsn))
}

func appendHexUpper(b []byte, v uint32) []byte {
	const digits = "0123456789ABCDEF"
	var tmp [8]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = digits[v&0xf]
		v >>= 4
		if v == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}
