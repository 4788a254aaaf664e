-- Reserve cash for a buy (bot.ledger.Ledger.reserve_buy). KEYS: see ledger_common.
-- ARGV: 1 id, 2 symbol, 3 price_used_u, 4 qty ("" = as many whole shares as the cash allows),
-- 5 cash_u of that qty, 6 max_cash_u ("" = no cap), 7 now, 8 max_age, 9 margin, 10 price (text),
-- 11 max_position_u: most nano-shares the symbol's position may reach, counting the cached position
-- and every buy reservation of the symbol the positions do not show yet ("" = no cap)
--!include ledger_common
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return cjson.encode({status = 'exists', record = existing}) end
local acct = redis.call('HMGET', KEYS[2], 'cash', 'buying_power')
if not acct[1] or not acct[2] then return cjson.encode({status = 'noaccount'}) end
local cash_u = units(acct[1], 6)
local bp_u = units(acct[2], 6)
if cash_u == nil then return cjson.encode({status = 'corrupt_cache', field = 'cash', value = acct[1]}) end
if bp_u == nil then return cjson.encode({status = 'corrupt_cache', field = 'buying_power', value = acct[2]}) end
local held_u = 0
if ARGV[11] ~= '' then
  if not positions_polled() then return cjson.encode({status = 'nopositions'}) end
  local n, bad = held_units(ARGV[2], 'qty')
  if n == nil then return cjson.encode({status = 'corrupt_cache', field = ARGV[2], value = bad}) end
  held_u = math.max(0, n)  -- a short position is no long exposure
end
local now, max_age, margin = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local committed, _, bought, expired, corrupt = scan(as_of_of(KEYS[2], 'as_of', 'polled_at'),
                                                   as_of_of(KEYS[3], '_as_of', '_polled_at'), now, max_age, margin)
local available = math.max(0, math.min(cash_u, bp_u) - committed)
local cap = available
if ARGV[6] ~= '' then cap = math.min(cap, tonumber(ARGV[6])) end
local in_flight = bought[ARGV[2]] or 0
local room = nil  -- nano-shares the position may still grow by
if ARGV[11] ~= '' then room = math.max(0, tonumber(ARGV[11]) - held_u - in_flight) end
local price_u = tonumber(ARGV[3])
local qty, need
local limited_by_room = false
if ARGV[4] == '' then
  local n = math.floor(cap / price_u)
  while n > 0 and n * price_u > cap do n = n - 1 end
  if room ~= nil and n * 1000000000 > room then
    n = math.floor(room / 1000000000)
    limited_by_room = true
  end
  qty, need = fmt(n), n * price_u
  if n < 1 then need = price_u end
else
  qty, need = ARGV[4], tonumber(ARGV[5])
  limited_by_room = room ~= nil and units(ARGV[4], 9) > room
end
local info = {available = fmt(available), cap = fmt(cap), need = fmt(need), cash = fmt(cash_u),
              buying_power = fmt(bp_u), committed = fmt(committed), held = fmt(held_u),
              in_flight = fmt(in_flight), max_position = ARGV[11]}
if limited_by_room and (ARGV[4] ~= '' or qty == '0') then
  info.status = 'noroom'
  return reply(info, expired, corrupt)
end
if need > cap or (ARGV[4] == '' and qty == '0') then
  info.status = 'nocash'
  return reply(info, expired, corrupt)
end
local record = cjson.encode({symbol = ARGV[2], side = 'buy', qty = qty, qty_u = '0', cash_u = fmt(need),
                             price = ARGV[10], created_at = ARGV[7]})
redis.call('HSET', KEYS[1], ARGV[1], record)
info.status = 'ok'
info.record = record
return reply(info, expired, corrupt)
