-- Reads one shard of the event stream after a position, with the last id
-- given (its number tells how many entries the shard ever had).
-- KEYS[1] the shard, KEYS[2] its last id; ARGV[1] the position
-- (exclusive), ARGV[2] count (0: only the last id). Returns {last, entries}.
local last = redis.call('GET', KEYS[2]) or '0-0'
if ARGV[2] == '0' or last == '0-0' then
  return {last, {}}
end
return {last, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
