-- Drops announced changes from the front of a user's owed list: each front
-- entry whose first line ("<incarnation>:<sequence>") is among ARGV (a
-- newer one queued behind stays).
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
  local cut = string.find(head, '\n', 1, true)
  if not done[string.sub(head, 1, (cut or 0) - 1)] then
    break
  end
  redis.call('LPOP', KEYS[1])
  n = n + 1
end
return n
