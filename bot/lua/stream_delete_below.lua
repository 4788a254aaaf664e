-- Delete the entries of KEYS[1] below the id ARGV[1] (exclusive), at most ARGV[2] of them; returns
-- how many went (bot.streams.delete_below). XDEL of the ids read, not XTRIM MINID: Redis 6.2.5's
-- exact MINID trim also deletes newer entries of a node whose ids span more than 2^31 ms (~25 days,
-- a sparse stream), unread ones included.
local rows = redis.call('XRANGE', KEYS[1], '-', '(' .. ARGV[1], 'COUNT', tonumber(ARGV[2]))
if #rows == 0 then return 0 end
local ids = {}
for i, row in ipairs(rows) do ids[i] = row[1] end
return redis.call('XDEL', KEYS[1], unpack(ids))
