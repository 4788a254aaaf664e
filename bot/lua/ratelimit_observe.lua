-- The broker's view (bot.ratelimit.RateLimiter.observe). KEYS and ARGV 1-4: see ratelimit_prelude.
-- ARGV[5] remaining ("" = unknown), ARGV[6] reset ("" = unknown),
-- ARGV[7] "1" when reset is epoch seconds, "0" when seconds from now; ARGV[8] longest pause;
-- ARGV[9] pause when no reset is given; ARGV[10] the announced limit per minute ("" = none given).
-- Returns the pause now in force, in seconds.
--!include ratelimit_prelude
local announced = tonumber(ARGV[10] or '')
if announced ~= nil and announced >= 1 then
  -- the broker's X-RateLimit-Limit: from now on the bucket refills at its rate, fleet-wide
  limit = math.floor(announced)
  follow_limit()
  tokens = math.min(tokens, burst)
end
local remaining = tonumber(ARGV[5])
local reset = tonumber(ARGV[6])
if remaining ~= nil then
  -- never believe we hold more tokens than the broker says are left
  tokens = math.min(tokens, math.max(0, remaining))
  if remaining <= 0 then
    local pause = tonumber(ARGV[9])
    if reset ~= nil then
      if ARGV[7] == '1' then pause = reset - now else pause = reset end
    end
    pause = math.min(math.max(pause, 0), tonumber(ARGV[8]))
    -- pauses only ever extend: an older, shorter answer must not cut a longer one short
    paused_until = math.max(paused_until, now + pause)
  end
end
save()
return string.format('%.6f', math.max(0, paused_until - now))
