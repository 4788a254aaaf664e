-- One broker order event: the stream entry, the order's latest state (forward only), the doorbell.
-- KEYS[1] tradebot:order_events   KEYS[2] tradebot:order:{coid}   KEYS[3] tradebot:wake:{coid}
-- ARGV[1] identity of the event (a duplicate delivery of it changes nothing)
-- ARGV[2] order updated_at (epoch seconds)  ARGV[3] 1 when the status is final  ARGV[4] filled qty
-- ARGV[5] rank of the status in an order's life (ties of updated_at and filled qty)
-- ARGV[6] MINID for trimming the stream by age ("" = no trim)   ARGV[7] state ttl (ms)
-- ARGV[8] 1: always add the stream entry (a stream event); 0: only when it moved the state (a back-fill)
-- ARGV[9] n, then n stream field/value arguments, then the state's field/value arguments
-- Returns {added to the stream (0/1), moved the state (0/1)}.
-- Forward only: events arrive duplicated, late and out of order (a reconnect's back-fill races the
-- stream); a final state is never replaced by a non-final one, and an older update never wins.
local seen = 'seen:' .. ARGV[1]
if redis.call('HEXISTS', KEYS[2], seen) == 1 then
  return {0, 0}
end
local new = {tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])}
local final = ARGV[3] == '1'
local stored = redis.call('HMGET', KEYS[2], 'updated', 'filled_qty', 'rank', 'final')
local moved = true
if stored[1] then
  if stored[4] == '1' and not final then
    moved = false
  else
    local old = {tonumber(stored[1]), tonumber(stored[2]) or 0, tonumber(stored[3]) or 0}
    moved = false
    for i = 1, 3 do  -- lexicographic: later update, then more filled, then further in life
      if new[i] ~= old[i] then
        moved = new[i] > old[i]
        break
      end
    end
  end
end
local n = tonumber(ARGV[9])
local added = 0
if ARGV[8] == '1' or moved then
  local entry = {}
  for i = 10, 9 + n do entry[#entry + 1] = ARGV[i] end
  if ARGV[6] ~= '' then
    redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[6], '*', unpack(entry))
  else
    redis.call('XADD', KEYS[1], '*', unpack(entry))
  end
  added = 1
end
redis.call('HSET', KEYS[2], seen, '1')
if moved then
  local state = {'updated', ARGV[2], 'final', ARGV[3], 'filled_qty', ARGV[4], 'rank', ARGV[5]}
  for i = 10 + n, #ARGV do state[#state + 1] = ARGV[i] end
  redis.call('HSET', KEYS[2], unpack(state))
  redis.call('LPUSH', KEYS[3], '1')
  redis.call('LTRIM', KEYS[3], 0, 0)
  redis.call('PEXPIRE', KEYS[3], 60000)
end
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return {added, moved and 1 or 0}
