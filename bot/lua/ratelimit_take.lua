-- Take one token (bot.ratelimit.RateLimiter.try_acquire). KEYS and ARGV 1-3: see ratelimit_prelude.
-- Returns the wait in seconds as a string: "0" = granted.
--!include ratelimit_prelude
local wait
if paused_until > now then
  wait = paused_until - now
elseif tokens >= 1 then
  tokens = tokens - 1
  wait = 0
else
  wait = (1 - tokens) / rate
end
save()
return string.format('%.6f', wait)
