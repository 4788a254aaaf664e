-- XGROUP DELCONSUMER, atomically, only if the consumer has no pending entries and has been idle long
-- enough: a consumer's pending entries would become unclaimable (bot.streams.delete_consumer_if_idle).
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle (ms). Returns 1 when deleted, else 0.
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(consumers) ~= 'table' or consumers['err'] then return 0 end
for _, row in ipairs(consumers) do
  local info = {}
  for i = 1, #row, 2 do info[row[i]] = row[i + 1] end
  if info['name'] == ARGV[2] then
    if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 0
