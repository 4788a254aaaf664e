-- The settle step shared by ledger_settle and journal_record (bot.ledger.Ledger.settle,
-- bot.worker.record), included by each of them.
-- settle(ledger, id, qty, qty_u, cash_u, price, settled_at): the order is final; its reservation
-- keeps counting what filled (qty text, qty_u nano-shares; a buy's cash_u micro-dollars at price)
-- until the cache shows it. Nothing filled: dropped. Returns 'settled', 'released' or 'missing'.
local function settle(ledger, id, qty, qty_u, cash_u, price, settled_at)
  local raw = redis.call('HGET', ledger, id)
  if not raw then return 'missing' end
  if tonumber(qty_u) <= 0 then
    redis.call('HDEL', ledger, id)
    return 'released'
  end
  local rec = cjson.decode(raw)
  if rec.side == 'buy' then
    rec.qty = qty
    rec.cash_u = cash_u
    rec.price = price
  else
    rec.qty_u = qty_u
  end
  -- settling again (a replayed signal) keeps the first time: the fill was already known then
  if rec.settled_at == nil then rec.settled_at = settled_at end
  redis.call('HSET', ledger, id, cjson.encode(rec))
  return 'settled'
end
