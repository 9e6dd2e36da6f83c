-- Drops announced changes from the front of a user's owed list: each front
-- entry whose "<i>:<q>" is among ARGV (a newer one queued behind stays).
-- KEYS[1] the owed list. Returns how many went.
local done = {}
for i = 1, #ARGV do
  done[ARGV[i]] = true
end
local n = 0
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then
    break
  end
  local ok, e = pcall(cjson.decode, head)
  -- An entry that does not decode can never be announced: it goes too.
  if ok and type(e) == 'table' and not done[tostring(e.i) .. ':' .. tostring(e.q)] then
    break
  end
  redis.call('LPOP', KEYS[1])
  n = n + 1
end
return n
