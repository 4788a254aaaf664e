-- Journal an order found at the broker (bot.reconcile): once per signal, and if the signal was
-- dead-lettered meanwhile (a POST whose outcome was unknown landed late), out of the DLQ.
-- KEYS[1] the signal's done marker   KEYS[2] the journal   KEYS[3] the DLQ
-- ARGV[1] marker ttl (s), ARGV[2..] journal field, value, ...
-- Returns {1, journal id, DLQ id or ''} when written, {0, the marker's value, ''} when journaled already.
local seen = redis.call('GET', KEYS[1])
local dead = ''
if seen then
  if string.sub(seen, 1, 4) ~= 'dlq:' then
    return {0, seen, ''}
  end
  dead = string.sub(seen, 5)
end
local add = {'XADD', KEYS[2], '*'}
for i = 2, #ARGV do add[#add + 1] = ARGV[i] end
local id = redis.call(unpack(add))
if dead ~= '' then
  redis.call('XDEL', KEYS[3], dead)
end
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return {1, id, dead}
