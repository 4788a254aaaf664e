-- Reset the idle time of a consumer's in-hand entries, so no other worker reclaims them.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] ids.
-- Re-claims (JUSTID: no delivery count bump) each id still pending FOR THIS CONSUMER; an id someone
-- else reclaimed meanwhile is left alone (never stolen back). Returns the ids kept.
local kept = {}
for i = 3, #ARGV do
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #mine > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
