package sink

import (
	"context"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/failpoint"
	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
)

// Refresh writes in commit order, across instances.
//
// One engine applies changes in commit order, so its refresh SETs land in
// that order. Two engines may not: a leader frozen (SIGSTOP, a long GC or
// VM pause, a partition) with a pipeline in hand loses the slot to a
// standby, which applies the same and later transactions; when the old
// leader wakes up it sends what it held. Deletes and version raises are
// harmless then; a SET of an older row is not (without refresh_ttl it
// stays). So every refresh write and every delete of a refreshed key
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
// commit order. ARGV[1] is "1" to delete with DEL instead of UNLINK;
// ARGV[2] is how many KEYS one item has: 2 (the key, its order key) or 3
// (and its lease, with leases on); ARGV[3] is the lease fence value ("" to
// delete the lease) and ARGV[4] the fence's milliseconds; then five
// arguments per item: the commit LSN, "s" (write) or "d" (delete), the
// value, its TTL in milliseconds (0: none), and the order key's TTL in
// milliseconds. The lease is fenced (or deleted) first, in the same
// script: a fill under a lease taken before this commit is refused, and
// with the fence no reader takes a new lease for a moment. A write at or
// above the LSN recorded in the order key is made (at: the same
// transaction again, a replay after a crash or a later part of a large
// transaction); one below it is dropped, since the key holds what a later
// commit left. Deletes always delete. The order key only rises. It
// returns how many values it wrote.
var refreshScript = redis.NewScript(lsnLua + `
local del = 'UNLINK'
if ARGV[1] == '1' then del = 'DEL' end
local stride = tonumber(ARGV[2])
local n = 0
local item = 0
for i = 1, #KEYS, stride do
  local a = 4 + item * 5
  item = item + 1
  if stride == 3 then
    if ARGV[3] ~= '' then
      redis.call('SET', KEYS[i+2], ARGV[3], 'PX', ARGV[4])
    else
      redis.call('DEL', KEYS[i+2])
    end
  end
  local lsn = num(ARGV[a+1])
  local had = num(redis.call('GET', KEYS[i+1]))
  if ARGV[a+2] == 'd' then
    redis.call(del, KEYS[i])
  elseif had <= lsn then
    local ttl = tonumber(ARGV[a+4])
    if ttl > 0 then
      redis.call('SET', KEYS[i], ARGV[a+3], 'PX', ttl)
    else
      redis.call('SET', KEYS[i], ARGV[a+3])
    end
    n = n + 1
  end
  if had < lsn then
    redis.call('SET', KEYS[i+1], ARGV[a+1], 'PX', ARGV[a+5])
  end
end
return n`)

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
			}
		}
		return
	}
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
	for i := 0; i < len(sets); i += per {
		chunk := sets[i:min(i+per, len(sets))]
		stride, fence := 2, ""
		if s.cfg.Companion != nil {
			stride = 3
			if s.cfg.Fence > 0 {
				fence = s.cfg.FenceValue
			}
		}
		keys := make([]string, 0, stride*len(chunk))
		args := make([]any, 0, 4+5*len(chunk))
		args = append(args, boolArg(s.cfg.UseDel), stride, fence, max(s.cfg.Fence, time.Millisecond).Milliseconds())
		for _, it := range chunk {
			keys = append(keys, it.key, OrderKey(it.key))
			if stride == 3 {
				keys = append(keys, s.cfg.Companion(it.key))
			}
			mode, ttl := "s", it.ttl
			if it.dropped {
				mode, ttl = "d", 0
			} else if ttl > 0 && it.jitter > 0 {
				ttl -= time.Duration(rand.Float64() * it.jitter * float64(ttl))
				ttl = max(ttl, time.Millisecond)
			}
			args = append(args, s.lsnArg(it.lsn), mode, it.value, ttl.Milliseconds(), max(orderTTL, it.ttl).Milliseconds())
		}
		refreshScript.Eval(ctx, p, keys, args...)
	}
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
