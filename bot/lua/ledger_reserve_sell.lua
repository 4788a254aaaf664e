-- Reserve shares for a sell (bot.ledger.Ledger.reserve_sell). KEYS: see ledger_common.
-- ARGV: 1 id, 2 symbol, 3 qty_u ("" = all available), 4 now, 5 max_age, 6 margin,
-- 7 max_qty_u (with "" in 3: take at most this many; "" = no cap)
--!include ledger_common
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return cjson.encode({status = 'exists', record = existing}) end
local pos_as_of = as_of_of(KEYS[3], '_as_of', '_polled_at')
if not positions_polled() then
  return cjson.encode({status = 'noaccount'})
end
local held_u, bad = held_units(ARGV[2], 'qty_available')
if held_u == nil then return cjson.encode({status = 'corrupt_cache', field = ARGV[2], value = bad}) end
local now, max_age, margin = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local _, shares, _, expired, corrupt = scan(as_of_of(KEYS[2], 'as_of', 'polled_at'), pos_as_of, now, max_age, margin)
local reserved = shares[ARGV[2]] or 0
local available = math.max(0, held_u - reserved)
local need = available
if ARGV[3] ~= '' then
  need = tonumber(ARGV[3])
elseif ARGV[7] ~= '' then
  need = math.min(available, tonumber(ARGV[7]))
end
local info = {available = fmt(available), need = fmt(need), held = fmt(held_u), reserved = fmt(reserved)}
if need <= 0 or need > available then
  info.status = 'noshares'
  return reply(info, expired, corrupt)
end
local record = cjson.encode({symbol = ARGV[2], side = 'sell', qty_u = fmt(need), cash_u = '0',
                             price = '0', created_at = ARGV[4]})
redis.call('HSET', KEYS[1], ARGV[1], record)
info.status = 'ok'
info.record = record
return reply(info, expired, corrupt)
