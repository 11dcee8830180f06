package writebehind

import "github.com/redis/go-redis/v9"

// writeScript is the only write of the library on the application's side.
// KEYS[1] is the stream, KEYS[2] the call's token key, KEYS[3..] the
// written keys; ARGV[1] the stream's length cap (0: none), ARGV[2] the
// token's lifetime in milliseconds (0: no token), ARGV[3] one mode letter
// per written key ('a' INCRBY, 's' SET), ARGV[4..] the deltas or values.
//
// Exactly once per token: the token key records the entry ID of the call
// that wrote. A second call with the same token (go-redis retrying after a
// reply was lost, or the caller retrying) changes nothing and replies
// {2, entry id, current values}.
//
// All or nothing: a script is not rolled back when a command fails half
// way, so every change is undone (INCRBY by the negated delta, SET back to
// the old value or DEL) before an error is returned. A refused batch
// changes nothing, appends nothing and records no token. XLEN runs before
// any change, also to fail on a stream key of the wrong type.
//
// Replies: {0, length} when the stream is at its cap; otherwise
// {1, entry id, result per key} (the new value for 'a', 0 for 's'), or
// {2, entry id, current value per key} for a replayed token.
var writeScript = redis.NewScript(`
local ttl = tonumber(ARGV[2])
local modes = ARGV[3]
local nkeys = #KEYS
if ttl > 0 then
  local prev = redis.call('GET', KEYS[2])
  if prev then
    local res = {2, prev}
    for i = 3, nkeys do
      if string.byte(modes, i - 2) == 97 then
        res[i] = redis.call('GET', KEYS[i]) or '0'
      else
        res[i] = 0
      end
    end
    return res
  end
end
local n = redis.call('XLEN', KEYS[1])
local cap = tonumber(ARGV[1])
if cap > 0 and n >= cap then
  return {0, n}
end
local res = {1, ''}
local olds = {} -- old values of SET keys, by position; false: the key was absent
local function undo(upto)
  for j = upto, 3, -1 do
    if string.byte(modes, j - 2) == 97 then -- 'a'
      local neg = ARGV[j + 1]
      if string.byte(neg, 1) == 45 then neg = string.sub(neg, 2) else neg = '-' .. neg end
      redis.call('INCRBY', KEYS[j], neg)
    elseif olds[j] then
      redis.call('SET', KEYS[j], olds[j])
    else
      redis.call('DEL', KEYS[j])
    end
  end
end
for i = 3, nkeys do
  if string.byte(modes, i - 2) == 97 then -- 'a'
    local r = redis.pcall('INCRBY', KEYS[i], ARGV[i + 1])
    if type(r) == 'table' then
      undo(i - 1)
      return redis.error_reply('WBREFUSED ' .. KEYS[i] .. ': ' .. tostring(r.err))
    end
    res[i] = r
  else
    local old = redis.pcall('GET', KEYS[i])
    if type(old) == 'table' then
      undo(i - 1)
      return redis.error_reply('WBREFUSED ' .. KEYS[i] .. ': ' .. tostring(old.err))
    end
    olds[i] = old
    redis.call('SET', KEYS[i], ARGV[i + 1])
    res[i] = 0
  end
end
local fields = {}
for i = 3, nkeys do
  fields[2 * i - 5] = KEYS[i]
  fields[2 * i - 4] = ARGV[i + 1]
end
res[2] = redis.call('XADD', KEYS[1], '*', unpack(fields))
if ttl > 0 then
  redis.call('SET', KEYS[2], res[2], 'PX', ttl)
end
return res
`)
