-- Reads one shard of the event stream after a position, with the last id
-- given (its number tells how many entries the shard ever had).
-- KEYS[1] the shard; ARGV[1] the position (exclusive), ARGV[2] count (0:
-- only the last id). Returns {last, entries}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'0-0', {}}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then
    last = info[i + 1]
  end
end
if ARGV[2] == '0' then
  return {last, {}}
end
return {last, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
