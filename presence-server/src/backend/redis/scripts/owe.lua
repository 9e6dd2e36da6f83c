-- Shared by write.lua and replace.lua: notes a change of a user's records
-- as owed to the event stream, in the list beside the user's hash (the same
-- slot, so in the same atomic step). An entry is JSON: {"i": incarnation,
-- "q": its new sequence, "o": its value before (false: none), "a": the
-- hash after, as HGETALL's flat list}. The list keeps the last `max`
-- entries and expires with the retention; returns it whole.
local function owe(key, inc, q, old, all, max, ms)
  redis.call('RPUSH', key, cjson.encode({i = inc, q = q, o = old or false, a = all}))
  redis.call('LTRIM', key, -tonumber(max), -1)
  redis.call('PEXPIRE', key, ms)
  return redis.call('LRANGE', key, 0, -1)
end
