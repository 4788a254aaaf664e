-- Shared prelude of the rate-limit scripts (bot.ratelimit), included by each of them.
-- KEYS[1] bucket hash; ARGV[1] tokens per second; ARGV[2] burst; ARGV[3] now
-- (Unix seconds, or "" for the server's TIME). Leaves tokens refilled up to now in `tokens`.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'paused_until')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
local paused_until = tonumber(state[3]) or 0
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  -- a clock that steps back (injected in tests, or a server restart) refills nothing
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local function save()
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', tokens), 'ts', string.format('%.6f', ts),
             'paused_until', string.format('%.6f', paused_until))
  -- a full, unpaused bucket equals no hash at all: let it go once that is true
  local idle = (burst - tokens) / rate + math.max(0, paused_until - now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(idle * 1000) + 1000)
end
