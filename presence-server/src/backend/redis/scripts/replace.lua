-- Compare-and-set of one incarnation's record: replaces it only if it is
-- still exactly the value the caller read.
-- KEYS[1] the user's hash; ARGV[1] incarnation, ARGV[2] expected value,
-- ARGV[3] new value, ARGV[4] retention in ms. Returns HGETALL, or nil if the
-- value changed.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return false
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
retain(KEYS[1], all, ARGV[4])
return all
