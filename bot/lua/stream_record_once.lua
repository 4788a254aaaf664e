-- Record exactly once (bot.streams.record_once): unless the marker (or a guard) exists, XADD the
-- fields and SET the marker to prefix .. new id; in every case XACK the consumed entry.
-- KEYS[1] marker to set, KEYS[2] stream to append to, KEYS[3] stream to ack, KEYS[4..] more guards
-- ARGV[1] group, ARGV[2] id to ack, ARGV[3] marker ttl (s), ARGV[4] MAXLEN or '', ARGV[5] marker
-- value prefix, ARGV[6..] field, value, ...
-- Returns {1, new id} when written, {0, the existing marker's value} when already done.
-- Lua does not roll back: the XADD (the only call that can fail on bad state) comes first.
for i = 1, #KEYS do
  if i ~= 2 and i ~= 3 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.pcall('XACK', KEYS[3], ARGV[1], ARGV[2])
    local seen = redis.pcall('GET', KEYS[i])
    if type(seen) ~= 'string' then seen = '' end
    return {0, seen}
  end
end
local add = {'XADD', KEYS[2]}
if ARGV[4] ~= '' then
  table.insert(add, 'MAXLEN'); table.insert(add, '~'); table.insert(add, ARGV[4])
end
table.insert(add, '*')
for i = 6, #ARGV do table.insert(add, ARGV[i]) end
local id = redis.call(unpack(add))
redis.call('SET', KEYS[1], ARGV[5] .. id, 'EX', ARGV[3])
redis.pcall('XACK', KEYS[3], ARGV[1], ARGV[2])
return {1, id}
