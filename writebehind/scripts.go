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
local done = {}
local res = {1, ''}
local function undo()
  for j = #done, 1, -1 do
    local d = done[j]
    if d[1] == 'a' then
      local neg = d[3]
      if string.sub(neg, 1, 1) == '-' then neg = string.sub(neg, 2) else neg = '-' .. neg end
      redis.call('INCRBY', d[2], neg)
    elseif d[3] then
      redis.call('SET', d[2], d[3])
    else
      redis.call('DEL', d[2])
    end
  end
end
for i = 2, #KEYS do
  local m = string.sub(modes, i - 1, i - 1)
  local v = ARGV[i + 1]
  if m == 'a' then
    local r = redis.pcall('INCRBY', KEYS[i], v)
    if type(r) == 'table' and r.err then
      undo()
      return redis.error_reply('WBREFUSED ' .. KEYS[i] .. ': ' .. r.err)
    end
    done[#done + 1] = {'a', KEYS[i], v}
    res[#res + 1] = r
  else
    local old = redis.pcall('GET', KEYS[i])
    if type(old) == 'table' and old.err then
      undo()
      return redis.error_reply('WBREFUSED ' .. KEYS[i] .. ': ' .. old.err)
    end
    redis.call('SET', KEYS[i], v)
    done[#done + 1] = {'s', KEYS[i], old}
    res[#res + 1] = 0
  end
end
local fields = {}
for i = 2, #KEYS do
  fields[#fields + 1] = KEYS[i]
  fields[#fields + 1] = ARGV[i + 1]
end
res[2] = redis.call('XADD', KEYS[1], '*', unpack(fields))
return res
`)
