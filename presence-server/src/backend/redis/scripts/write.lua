-- Stores one incarnation's record of a user; answers what it held before and
-- what the hash holds after, as of this write. A record whose sequence is
-- not greater than the stored one's is not written: an incarnation's record
-- never goes back, so a cleaner's expired record (sequence + 1) fences off
-- the late writes of the dead incarnation it cleaned.
-- KEYS[1] the user's hash; ARGV[1] incarnation, ARGV[2] stored value,
-- ARGV[3] retention in ms. Returns {old value or nil, HGETALL}.
local function seq(v)
  return string.match(v, '^[ho] {"q":(%d+)')
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local a, b = seq(old), seq(ARGV[2])
  -- Decimal strings: by length, then byte by byte.
  if a and b and (#b < #a or (#b == #a and b <= a)) then
    return {old, redis.call('HGETALL', KEYS[1])}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
retain(KEYS[1], all, ARGV[3])
return {old, all}
