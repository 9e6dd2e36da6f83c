-- Shared by write.lua and replace.lua: notes a change of a user's records
-- as owed to the event stream, in the list beside the user's hash (the same
-- slot, so in the same atomic step). An entry is lines: "<incarnation>:<its
-- new sequence>", its value before (empty: none), then the hash after as
-- field and value lines (values are JSON after a flag, so never hold a raw
-- newline, and fields are incarnation ids). The list keeps the last `max`
-- entries and expires with the retention; returns it whole.
local function owe(key, inc, q, old, all, max, ms)
  redis.call('RPUSH', key, inc .. ':' .. q .. '\n' .. (old or '') .. '\n' .. table.concat(all, '\n'))
  redis.call('LTRIM', key, -tonumber(max), -1)
  redis.call('PEXPIRE', key, ms)
  return redis.call('LRANGE', key, 0, -1)
end
