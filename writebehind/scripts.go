package writebehind

import "github.com/redis/go-redis/v9"

// writeScript is the only write of the library on the application's side.
// KEYS[1] is the stream, KEYS[2..] the written keys; ARGV[1] the stream's
// length cap (0: none), ARGV[2] one mode letter per key ('a' INCRBY, 's'
// SET), ARGV[3..] the deltas or values.
//
// All or nothing: a script is not rolled back when a command fails half
// way, so every change is undone (INCRBY by the negated delta, SET back to
// the old value or DEL) before an error is returned. A refused batch
// changes nothing and appends nothing. XLEN runs first, also to fail on a
// stream key of the wrong type before anything changed.
//
// Replies: {0, length} when the stream is at its cap; otherwise
// {1, entry id, result per key} (the new value for 'a', 0 for 's').
var writeScript = redis.NewScript(`
local n = redis.call('XLEN', KEYS[1])
local cap = tonumber(ARGV[1])
if cap > 0 and n >= cap then
  return {0, n}
end
local modes = ARGV[2]
local nkeys = #KEYS
local res = {1, ''}
local olds = {} -- old values of SET keys, by position; false: the key was absent
local function undo(upto)
  for j = upto, 2, -1 do
    if string.byte(modes, j - 1) == 97 then -- 'a'
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
for i = 2, nkeys do
  if string.byte(modes, i - 1) == 97 then -- 'a'
    local r = redis.pcall('INCRBY', KEYS[i], ARGV[i + 1])
    if type(r) == 'table' then
      undo(i - 1)
      return redis.error_reply('WBREFUSED ' .. KEYS[i] .. ': ' .. tostring(r.err))
    end
    res[i + 1] = r
  else
    local old = redis.pcall('GET', KEYS[i])
    if type(old) == 'table' then
      undo(i - 1)
      return redis.error_reply('WBREFUSED ' .. KEYS[i] .. ': ' .. tostring(old.err))
    end
    olds[i] = old
    redis.call('SET', KEYS[i], ARGV[i + 1])
    res[i + 1] = 0
  end
end
local fields = {}
for i = 2, nkeys do
  fields[2 * i - 3] = KEYS[i]
  fields[2 * i - 2] = ARGV[i + 1]
end
res[2] = redis.call('XADD', KEYS[1], '*', unpack(fields))
return res
`)
