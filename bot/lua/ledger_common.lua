-- Helpers shared by every ledger script (bot.ledger), included by each of them.
-- KEYS[1] ledger, KEYS[2] account, KEYS[3] positions.
local CAP = 9000000000000000  -- < 2^53: bigger cache values are clamped DOWN (the safe side)

local function fmt(n) return string.format('%.0f', n) end

-- floor(decimal string * 10^scale) as an exact integer, or nil when not a plain decimal
local function units(s, scale)
  if type(s) ~= 'string' then return nil end
  local sign, ip, fp = string.match(s, '^%s*([%-+]?)(%d*)%.?(%d*)%s*$')
  if sign == nil or (ip == '' and fp == '') then return nil end
  ip = string.gsub(ip, '^0+', '')
  if #ip + scale > 15 then
    if sign == '-' then return -CAP end
    return CAP
  end
  local kept = string.sub(fp, 1, scale)
  local dropped = string.sub(fp, scale + 1)
  kept = kept .. string.rep('0', scale - #kept)
  local n = (tonumber(ip) or 0) * (10 ^ scale) + (tonumber(kept) or 0)
  if sign == '-' then
    n = -n
    if string.find(dropped, '[1-9]') then n = n - 1 end
  end
  return n
end

-- The reservations that still count: sums them, drops reflected and expired ones.
-- A settled buy counts its cash until the account shows it and its shares until the positions do
-- (the two hashes are polled by separate requests); it is dropped once both show it (or the
-- account does and positions were never polled).
-- Returns committed cash (micro-$), {symbol -> nano-shares of sells}, {symbol -> nano-shares of
-- buys}, list of expired ids, list of corrupt ids.
local function scan(acct_as_of, pos_as_of, now, max_age, margin)
  local all = redis.call('HGETALL', KEYS[1])
  local cash, shares, bought, expired, corrupt, drop = 0, {}, {}, {}, {}, {}
  for i = 1, #all, 2 do
    local id = all[i]
    local ok, rec = pcall(cjson.decode, all[i + 1])
    if not ok or type(rec) ~= 'table' or tonumber(rec.created_at) == nil then
      table.insert(corrupt, id)
      table.insert(drop, id)
    else
      local settled_at = tonumber(rec.settled_at)
      -- in_cash: counts against the account's cash; in_pos: counts against the positions
      local in_cash, in_pos = true, true
      if settled_at ~= nil then
        -- the cache now shows this order's effect once polled by a request sent after the settle
        in_cash = not (acct_as_of ~= nil and acct_as_of > settled_at + margin)
        in_pos = not (pos_as_of ~= nil and pos_as_of > settled_at + margin)
        if now - settled_at > max_age then
          in_cash, in_pos = false, false
          table.insert(expired, id)
        end
      elseif now - tonumber(rec.created_at) > max_age then
        in_cash, in_pos = false, false
        table.insert(expired, id)
      end
      local counts
      if rec.side == 'buy' then
        if in_cash then cash = cash + (tonumber(rec.cash_u) or 0) end
        if in_pos then bought[rec.symbol] = (bought[rec.symbol] or 0) + (units(rec.qty, 9) or 0) end
        counts = in_cash or (in_pos and pos_as_of ~= nil)
      else
        if in_pos then shares[rec.symbol] = (shares[rec.symbol] or 0) + (tonumber(rec.qty_u) or 0) end
        counts = in_pos
      end
      if not counts then table.insert(drop, id) end
    end
  end
  for i = 1, #drop, 200 do
    redis.call('HDEL', KEYS[1], unpack(drop, i, math.min(i + 199, #drop)))
  end
  return cash, shares, bought, expired, corrupt
end

-- The cached position of a symbol in nano-shares: (units, nil), (nil, raw) when unreadable.
-- field_name: 'qty_available' (what a sell may take; falls back to qty) or 'qty' (what is held).
local function held_units(symbol, field_name)
  local raw = redis.call('HGET', KEYS[3], symbol)
  if not raw then return 0, nil end
  local ok, pos = pcall(cjson.decode, raw)
  if not ok or type(pos) ~= 'table' then return nil, raw end
  local text = pos[field_name]
  if type(text) ~= 'string' then text = pos.qty end
  local n = units(text, 9)
  if n == nil then return nil, raw end
  return n, nil
end

local function positions_polled()
  return redis.call('HEXISTS', KEYS[3], '_polled_at') == 1 or redis.call('HEXISTS', KEYS[3], '_as_of') == 1
end

local function as_of_of(key, as_of_field, polled_field)
  local v = redis.call('HMGET', key, as_of_field, polled_field)
  return tonumber(v[1]) or tonumber(v[2])
end

local function reply(t, expired, corrupt)
  t.expired = expired
  t.corrupt = corrupt
  return cjson.encode(t)
end
