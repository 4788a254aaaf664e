-- Take or keep a lease (bot.lease): KEYS[1] the lease; ARGV[1] holder; ARGV[2] ttl in ms.
-- Returns 1 when ARGV[1] holds it now (taken, or renewed), 0 when someone else does.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
