-- Stores one incarnation's record of a user; answers what it held before,
-- what the hash holds after, and the user's owed changes, as of this write.
-- A record whose sequence is not greater than the stored one's is not
-- written: an incarnation's record never goes back, so a cleaner's expired
-- record (sequence + 1) fences off the late writes of the dead incarnation
-- it cleaned. A written record is owed to the event stream: the change goes
-- into the owed list beside the hash in the same step (see owe.lua).
-- KEYS[1] the user's hash, KEYS[2] its owed list; ARGV[1] incarnation,
-- ARGV[2] stored value, ARGV[3] retention in ms, ARGV[4] the value's
-- sequence, ARGV[5] the owed list's bound. Returns {old value or nil,
-- HGETALL, the owed entries before this write's, 1 if written else 0}:
-- the writer knows its own change from the first two.
local function seq(v)
  return string.match(v, '^[ho] {"q":(%d+)')
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local a, b = seq(old), seq(ARGV[2])
  -- Decimal strings: by length, then byte by byte.
  if a and b and (#b < #a or (#b == #a and b <= a)) then
    return {old, redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1), 0}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
retain(KEYS[1], all, ARGV[3])
local owed = owe(KEYS[2], ARGV[1], ARGV[4], old, all, ARGV[5], ARGV[3])
table.remove(owed)
return {old, all, owed, 1}
