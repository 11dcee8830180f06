package sink

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/cdcinvalidate/cdcinvalidate/internal/failpoint"
	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
	"github.com/cdcinvalidate/cdcinvalidate/replication"
)

// Refresh writes in commit order, across instances.
//
// One engine applies changes in commit order, so its refresh SETs land in
// that order. Two engines may not: a leader frozen (SIGSTOP, a long GC or
// VM pause, a partition) with a pipeline in hand loses the slot to a
// standby, which applies the same and later transactions; when the old
// leader wakes up it sends what it held. Deletes are harmless then (a
// miss), and version raises never lower a key (but see the watermark
// fence below for a newer TRUNCATE); a SET of an older row is not (without
// refresh_ttl it stays). So every refresh write and every delete of a refreshed key
// records its transaction's commit LSN in the key's order key (OrderKey),
// compared in the same script: a write older than the recorded LSN is
// dropped, so the newer value (or the newer delete) stays.
//
// The LSN sits beside the value, not in it, so applications read the same
// JSON as before. What stays open: order keys live for OrderTTL (or the
// value's TTL when longer), and a writer frozen longer than that can still
// write an older row; and a write of the same transaction is allowed (so
// that replays and the parts of a large transaction apply), so a late
// writer holding an earlier part of a transaction that writes one key
// twice, in two parts, can put the earlier value back. Either stays until
// the value's TTL or the row's next change.

// DefaultOrderTTL is how long an order key outlives the last change of its
// key when Config.OrderTTL is not set.
const DefaultOrderTTL = 24 * time.Hour

// orderPrefix starts every order key; it is inside the engine's own
// namespace (the ACL pattern ~cdcinvalidate:*), apart from the slot-named
// watermark and managed keys because of the brace that follows it.
const orderPrefix = "cdcinvalidate:lsn:"

// OrderKey returns the name of the key that holds the commit LSN ("X/Y")
// of the latest change the refresh action applied to key.
//
// It hashes to the same Redis Cluster slot as key, so one script can touch
// both: a key with a hash tag of its own ("user:{42}:orders") lends it
// ("cdcinvalidate:lsn:{42}user:{42}:orders"); any other key becomes the
// tag ("cdcinvalidate:lsn:{user:42}"), as with cacheaside.LeaseKey. A key
// without a hash tag that contains "}" (an empty "{}", a lone "}") cannot
// be a tag; its order key borrows a short tag of the key's slot
// (keyslot.Tag). Different keys always have different order keys.
func OrderKey(key string) string {
	if tag, ok := hashTag(key); ok {
		return orderPrefix + "{" + tag + "}" + key
	}
	if !strings.Contains(key, "}") {
		return orderPrefix + "{" + key + "}"
	}
	return orderPrefix + "{" + keyslot.Tag(key) + "}" + key
}

// hashTag returns the part of key that Redis Cluster hashes when it is not
// the whole key: between the first "{" and the first "}" after it, when
// that is not empty.
func hashTag(key string) (string, bool) {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return "", false
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return "", false
	}
	return key[i+1 : i+1+j], true
}

