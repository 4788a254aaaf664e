-- Deliver an entry this consumer left pending to it again.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] id.
-- Only while the id is pending FOR THIS CONSUMER (one another worker reclaimed, or that was acked,
-- is left alone): XCLAIM without JUSTID, so the delivery count goes up as with any redelivery.
-- Returns nil when not ours, {deliveries, {}} when its data was deleted (then acked), else
-- {deliveries, {field, value, ...}}.
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #mine == 0 then return false end
local deliveries = mine[1][4] + 1
local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3])
if got[1] then return {deliveries, got[1][2]} end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return {deliveries, {}}
