-- Compare-and-set of one incarnation's record: replaces it only if it is
-- still exactly the value the caller read; the change is owed to the event
-- stream (see owe.lua).
-- KEYS[1] the user's hash, KEYS[2] its owed list; ARGV[1] incarnation,
-- ARGV[2] expected value, ARGV[3] new value, ARGV[4] retention in ms,
-- ARGV[5] the new value's sequence, ARGV[6] the owed list's bound.
-- Returns {HGETALL, owed list}, or nil if the value changed.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return false
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
retain(KEYS[1], all, ARGV[4])
return {all, owe(KEYS[2], ARGV[1], ARGV[5], ARGV[2], all, ARGV[6], ARGV[4])}