// refreshScript applies refresh writes and deletes of refreshed keys in
// commit order.
//
// Its arguments: ARGV[1] is "1" to delete with DEL instead of UNLINK;
// ARGV[2] is how many KEYS one item has: 2 (the key, its order key) or 3
// (and its lease, with leases on); ARGV[3] is the lease fence value ("" to
// delete the lease) and ARGV[4] the fence's milliseconds; ARGV[5] is "1"
// when KEYS[1] is the watermark (the items' keys follow it); ARGV[6] is
// the order keys' TTL in milliseconds (OrderTTL); ARGV[7] is "1" to write
// an order key with one SET ... GET (Redis 6.2+: on an older Redis the
// first one, sent with redis.pcall, is refused as a syntax error, and the
// script goes on with a GET and a SET, which meet any other error the
// first one had, as before); ARGV[8] is the usual kind of a run.
//
// Then the items, in runs of consecutive items of one commit LSN and kind
// (built by appendRefreshRuns): the run's commit LSN ("X/Y") and its
// number of items; when that number is negative (minus the number), the
// run's kind follows, which is ARGV[8] otherwise; then the arguments of
// its items. A kind is a number of milliseconds at or above 0: writes with
// that TTL (0: none), one argument per item, the value; below 0: deletes,
// no argument per item, minus their order keys' TTL; or "j": writes with a
// TTL each (jittered), two arguments per item, the TTL in milliseconds and
// the value, "j" and a number of milliseconds when their order keys' TTL
// is not ARGV[6]. Otherwise a write's order key lives for ARGV[6], or the
// value's TTL when longer: as before, the longer of OrderTTL and the
// rule's TTL (refresh_ttl, before jitter), which the script makes a
// millisecond longer: SET ... GET writes the order key before the value,
// and Redis's clock runs on within a script. The items of a transaction
// share its commit LSN, and its rows' writes mostly a kind, so a refreshed
// key costs Redis its two keys and its value (and its TTL, jittered):
// every argument costs Redis about 1,700 instructions, a number parsed in
// Lua (tonumber) about 1,000 (docs/benchmarks.md, issue 15).
//
// The lease is fenced (or deleted) first, in the same script: a fill
// under a lease taken before this commit is refused, and with the fence
// no reader takes a new lease for a moment. A write at or above the LSN
// recorded in the order key is made (at: the same transaction again, a
// replay after a crash or a later part of a large transaction); one below
// it is dropped, since the key holds what a later commit left. Deletes
// always delete, except that a write or a delete of a transaction the
// watermark has passed is not made (fencedByMark): Redis holds its effects
// and what followed (a late leader's, or a replay after a restart, whose
// deletes must not undo writes it skips): skip, for a run of them, whose
// order keys still rise, by a GET and a SET (a replay's mostly do not).
// The order key only rises: SET ... GET writes the item's LSN and, when
// the LSN it replaced was higher (a late writer's item), the script puts
// that back at once, with the order key TTL of the item or the key's
// remaining TTL when longer (the order key outlives the value it guards).
// It returns how many values it wrote and how many writes the watermark
// fenced.
var refreshScript = redis.NewScript(lsnLua + markLua(5) + `
local del = 'UNLINK'
if ARGV[1] == '1' then del = 'DEL' end
local stride = tonumber(ARGV[2])
local lease, leasems = ARGV[3], ARGV[4]
local orderttl = ARGV[6]
local orderms = tonumber(orderttl)
local setget = ARGV[7] == '1'
local probe = setget
local function kind(t)
  if t == 'j' then return 0, orderttl, true end
  if string.byte(t) == 106 then return 0, tonumber(string.sub(t, 2)) + 1, true end
  local ttl = tonumber(t)
  if ttl < 0 then return ttl, string.sub(t, 2), false end
  if ttl > orderms then return ttl, ttl + 1, false end
  return ttl, orderttl, false
end
local usual = ARGV[8]
local uttl, uottl, uown = kind(usual)
local n = 0
local i, a, nkeys = first, 9, #KEYS
while i <= nkeys do
  local at = ARGV[a]
  local lsn = num(at)
  local count = ARGV[a+1]
  if count == '1' then count = 1 else count = tonumber(count) end
  local t, own, ttl, ottl = usual, uown, uttl, uottl
  if count < 0 then
    count = -count
    t = ARGV[a+2]
    ttl, ottl, own = kind(t)
    a = a + 3
  else
    a = a + 2
  end
  local skip = passed(lsn, count)
  for _ = 1, count do
    local k, o = KEYS[i], KEYS[i+1]
    if stride == 3 then
      if lease ~= '' then
        redis.call('SET', KEYS[i+2], lease, 'PX', leasems)
      else
        redis.call('DEL', KEYS[i+2])
      end
    end
    i = i + stride
    if own then
      t = ARGV[a]
      a = a + 1
      ttl = tonumber(t)
    end
    local had
    if setget and not skip then
      local old
      if probe then
        probe = false
        old = redis.pcall('SET', o, at, 'PX', ottl, 'GET')
        if type(old) == 'table' then setget = false end
      else
        old = redis.call('SET', o, at, 'PX', ottl, 'GET')
      end
      if setget then
        had = num(old)
        if had > lsn then
          local keep = redis.call('PTTL', k)
          if keep < tonumber(ottl) then keep = ottl end
          redis.call('SET', o, old, 'PX', keep)
        end
      end
    end
    local raise = false
    if had == nil then
      had = num(redis.call('GET', o))
      raise = had < lsn
    end
    if skip then
    elseif ttl < 0 then
      redis.call(del, k)
    elseif had <= lsn then
      if ttl > 0 then
        redis.call('SET', k, ARGV[a], 'PX', t)
      else
        redis.call('SET', k, ARGV[a])
      end
      n = n + 1
    end
    if raise then
      redis.call('SET', o, at, 'PX', ottl)
    end
    if ttl >= 0 then a = a + 1 end
  end
end
return {n, fenced}`)

