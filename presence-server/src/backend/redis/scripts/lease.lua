-- Renews an incarnation's lease, or registers a new incarnation. A renewal
-- never brings a lapsed lease back: others may be cleaning that incarnation,
-- so its node goes on as a new one instead.
-- KEYS[1] the lease, KEYS[2] the registry set; ARGV[1] the incarnation,
-- ARGV[2] the TTL in ms, ARGV[3] '1' to renew only, '0' to register.
-- Returns 1 renewed, 2 registered, 0 lapsed (nothing set).
if redis.call('SET', KEYS[1], '1', 'PX', ARGV[2], 'XX') then
  return 1
end
if ARGV[3] == '1' then
  return 0
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 2
