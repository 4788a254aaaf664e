-- A worker's journal entry and everything that goes with it, in one atomic step
-- (bot.worker.record.Recorder): the order's ledger reservation settled (or released), the journal
-- entry exactly once with the XACK (record_once: the done marker guards it), then, after a fill,
-- the poller's refresh ask and the symbol's cooldown. One round trip where there were four; and no
-- crash can fall between the settle and the journal any more. The settle still comes first: Lua
-- does not roll back, and a journal entry must never stand beside an unsettled reservation.
-- KEYS[1] done marker, KEYS[2] journal, KEYS[3] signals (the entry to ack), KEYS[4] ledger,
-- KEYS[5] refresh asks (list), KEYS[6] the symbol's cooldown key
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] marker ttl (s), ARGV[4] MAXLEN or '', ARGV[5] '1' =
-- nothing for an entry the group delivered and acked; ARGV[6] ledger: '' (nothing), 'release' or
-- 'settle', ARGV[7] client_order_id, ARGV[8..12] settle's filled qty (text), qty_u, cash_u, price
-- (text), settled_at; ARGV[13] refresh ask ('' = none), ARGV[14] asks kept at most; ARGV[15]
-- cooldown value ('' = none), ARGV[16] its ttl (ms); ARGV[17..] journal field, value, ...
-- Returns {1, journal id, ledger outcome} when written, {0, the marker's value, ledger outcome} when
-- the signal was recorded already (ledger outcome: 'settled', 'released', 'missing', 'kept': a release
-- not made, the entry being recorded already, or '').
--!include ledger_settle_common
--!include stream_record_once_common
local ledger = ''
if ARGV[6] == 'settle' then
  ledger = settle(KEYS[4], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12])
end
local fields = {}
for i = 17, #ARGV do fields[#fields + 1] = ARGV[i] end
local recorded = record_once(KEYS[1], KEYS[2], KEYS[3], {}, ARGV[1], ARGV[2], ARGV[3], ARGV[4], '', ARGV[5] == '1',
                             fields)
-- a release only with the entry it closes: a stale delivery refused above (recorded by another
-- worker, or acked past its marker) must not drop a reservation that worker settled, whose cash
-- then stops counting until the cached account shows the fill (an overspend window)
if ARGV[6] == 'release' then
  if recorded[1] == 1 then
    ledger = redis.call('HDEL', KEYS[4], ARGV[7]) == 1 and 'released' or 'missing'
  else
    ledger = 'kept'
  end
end
if ARGV[13] ~= '' then
  redis.call('LPUSH', KEYS[5], ARGV[13])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[14]) - 1)
end
if ARGV[15] ~= '' then
  redis.call('SET', KEYS[6], ARGV[15], 'PX', ARGV[16])
end
return {recorded[1], recorded[2], ledger}