// orderSetGet says whether refreshScript writes order keys with SET ...
// GET where Redis has it (6.2+); tests turn it off to check the other way.
var orderSetGet = true

// queueRefresh queues the batch's refresh writes and deletes of refreshed
// keys (see refreshScript), KeysPerCommand keys per script.
func (s *Sink) queueRefresh(ctx context.Context, p redis.Pipeliner) {
	sets := s.acts.sets
	per := max(1, s.cfg.KeysPerCommand)
	orderTTL := s.cfg.OrderTTL
	if orderTTL <= 0 {
		orderTTL = DefaultOrderTTL
	}
	if failpoint.Unsafe("unordered-refresh") {
		for _, it := range sets { // the negative control: blind SETs
			if s.cfg.Companion != nil {
				p.Del(ctx, s.cfg.Companion(it.key))
			}
			if !it.dropped {
				p.Set(ctx, it.key, it.value, it.ttl)
			} else {
				p.Unlink(ctx, it.key)
			}
		}
		return
	}
	// Writes and deletes of transactions the cluster's watermark has
	// passed go.
	sets = clusterUnfenced(s, sets, func(it *setItem) replication.LSN { return it.lsn })
	if s.cfg.Cluster && len(sets) > 1 {
		// One script touches the keys of one slot only (a key and its
		// order key share it).
		var sorted []setItem
		for _, g := range keyslot.GroupBySlot(len(sets), func(i int) string { return sets[i].key }) {
			run := len(sorted)
			for _, i := range g {
				sorted = append(sorted, sets[i])
			}
			s.queueRefreshChunks(ctx, p, sorted[run:], per, orderTTL)
		}
		return
	}
	s.queueRefreshChunks(ctx, p, sets, per, orderTTL)
}

func (s *Sink) queueRefreshChunks(ctx context.Context, p redis.Pipeliner, sets []setItem, per int, orderTTL time.Duration) {
	stride, fence := 2, ""
	if s.cfg.Companion != nil {
		stride = 3
		if s.cfg.Fence > 0 {
			fence = s.cfg.FenceValue
		}
	}
	mark := s.markInScript()
	for i := 0; i < len(sets); i += per {
		chunk := sets[i:min(i+per, len(sets))]
		keys := make([]string, 0, 1+stride*len(chunk))
		if mark {
			keys = append(keys, s.cfg.WatermarkKey)
		}
		for _, it := range chunk {
			keys = append(keys, it.key, OrderKey(it.key))
			if stride == 3 {
				keys = append(keys, s.cfg.Companion(it.key))
			}
		}
		args := make([]any, 0, 10+len(chunk))
		args = append(args, boolArg(s.cfg.UseDel), stride, fence, max(s.cfg.Fence, time.Millisecond).Milliseconds(), boolArg(mark),
			orderMillis(orderTTL), boolArg(orderSetGet))
		args = appendRefreshRuns(args, chunk, orderTTL, s.lsnArg, jittered)
		c := refreshScript.Eval(ctx, p, keys, args...)
		if mark {
			s.fenceCmds = append(s.fenceCmds, c)
		}
	}
}

