-- Record exactly once (bot.streams.record_once): unless the marker (or a guard) exists, XADD the
-- fields and SET the marker to prefix .. new id; in every case XACK the consumed entry.
-- KEYS[1] marker to set, KEYS[2] stream to append to, KEYS[3] stream to ack, KEYS[4..] more guards
-- ARGV[1] group, ARGV[2] id to ack, ARGV[3] marker ttl (s), ARGV[4] MAXLEN or '', ARGV[5] marker
-- value prefix, ARGV[6] '1' = nothing for an entry the group delivered and acked, ARGV[7..] field, value, ...
-- Returns {1, new id} when written, {0, the existing marker's value} when already done.
-- Lua does not roll back: the XADD (the only call that can fail on bad state) comes first.
for i = 1, #KEYS do
  if i ~= 2 and i ~= 3 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.pcall('XACK', KEYS[3], ARGV[1], ARGV[2])
    local seen = redis.pcall('GET', KEYS[i])
    if type(seen) ~= 'string' then seen = '' end
    return {0, seen}
  end
end
-- An entry delivered and no longer pending was acked by whoever recorded it: a consumer that held
-- it past the marker's ttl (paused, partitioned) must not record it a second time. NOGROUP (Redis
-- lost the group) records: the group is recreated at 0 and the marker set here guards the redelivery.
-- ids compared as digit strings (by length, then lexically): tonumber would lose digits past 2^53
local function cmp_digits(x, y)
  if #x ~= #y then return #x < #y and -1 or 1 end
  if x == y then return 0 end
  return x < y and -1 or 1
end
local function id_at_or_below(id, bound)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(bound, '^(%d+)-(%d+)$')
  if not ms or not bms then return false end
  local c = cmp_digits(ms, bms)
  if c ~= 0 then return c < 0 end
  return cmp_digits(seq, bseq) <= 0
end
local function acked(stream, group, id)
  local pending = redis.pcall('XPENDING', stream, group, id, id, 1)
  if type(pending) ~= 'table' or #pending > 0 then return false end
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if type(groups) ~= 'table' then return false end
  for _, info in ipairs(groups) do
    local fields = {}
    for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
    if fields['name'] == group then
      return id_at_or_below(id, fields['last-delivered-id'])
    end
  end
  return false
end
if ARGV[6] == '1' and acked(KEYS[3], ARGV[1], ARGV[2]) then
  local seen = redis.pcall('GET', KEYS[1])
  if type(seen) ~= 'string' then seen = '' end
  return {0, seen}
end
local add = {'XADD', KEYS[2]}
if ARGV[4] ~= '' then
  table.insert(add, 'MAXLEN'); table.insert(add, '~'); table.insert(add, ARGV[4])
end
table.insert(add, '*')
for i = 7, #ARGV do table.insert(add, ARGV[i]) end
local id = redis.call(unpack(add))
redis.call('SET', KEYS[1], ARGV[5] .. id, 'EX', ARGV[3])
redis.pcall('XACK', KEYS[3], ARGV[1], ARGV[2])
return {1, id}
