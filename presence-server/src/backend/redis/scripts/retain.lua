-- Shared by write.lua and replace.lua: keeps a user's hash while any record
-- holds the user (its value starts with 'h'), else lets it expire after the
-- retention (ms). Only the first character of a value is ever looked at.
local function retain(key, all, ms)
  for i = 2, #all, 2 do
    if string.sub(all[i], 1, 1) == 'h' then
      redis.call('PERSIST', key)
      return
    end
  end
  redis.call('PEXPIRE', key, ms)
end
