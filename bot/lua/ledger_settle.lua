-- Settle a reservation: the order is final (bot.ledger.Ledger.settle). KEYS[1] ledger.
-- ARGV: 1 id, 2 filled qty (text), 3 filled qty_u, 4 filled cash_u, 5 price (text), 6 settled_at
--!include ledger_settle_common
return settle(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
