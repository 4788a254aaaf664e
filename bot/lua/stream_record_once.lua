-- Record exactly once (bot.streams.record_once): unless the marker (or a guard) exists, XADD the
-- fields and SET the marker to prefix .. new id; in every case XACK the consumed entry.
-- KEYS[1] marker to set, KEYS[2] stream to append to, KEYS[3] stream to ack, KEYS[4..] more guards
-- ARGV[1] group, ARGV[2] id to ack, ARGV[3] marker ttl (s), ARGV[4] MAXLEN or '', ARGV[5] marker
-- value prefix, ARGV[6] '1' = nothing for an entry the group delivered and acked, ARGV[7..] field, value, ...
-- Returns {1, new id} when written, {0, the existing marker's value} when already done.
--!include stream_record_once_common
local guards, fields = {}, {}
for i = 4, #KEYS do guards[#guards + 1] = KEYS[i] end
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
return record_once(KEYS[1], KEYS[2], KEYS[3], guards, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6] == '1',
                   fields)
