-- Takes a role if nobody holds it, or keeps it for its holder, for a TTL;
-- with a state, also saves it, only for the holder.
-- KEYS[1] the role's holder, KEYS[2] its saved state; ARGV[1] who asks,
-- ARGV[2] the TTL in ms, ARGV[3] the state to save ('' for none).
-- Returns {held (1 or 0), the saved state or false}.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {0, redis.call('GET', KEYS[2])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3])
end
return {1, redis.call('GET', KEYS[2])}
