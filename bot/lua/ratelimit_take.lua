-- Take one token (bot.ratelimit.RateLimiter.try_acquire). KEYS and ARGV 1-4: see ratelimit_prelude.
-- Returns the wait in seconds as a string: "0" = granted.
--!include ratelimit_prelude
local wait
if paused_until > now then
  wait = math.max(paused_until - now, 1e-6)  -- never '0.000000', which reads as a grant
elseif tokens >= 1 - 1e-6 then
  -- (a hair short of 1 is float noise of the refill: granted, so that a "wait" is never so short
  -- that it prints as "0.000000", which the caller would read as granted without a token taken)
  tokens = math.max(0, tokens - 1)
  wait = 0
else
  wait = math.max((1 - tokens) / rate, 1e-6)
end
save()
return string.format('%.6f', wait)
