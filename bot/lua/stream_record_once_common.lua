-- The record-once step shared by stream_record_once and journal_record (bot.streams.record_once,
-- bot.worker.record), included by each of them: a function of its keys and arguments, so a script
-- may do more around it.
--
-- record_once(marker, stream, ack_stream, guards, group, ack_id, ttl, maxlen, prefix, pending_only, fields):
-- unless the marker (or a guard) exists, XADD the fields to the stream and SET the marker to
-- prefix .. new id for ttl seconds; in every case XACK ack_id of ack_stream in group.
-- pending_only: nothing for an entry the group delivered and acked (see below).
-- Returns {1, new id} when written, {0, the existing marker's value} when already done.
-- Lua does not roll back: the XADD (the only call that can fail on bad state) comes first.

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

-- An entry delivered and no longer pending was acked by whoever recorded it: a consumer that held
-- it past the marker's ttl (paused, partitioned) must not record it a second time. NOGROUP (Redis
-- lost the group) records: the group is recreated at 0 and the marker set here guards the redelivery.
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

local function marker_value(key)
  local seen = redis.pcall('GET', key)
  if type(seen) ~= 'string' then seen = '' end
  return seen
end

local function record_once(marker, stream, ack_stream, guards, group, ack_id, ttl, maxlen, prefix, pending_only,
                           fields)
  for _, key in ipairs({marker, unpack(guards)}) do
    if redis.call('EXISTS', key) == 1 then
      redis.pcall('XACK', ack_stream, group, ack_id)
      return {0, marker_value(key)}
    end
  end
  if pending_only and acked(ack_stream, group, ack_id) then
    return {0, marker_value(marker)}
  end
  local add = {'XADD', stream}
  if maxlen ~= '' then
    table.insert(add, 'MAXLEN'); table.insert(add, '~'); table.insert(add, maxlen)
  end
  table.insert(add, '*')
  for i = 1, #fields do table.insert(add, fields[i]) end
  local id = redis.call(unpack(add))
  redis.call('SET', marker, prefix .. id, 'EX', ttl)
  redis.pcall('XACK', ack_stream, group, ack_id)
  return {1, id}
end
