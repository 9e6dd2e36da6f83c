-- Appends events to one shard of the event stream, then trims it by length
-- and age (both approximate: Redis drops whole blocks). Each id is
-- <ms>-<n>: the time (never less than the last id's) and the entry's number
-- in the shard (1, 2, ...), so a reader tells a gap from the numbers alone.
-- The last id given is kept beside the stream (cheaper to read than XINFO).
-- KEYS[1] the shard, KEYS[2] its last id; ARGV[1] entries to keep, ARGV[2]
-- their age at most in ms, then kind, user, data of each entry. Returns
-- {appended, trimmed}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms, n = now, 0
local last = redis.call('GET', KEYS[2])
if last then
  local lms, ln = string.match(last, '^(%d+)-(%d+)$')
  if lms then
    ms, n = math.max(now, tonumber(lms)), tonumber(ln)
  end
end
local before = redis.call('XLEN', KEYS[1])
for i = 3, #ARGV, 3 do
  n = n + 1
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], string.format('%d-%d', ms, n),
    'k', ARGV[i], 'u', ARGV[i + 1], 'd', ARGV[i + 2])
end
redis.call('SET', KEYS[2], string.format('%d-%d', ms, n))
redis.call('XTRIM', KEYS[1], 'MINID', '~', now - tonumber(ARGV[2]))
local added = (#ARGV - 2) / 3
return {added, before + added - redis.call('XLEN', KEYS[1])}
