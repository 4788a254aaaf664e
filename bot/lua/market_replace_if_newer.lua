-- Replace a market-cache hash atomically (DEL + HSET) unless it holds newer data (bot.market).
-- KEYS[1] hash; ARGV[1] name of its as_of field; ARGV[2] this write's as_of; ARGV[3..] field, value...
-- Returns 1 when written, 0 when the hash already holds newer data.
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored and tonumber(stored) and tonumber(stored) > tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1])
local chunk = 200  -- stay far below Lua's unpack limit on big position lists
for i = 3, #ARGV, chunk do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + chunk - 1, #ARGV)))
end
return 1
