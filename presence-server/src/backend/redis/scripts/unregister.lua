-- Unregisters a dead incarnation whose index is empty, unless its lease came
-- back meanwhile (it then registers again and rewrites its records).
-- KEYS[1] the registry set, KEYS[2] the incarnation's lease; ARGV[1] it.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
return redis.call('SREM', KEYS[1], ARGV[1])
