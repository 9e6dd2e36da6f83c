-- Stores one incarnation's record of a user; answers what it held before and
-- what the hash holds after, as of this write.
-- KEYS[1] the user's hash; ARGV[1] incarnation, ARGV[2] stored value,
-- ARGV[3] retention in ms. Returns {old value or nil, HGETALL}.
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
retain(KEYS[1], all, ARGV[3])
return {old, all}
