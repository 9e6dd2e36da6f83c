
-- reap: ARGV = prefix, this node, now ms, budget, forced node ('' for none).
-- Removes the records of registered nodes whose lease expired (or of the
-- forced node: this node's previous incarnation), at most `budget` users per
-- call, and publishes what observers must see. Atomic, so two nodes reaping
-- the same dead node at once cannot announce anything twice. Returns
-- {users removed, nodes with users left}.
local me, now, budget, forced = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local nodes = (forced ~= '') and { forced } or redis.call('SMEMBERS', P .. ':nodes')
local removed, left = 0, 0
for _, n in ipairs(nodes) do
  if n == forced or (n ~= me and redis.call('EXISTS', P .. ':node:' .. n) == 0) then
    local key = P .. ':node:' .. n .. ':users'
    if budget > removed then
      for _, u in ipairs(redis.call('SRANDMEMBER', key, budget - removed)) do
        apply(u, n, nil, now)
        redis.call('SREM', key, u)
        removed = removed + 1
      end
    end
    if redis.call('SCARD', key) == 0 then
      if n ~= forced then redis.call('SREM', P .. ':nodes', n) end
    else
      left = left + 1
    end
  end
end
publish(me, now)
return { removed, left }
