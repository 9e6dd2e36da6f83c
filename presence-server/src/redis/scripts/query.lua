
-- query (read only): ARGV = prefix, op, args...
--   views u1 u2 ...     -> JSON list of views
--   members room        -> JSON list of the visible members' views
--   shares viewer target -> 1 if they are in a room together, else 0
local op = ARGV[2]
if op == 'views' then
  local views = {}
  for i = 3, #ARGV do views[#views + 1] = view(ARGV[i], hgetall(P .. ':u:' .. ARGV[i])) end
  return cjson.encode(views)
elseif op == 'members' then
  local views = {}
  for _, u in ipairs(redis.call('HKEYS', P .. ':r:' .. ARGV[3])) do
    local v = view(u, hgetall(P .. ':u:' .. u))
    if v.state ~= 'offline' then views[#views + 1] = v end
  end
  return cjson.encode(views)
elseif op == 'shares' then
  local _, _, rooms = merge(hgetall(P .. ':u:' .. ARGV[3]))
  for r in pairs(rooms) do
    if redis.call('HEXISTS', P .. ':r:' .. r, ARGV[4]) == 1 then return 1 end
  end
  return 0
end
return redis.error_reply('unknown query')