// jittered returns the TTL a refresh write sets: its rule's TTL, less up
// to its jitter share at random.
func jittered(it *setItem) time.Duration {
	ttl := it.ttl
	if ttl > 0 && it.jitter > 0 {
		ttl -= time.Duration(rand.Float64() * it.jitter * float64(ttl))
		ttl = max(ttl, time.Millisecond)
	}
	return ttl
}

// orderMillis is an order key's TTL in milliseconds, at least one.
func orderMillis(d time.Duration) int64 {
	return max(d.Milliseconds(), 1)
}

// refreshKind is the kind of a run of refreshScript's items (see there):
// writes with a TTL of ms milliseconds (0: none), deletes (ms below 0:
// minus their order keys' TTL), or writes with a TTL each (own), their
// order keys' TTL ms (0: ARGV[6]).
type refreshKind struct {
	own bool
	ms  int64
}

func (k refreshKind) arg() any {
	switch {
	case !k.own:
		return k.ms
	case k.ms == 0:
		return "j"
	}
	return "j" + strconv.FormatInt(k.ms, 10)
}

// appendRefreshRuns appends refreshScript's arguments from its usual kind
// (ARGV[8]) on for items (see there) to args: runs of consecutive items
// with the same commit LSN (as lsnArg gives it) and order key TTL (at
// least orderTTL, the rule's TTL when longer, as before jitter), writes or
// deletes. A run of writes whose TTLs (ttl gives a write's, jittered)
// differ, or whose order key TTL is not the longer of orderTTL and that
// TTL (a jittered TTL below the rule's above orderTTL), has them each. The
// usual kind is the kind of most runs.
func appendRefreshRuns(args []any, items []setItem, orderTTL time.Duration, lsnArg func(replication.LSN) any, ttl func(*setItem) time.Duration) []any {
	type run struct {
		end  int // items[start:end], start the previous run's end
		kind refreshKind
	}
	orderMs := orderMillis(orderTTL)
	ms := make([]int64, 2*len(items)) // a write's TTL, an item's order key TTL
	for i := range items {
		it := &items[i]
		ms[2*i+1] = orderMillis(max(orderTTL, it.ttl))
		if !it.dropped {
			ms[2*i] = ttl(it).Milliseconds()
		}
	}
	var runs []run
	for i := 0; i < len(items); {
		o := ms[2*i+1]
		k := refreshKind{ms: ms[2*i]}
		if items[i].dropped {
			k.ms = -o
		}
		j := i
		for ; j < len(items) && items[j].lsn == items[i].lsn && items[j].dropped == items[i].dropped && ms[2*j+1] == o; j++ {
			if !items[j].dropped && (ms[2*j] != ms[2*i] || o != max(orderMs, ms[2*j])) {
				k = refreshKind{own: true}
				if o != orderMs {
					k.ms = o
				}
			}
		}
		runs = append(runs, run{j, k})
		i = j
	}
	usual := refreshKind{}
	if len(runs) > 0 {
		usual = mostRuns(runs, func(r run) refreshKind { return r.kind })
	}
	args = append(args, usual.arg())
	start := 0
	for _, r := range runs {
		args = append(args, lsnArg(items[start].lsn))
		if r.kind == usual {
			args = append(args, r.end-start)
		} else {
			args = append(args, start-r.end, r.kind.arg())
		}
		for i := start; i < r.end; i++ {
			if items[i].dropped {
				continue
			}
			if r.kind.own {
				args = append(args, ms[2*i])
			}
			args = append(args, items[i].value)
		}
		start = r.end
	}
	return args
}

