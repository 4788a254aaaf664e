-- The totals that still count (and prunes the rest) (bot.ledger). KEYS: see ledger_common.
-- ARGV: 1 now, 2 max_age, 3 margin.
--!include ledger_common
local cash, shares, bought, expired, corrupt = scan(as_of_of(KEYS[2], 'as_of', 'polled_at'),
                                                    as_of_of(KEYS[3], '_as_of', '_polled_at'),
                                                    tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local out, buys = {}, {}
for symbol, n in pairs(shares) do out[symbol] = fmt(n) end
for symbol, n in pairs(bought) do buys[symbol] = fmt(n) end
return reply({status = 'ok', cash = fmt(cash), shares = out, buys = buys}, expired, corrupt)
