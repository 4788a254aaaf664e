-- XAUTOCLAIM that also resolves and reports pending entries whose data was deleted (bot.streams.autoclaim).
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle (ms), ARGV[4] cursor, ARGV[5] count.
-- Returns {next cursor, claimed entries, ids acked here, ids the server dropped}: no deleted entry
-- is left pending.
--
-- XAUTOCLAIM ... JUSTID then XCLAIM each id: on Redis 6.2 a plain XAUTOCLAIM answers nil without
-- the id for entries whose data was deleted, so they could never be acked; here XCLAIM answers nil
-- for them and they are acked.  JUSTID does not bump the delivery counter and the XCLAIM does, so
-- the net effect equals a plain XAUTOCLAIM.
-- Redis >= 7 (and Valkey) removes such entries from the PEL itself and names them in a third
-- element of the reply; they are acked anyway (a no-op there) and reported apart.
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5], 'JUSTID')
local entries, acked, dropped = {}, {}, {}
for _, id in ipairs(claimed[2]) do
  local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id)
  if got[1] then
    table.insert(entries, got[1])
  else
    redis.call('XACK', KEYS[1], ARGV[1], id)
    table.insert(acked, id)
  end
end
if claimed[3] then
  for _, id in ipairs(claimed[3]) do
    redis.call('XACK', KEYS[1], ARGV[1], id)
    table.insert(dropped, id)
  end
end
return {claimed[1], entries, acked, dropped}
