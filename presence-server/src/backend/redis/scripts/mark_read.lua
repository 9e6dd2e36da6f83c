-- Moves read markers of one room forward, never back.
-- KEYS[1] the room's marker hash; ARGV user, marker, user, marker, ... with
-- markers as canonical decimals (no leading zero). Returns the 1-based
-- positions of the pairs that moved. Markers reach 2^53 and beyond, past
-- what Lua numbers hold exactly, so they are compared as digit strings: by
-- length, then byte by byte. A stored value that is not a canonical
-- decimal is overwritten.
local function decimal(s)
  return s == '0' or string.match(s, '^[1-9][0-9]*$') ~= nil
end
local function less(a, b)
  if #a ~= #b then
    return #a < #b
  end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return false
end
local moved = {}
for i = 1, #ARGV - 1, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if not old or not decimal(old) or less(old, ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    moved[#moved + 1] = (i + 1) / 2
  end
end
return moved
