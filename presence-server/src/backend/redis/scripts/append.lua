-- Appends events to one shard of the event stream, then trims it by length
-- and age (both approximate: Redis drops whole blocks). Each id is
-- <ms>-<n>: the time (never less than the last id's) and the entry's number
-- in the shard (1, 2, ...), so a reader tells a gap from the numbers alone.
-- KEYS[1] the shard; ARGV[1] entries to keep, ARGV[2] their age at most in
-- ms, then kind, user, data of each entry. Returns the number appended.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms, n = now, 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local lms, ln = string.match(info[i + 1], '^(%d+)-(%d+)$')
      ms, n = math.max(now, tonumber(lms)), tonumber(ln)
    end
  end
end
for i = 3, #ARGV, 3 do
  n = n + 1
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], string.format('%d-%d', ms, n),
    'k', ARGV[i], 'u', ARGV[i + 1], 'd', ARGV[i + 2])
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', now - tonumber(ARGV[2]))
return n
