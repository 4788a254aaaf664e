-- Shared prelude of the rate-limit scripts (bot.ratelimit), included by each of them.
-- KEYS[1] bucket hash; ARGV[1] tokens per second; ARGV[2] burst; ARGV[3] now
-- (Unix seconds, or "" for the server's TIME); ARGV[4] "1" = follow an announced limit, "0" = the
-- operator fixed this rate (TRADEBOT_RATE_LIMIT set). Leaves tokens refilled up to now in `tokens`.
-- A `limit` field (requests per minute the broker announced in X-RateLimit-Limit, written by
-- ratelimit_observe) replaces the caller's rate, so the whole fleet follows one announcement;
-- while it is set the hash lives at least LIMIT_TTL seconds (refreshed by every observed answer).
local LIMIT_TTL = 600
local rate = tonumber(ARGV[1])
local burst_given = tonumber(ARGV[2])
local burst = burst_given
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'paused_until', 'limit')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
local paused_until = tonumber(state[3]) or 0
local limit = tonumber(state[4])
local follows = ARGV[4] ~= '0'
local function follow_limit()
  if follows and limit ~= nil and limit > 0 then
    rate = limit / 60
    burst = math.min(burst_given, limit)
  end
end
follow_limit()
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
  if limit ~= nil then
    redis.call('HSET', KEYS[1], 'limit', tostring(limit))
  end
  -- a full, unpaused bucket equals no hash at all: let it go once that is true
  local idle = math.max(0, burst - tokens) / rate + math.max(0, paused_until - now)
  local ttl = math.ceil(idle * 1000) + 1000
  if limit ~= nil then
    ttl = math.max(ttl, LIMIT_TTL * 1000)
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
end
