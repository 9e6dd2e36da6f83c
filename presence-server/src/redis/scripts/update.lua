
-- update: ARGV = prefix, node, epoch, lease ttl ms, now ms, payload JSON
-- {users: [{u, n, la, ls, r, t, rd, st}], gone: [user], snaps: [{c, room}],
--  watch: [{c, users}], ss: [user]}. Refreshes the lease (re-taking it if it
-- expired: returns 1, and the caller then re-publishes all its state),
-- applies the records, publishes the cluster diffs, then answers the snapshot
-- and watch requests on the node's own channel: after the diffs, in order.
local node, epoch, ttl, now = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local req = cjson.decode(ARGV[6])
local lease = P .. ':node:' .. node
local reacquired = 0
if redis.call('GET', lease) ~= epoch then reacquired = 1 end
redis.call('SET', lease, epoch, 'PX', ttl)
redis.call('SADD', P .. ':nodes', node)
for _, rec in ipairs(req.users or {}) do apply(rec.u, node, rec, now) end
for _, u in ipairs(req.gone or {}) do apply(u, node, nil, now) end
publish(node, now)

local snaps, watch, self = {}, {}, {}
local function visible(u, cache)
  if cache[u] == nil then
    local shown = redis.call('HGET', P .. ':u:' .. u, 'shown')
    cache[u] = (shown and shown ~= 'o') and true or false
  end
  return cache[u]
end
for _, s in ipairs(req.snaps or {}) do
  local room, cache = s.room, {}
  local members, typing, receipts = {}, {}, {}
  for _, u in ipairs(redis.call('HKEYS', P .. ':r:' .. room)) do
    if visible(u, cache) then members[#members + 1] = view(u, hgetall(P .. ':u:' .. u)) end
  end
  for _, u in ipairs(redis.call('HKEYS', P .. ':t:' .. room)) do
    if visible(u, cache) and redis.call('HEXISTS', P .. ':r:' .. room, u) == 1 then typing[#typing + 1] = u end
  end
  local rc = redis.call('HGETALL', P .. ':rc:' .. room)
  for i = 1, #rc, 2 do
    if visible(rc[i], cache) and redis.call('HEXISTS', P .. ':r:' .. room, rc[i]) == 1 then
      receipts[#receipts + 1] = { rc[i], rc[i + 1] }
    end
  end
  snaps[#snaps + 1] = { c = s.c, room = room, members = members, typing = typing, receipts = receipts }
end
for _, w in ipairs(req.watch or {}) do
  local views = {}
  for _, u in ipairs(w.users or {}) do views[#views + 1] = view(u, hgetall(P .. ':u:' .. u)) end
  watch[#watch + 1] = { c = w.c, users = views }
end
for _, u in ipairs(req.ss or {}) do
  local st = redis.call('HMGET', P .. ':u:' .. u, 'status', 'text')
  if st[1] then self[#self + 1] = { user = u, status = st[1], text = st[2] or nil } end
end
if #snaps + #watch + #self > 0 then
  redis.call('PUBLISH', P .. ':node:' .. node, cjson.encode({ snaps = snaps, watch = watch, self = self }))
end
return reacquired
