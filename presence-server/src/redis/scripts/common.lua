-- Shared by every script (prepended to each): the node-level -> cluster-level
-- merge. ARGV[1] is the key prefix. Keys:
--   P:u:<user>   hash: n:<node> = "<state> <last_active>" (state: a | no_input |
--                blurred | hidden | locked | o), r:<node> / t:<node> = rooms
--                joined / typing in, space-separated (ids hold no whitespace);
--                status, text, sat (status time), shown (what the cluster last
--                announced), ls (cluster last seen)
--   P:r:<room>   hash user -> number of nodes holding the user in the room
--   P:t:<room>   hash user -> number of nodes where the user types in the room
--   P:rc:<room>  hash user -> read marker (forward only, decimal string)
--   P:node:<id>  lease (value: epoch, with a TTL); P:node:<id>:users set
--   P:nodes      set of registered nodes; P:seq counter of published messages
local P = ARGV[1]
local RANK = { no_input = 0, blurred = 1, hidden = 2, locked = 3 }
local out = {}

local function split(s)
  local t = {}
  if s then
    for w in string.gmatch(s, '%S+') do t[#t + 1] = w end
  end
  return t
end

local function set_of(list)
  local t = {}
  for _, v in ipairs(list) do t[v] = true end
  return t
end

local function sorted(set)
  local l = {}
  for k in pairs(set) do l[#l + 1] = k end
  table.sort(l)
  return l
end

local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end

-- The cluster-level state of a user hash: active if any node is active, idle
-- with the most present reason if any node is online, offline otherwise or
-- when the (user-level) status is invisible. Also the latest last_active and
-- the union of the rooms every node holds the user in.
local function merge(h)
  local best, la, rooms = nil, 0, {}
  for f, v in pairs(h) do
    if string.sub(f, 1, 2) == 'n:' then
      local st, l = string.match(v, '^(%S+) (%d+)$')
      if st == 'a' then
        best = 'a'
      elseif st and RANK[st] and best ~= 'a' and (best == nil or RANK[st] < RANK[best]) then
        best = st
      end
      local n = tonumber(l) or 0
      if n > la then la = n end
    elseif string.sub(f, 1, 2) == 'r:' then
      for _, r in ipairs(split(v)) do rooms[r] = true end
    end
  end
  if best == nil or h.status == 'invisible' then best = 'o' end
  return best, la, rooms
end

-- A PresenceView as serde reads it.
local function view(u, h)
  local shown = h.shown or 'o'
  local _, la = merge(h)
  local invisible = h.status == 'invisible'
  local v = { user = u, status = invisible and 'available' or (h.status or 'available') }
  if not invisible and h.text then v.text = h.text end
  if shown == 'o' then
    v.state = 'offline'
    local ls = tonumber(h.ls or '')
    if ls then v.last_seen = ls end
  else
    v.state = (shown == 'a') and 'active' or 'idle'
    if shown ~= 'a' then v.reason = shown end
    if la > 0 then v.last_active = la end
  end
  return v
end

local function emit(diff, rooms, global)
  out[#out + 1] = { d = diff, rooms = rooms, g = global }
end

local function room_changes(u, h, rooms0, rooms1, now)
  local left, joined = {}, {}
  for r in pairs(rooms0) do if not rooms1[r] then left[r] = true end end
  for r in pairs(rooms1) do if not rooms0[r] then joined[r] = true end end
  return left, joined
end

-- Applies one node's record of one user (rec == nil: the node holds nothing
-- of the user any more) and emits what observers must now see, exactly once:
-- the comparison is with what the cluster last announced (`shown`).
local function apply(u, node, rec, now)
  local ukey = P .. ':u:' .. u
  local h = hgetall(ukey)
  local _, _, rooms0 = merge(h)
  local vis0 = (h.shown or 'o') ~= 'o'
  local status0, text0 = h.status or 'available', h.text

  -- The status is the user's, not the node's: the latest setting wins; a
  -- time of 0 only fills in an unknown status (a node re-publishing).
  if rec and type(rec.st) == 'table' then
    local st, tx, at = rec.st[1], rec.st[2], tonumber(rec.st[3]) or 0
    local at0 = tonumber(h.sat or '')
    if type(st) == 'string' and ((at == 0 and at0 == nil) or (at > 0 and (at0 == nil or at >= at0))) then
      h.status, h.sat = st, tostring(at)
      if type(tx) == 'string' and tx ~= '' then h.text = tx else h.text = nil end
      redis.call('HSET', ukey, 'status', h.status, 'sat', h.sat)
      if h.text then redis.call('HSET', ukey, 'text', h.text) else redis.call('HDEL', ukey, 'text') end
    end
  end

  local nf, rf, tf = 'n:' .. node, 'r:' .. node, 't:' .. node
  local oldr, oldt = set_of(split(h[rf])), set_of(split(h[tf]))
  local newr, newt = {}, {}
  local nodeusers = P .. ':node:' .. node .. ':users'
  local rl = (rec and type(rec.r) == 'table') and rec.r or {}
  local tl = (rec and type(rec.t) == 'table') and rec.t or {}
  if rec and (rec.n ~= 'o' or #rl > 0 or #tl > 0) then
    h[nf] = tostring(rec.n) .. ' ' .. string.format('%d', tonumber(rec.la) or 0)
    h[rf], h[tf] = table.concat(rl, ' '), table.concat(tl, ' ')
    newr, newt = set_of(rl), set_of(tl)
    redis.call('HSET', ukey, nf, h[nf], rf, h[rf], tf, h[tf])
    redis.call('SADD', nodeusers, u)
  else
    h[nf], h[rf], h[tf] = nil, nil, nil
    redis.call('HDEL', ukey, nf, rf, tf)
    redis.call('SREM', nodeusers, u)
  end
  for r in pairs(newr) do
    if not oldr[r] then redis.call('HINCRBY', P .. ':r:' .. r, u, 1) end
  end
  for r in pairs(oldr) do
    if not newr[r] and redis.call('HINCRBY', P .. ':r:' .. r, u, -1) <= 0 then
      redis.call('HDEL', P .. ':r:' .. r, u)
    end
  end
  local started, stopped = {}, {}
  for r in pairs(newt) do
    if not oldt[r] and redis.call('HINCRBY', P .. ':t:' .. r, u, 1) == 1 then started[#started + 1] = r end
  end
  for r in pairs(oldt) do
    if not newt[r] and redis.call('HINCRBY', P .. ':t:' .. r, u, -1) <= 0 then
      redis.call('HDEL', P .. ':t:' .. r, u)
      stopped[#stopped + 1] = r
    end
  end

  local s1, la1, rooms1 = merge(h)
  local s0 = h.shown or 'o'
  local vis1 = s1 ~= 'o'
  h.shown = s1
  if vis0 then
    for _, r in ipairs(stopped) do emit({ type = 'typing_stopped', user = u }, { r }, false) end
  end
  local status_changed = h.status ~= status0 or h.text ~= text0
  if status_changed then
    out[#out + 1] = { self = { user = u, status = h.status or 'available', text = h.text } }
    if vis0 and vis1 then
      emit({ type = 'status', user = u, status = h.status, text = h.text }, sorted(rooms1), true)
    end
  end
  local left, joined = room_changes(u, h, rooms0, rooms1, now)
  if s0 ~= s1 then
    redis.call('HSET', ukey, 'shown', s1)
    if not vis1 then
      local ls = now
      if rec and tonumber(rec.ls) and tonumber(rec.ls) > 0 then ls = tonumber(rec.ls) end
      redis.call('HSET', ukey, 'ls', string.format('%d', ls))
      emit({ type = 'user_disconnected', user = u, last_seen = ls }, sorted(rooms0), true)
    elseif not vis0 then
      emit({ type = 'user_connected', presence = view(u, h) }, sorted(rooms1), true)
    else
      if next(left) then emit({ type = 'user_disconnected', user = u, last_seen = now }, sorted(left), false) end
      local both = {}
      for r in pairs(rooms1) do if rooms0[r] then both[r] = true end end
      if s1 == 'a' then
        emit({ type = 'user_active', user = u }, sorted(both), true)
      else
        emit({ type = 'user_idle', user = u, reason = s1 }, sorted(both), true)
      end
      if next(joined) then emit({ type = 'user_connected', presence = view(u, h) }, sorted(joined), false) end
    end
  elseif vis1 then
    if next(left) then emit({ type = 'user_disconnected', user = u, last_seen = now }, sorted(left), false) end
    if next(joined) then emit({ type = 'user_connected', presence = view(u, h) }, sorted(joined), false) end
  end
  if vis1 then
    for _, r in ipairs(started) do
      if rooms1[r] then emit({ type = 'typing_started', user = u }, { r }, false) end
    end
  end
  if rec and type(rec.rd) == 'table' then
    for _, rd in ipairs(rec.rd) do
      local room, m = rd[1], rd[2]
      local cur = redis.call('HGET', P .. ':rc:' .. room, u)
      if type(m) == 'string' and tonumber(m) and (not cur or tonumber(m) > tonumber(cur)) then
        redis.call('HSET', P .. ':rc:' .. room, u, m)
        if vis1 and rooms1[room] then out[#out + 1] = { rd = { u, room, m } } end
      end
    end
  end
  -- A user no node holds keeps their status and last seen for a day.
  if next(rooms1) == nil and s1 == 'o' and not h[nf] then
    local held = false
    for f in pairs(h) do if string.sub(f, 1, 2) == 'n:' then held = true break end end
    if not held then redis.call('PEXPIRE', ukey, 86400000) end
  else
    redis.call('PERSIST', ukey)
  end
end

-- One message per script call on P:events, numbered, so a busy node costs one
-- PUBLISH per batch window, not one per change.
local function publish(node, now)
  if #out > 0 then
    local seq = redis.call('INCR', P .. ':seq')
    redis.call('PUBLISH', P .. ':events', cjson.encode({ seq = seq, from = node, at = now, e = out }))
  end
  return #out
end