// mostRuns returns the kind that most runs have (the first of them on a
// tie); runs is not empty.
func mostRuns[R any, K comparable](runs []R, kind func(R) K) K {
	counts := map[K]int{}
	best := kind(runs[0])
	for _, r := range runs {
		k := kind(r)
		counts[k]++
		if counts[k] > counts[best] {
			best = k
		}
	}
	return best
}

// orderGlobs returns SCAN patterns that cover the order keys of every key
// the pattern g matches: a key without a hash tag is its order key's tag,
// and a key with one follows its tag.
func orderGlobs(g string) []string {
	return []string{orderPrefix + "{" + g + "}", orderPrefix + "{*}" + g}
}

// flushOrderKeys deletes the order keys of the keys patterns cover, at a
// flush: a flush starts the cache over, and an order key left from before
// could refuse writes for OrderTTL if PostgreSQL's positions went back
// (a restore to an earlier point in time). TRUNCATE keeps them: they are
// what refuses a late write of a truncated row.
func (s *Sink) flushOrderKeys(ctx context.Context, patterns []string) error {
	for _, p := range patterns {
		for _, g := range orderGlobs(p) {
			if _, err := s.deleteMatching(ctx, g); err != nil {
				return err
			}
		}
	}
	return nil
}

// Version raises and refresh writes fenced by the watermark.
//
// The order keys compare a write with the writes and deletes of the same
// key; a TRUNCATE records nothing per key (it deletes by pattern, order
// keys included in none of its patterns). So a leader frozen across a
// newer TRUNCATE by another instance could, on waking, set version keys
// that TRUNCATE deleted back to the older LSNs it held, and write back
// refreshed rows that TRUNCATE removed (their order keys say nothing
// newer). The watermark closes that: every instance raises it to the end
// of what it applied, after the effects, so a watermark past a
// transaction's commit LSN means another instance applied that
// transaction, and everything up to the watermark, already (commits are
// applied in order; a keepalive position is watermarked only when every
// transaction committing below it was handed over and applied). A raise
// or a write of such a transaction is redundant at best, and after a
// newer TRUNCATE it would undo it: it is not made (fencedByMark). Deletes
// still go (a late delete costs a miss, never a stale value).
//
// An engine's own writes are never fenced by its own watermark: it raises
// the watermark with or after the effects of the same batch. The chunks
// of a large transaction share its commit LSN, and the watermark passes
// it only once the whole transaction was applied. A replay after a
// restart of transactions below the watermark skips their raises and
// writes: Redis holds them, or what later commits made of them (a Redis
// that lost them has a lower watermark, which the history checks catch).
// Events without a commit LSN (0) are never fenced.
//
// On a single Redis server the watermark is read in the same script as
// the raises or writes, so the check and the write are atomic. On a Redis
// Cluster the watermark lives in another slot than the keys, and a script
// can only touch one slot: it is read once before the batch (one round
// trip more for a batch with version raises or refresh writes), and a
// leader frozen between that read and its writes can still write. With
// sink.watermark off there is nothing to fence with.

// markLua defines, for a script whose ARGV[flag] is "1" when KEYS[1] is
// the watermark: first, the index of the first key after it, and
// passed(lsn, count), true when the watermark is past the commit LSN lsn
// (then the raise or write is not made; counted in fenced, count items at
// once, one without count). Needs lsnLua.
func markLua(flag int) string {
	return `
local mark, first, fenced = -1, 1, 0
if ARGV[` + strconv.Itoa(flag) + `] == '1' then
  mark = num(redis.call('GET', KEYS[1]))
  first = 2
end
local function passed(lsn, count)
  if lsn > 0 and mark > lsn then
    fenced = fenced + (count or 1)
    return true
  end
  return false
end
`
}

