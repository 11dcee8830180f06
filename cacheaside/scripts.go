package cacheaside

import "github.com/redis/go-redis/v9"

// The three scripts are the library's only writes besides Delete. Each
// touches a key and its lease (KEYS[1] and KEYS[2]) atomically; Script.Run
// sends EVALSHA and falls back to EVAL on NOSCRIPT, so a restarted Redis
// (which forgets loaded scripts) costs one extra round trip.

// Replies of getOrLeaseScript.
const (
	replyHit    = 1 // {1, value}: the key is cached
	replyLeased = 2 // {2}: the lease is ours; load and fill
	replyHeld   = 3 // {3}: another reader holds the lease; wait and read again
	replyFenced = 4 // {4}: the engine just invalidated the key; load, do not fill
)

// getOrLeaseScript reads KEYS[1]; on a miss it takes the lease KEYS[2] with
// token ARGV[1] for ARGV[2] milliseconds (SET NX PX). A lease that already
// holds our own token counts as ours, so a call that go-redis retried after
// a lost reply does not wait for itself. A lease holding the fence ARGV[3]
// (LeaseFence, set by the engine for a moment after it invalidated the
// key) answers {4}: no fill may start yet.
var getOrLeaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then
  return {1, v}
end
local cur = redis.call('GET', KEYS[2])
if cur == ARGV[1] then
  return {2}
end
if cur == ARGV[3] then
  return {4}
end
if cur then
  return {3}
end
redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
return {2}
`)

// fillScript writes ARGV[2] to KEYS[1] with a TTL of ARGV[3] milliseconds
// and deletes the lease, only while the lease KEYS[2] still holds our token
// ARGV[1]. It returns 1 when it wrote, 0 when the lease was gone (deleted by
// the engine's invalidation, expired, evicted, or lost with a restarted
// Redis) or taken by another reader since.
var fillScript = redis.NewScript(`
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
`)

// releaseScript deletes the lease KEYS[1] only if it still holds our token
// ARGV[1], so a reader whose load failed never removes another's lease.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)
