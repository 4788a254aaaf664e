-- The id of the first entry to keep when trimming KEYS[1] (a stream) to MAXLEN ARGV[1], removing at
-- most ARGV[2] entries; false when the stream is not longer than ARGV[1] (bot.streams.trim_acknowledged).
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return false end
if excess > tonumber(ARGV[2]) then excess = tonumber(ARGV[2]) end
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess + 1)
return entries[#entries][1]