// fencedByMark says whether version raises and refresh writes are fenced
// by the watermark: when one is kept (and not deliberately broken with
// CDC_UNSAFE=unfenced-actions, the negative control).
func (s *Sink) fencedByMark() bool {
	return s.cfg.WatermarkKey != "" && !failpoint.Unsafe("unfenced-actions")
}

// markInScript says whether the version and refresh scripts read the
// watermark themselves (one Redis server: the same script, atomically).
func (s *Sink) markInScript() bool {
	return !s.cfg.Cluster && s.fencedByMark()
}

// superseded says whether the watermark read before a cluster batch
// (clusterMark) is past the commit LSN lsn.
func (s *Sink) superseded(lsn replication.LSN) bool {
	return lsn != 0 && s.clusterMark > lsn
}

// clusterUnfenced returns the items whose transactions the watermark read
// before a cluster batch (readClusterMark) has not passed, and counts the
// others as fenced; without such a read it returns items as they are.
func clusterUnfenced[T any](s *Sink, items []T, lsn func(*T) replication.LSN) []T {
	if s.clusterMark == 0 {
		return items
	}
	kept := make([]T, 0, len(items))
	for i := range items {
		if !s.superseded(lsn(&items[i])) {
			kept = append(kept, items[i])
		}
	}
	s.clusterFenced += len(items) - len(kept)
	return kept
}

// readClusterMark starts an attempt to send a batch: it forgets what an
// earlier attempt fenced and reads, on a cluster, the watermark before a
// batch with version raises or refresh writes, for queueVersions and
// queueRefresh to leave out those of transactions it has passed.
func (s *Sink) readClusterMark(ctx context.Context) error {
	s.clusterMark = 0
	s.clusterFenced = 0
	s.fenceCmds = s.fenceCmds[:0]
	s.replayed = 0
	if s.replayMark != 0 && s.fencedByMark() {
		// Fenced as a replay: of transactions applied before this session.
		for _, it := range s.acts.versions {
			if it.lsn != 0 && it.lsn < s.replayMark {
				s.replayed++
			}
		}
		for _, it := range s.acts.sets {
			if it.lsn != 0 && it.lsn < s.replayMark {
				s.replayed++
			}
		}
	}
	if !s.cfg.Cluster || !s.fencedByMark() || (len(s.acts.versions) == 0 && len(s.acts.sets) == 0) {
		return nil
	}
	mark, err := s.readMark(ctx)
	if err != nil {
		return fmt.Errorf("read the watermark %s before version raises and refresh writes: %w", s.cfg.WatermarkKey, err)
	}
	s.clusterMark = mark
	return nil
}

// reportFenced counts and logs the version raises, refresh writes and
// deletes of refreshed keys that the watermark fenced in the batch just
// sent. Those of transactions below the watermark this session began with
// are a restart's replay (logged at debug); the rest mean that this
// instance is a leader that lost the slot while it held them (paused or
// partitioned), and another instance applied them and what followed.
func (s *Sink) reportFenced() {
	n := s.clusterFenced
	for _, c := range s.fenceCmds {
		if v, err := c.Slice(); err == nil && len(v) == 2 {
			if f, ok := v[1].(int64); ok {
				n += int(f)
			}
		}
	}
	s.fenceCmds = s.fenceCmds[:0]
	s.clusterFenced = 0
	s.Stats.Fenced.Add(uint64(n))
	replayed := min(n, s.replayed)
	if replayed > 0 {
		s.log.Debug("skipped version raises and refresh writes of transactions applied before this session began (a replay)",
			zap.Int("skipped", replayed))
	}
	if n -= replayed; n == 0 {
		return
	}
	s.obs.Fenced("action", n)
	s.log.Warn("skipped version raises and refresh writes that another instance already applied: the watermark "+
		"in Redis is past their commits, so this instance lost the slot while it held them (a paused or "+
		"partitioned leader); it steps back when its session ends",
		zap.Int("skipped", n))
}
