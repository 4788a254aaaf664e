-- Settle a reservation: the order is final (bot.ledger.Ledger.settle). KEYS[1] ledger.
-- ARGV: 1 id, 2 filled qty (text), 3 filled qty_u, 4 filled cash_u, 5 price (text), 6 settled_at
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 'missing' end
if tonumber(ARGV[3]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 'released'
end
local rec = cjson.decode(raw)
if rec.side == 'buy' then
  rec.qty = ARGV[2]
  rec.cash_u = ARGV[4]
  rec.price = ARGV[5]
else
  rec.qty_u = ARGV[3]
end
-- settling again (a replayed signal) keeps the first time: the fill was already known then
if rec.settled_at == nil then rec.settled_at = ARGV[6] end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(rec))
return 'settled'
