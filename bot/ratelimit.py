"""The fleet-wide request limiter: one token bucket per API budget, kept in Redis.

Every process that talks to one Alpaca account (all workers AND the poller) shares the same
buckets, so the account's budget (200 requests/min on the trading API, 200/min on free market
data) holds however many processes run. A bucket holds at most ``burst`` tokens and refills
continuously at ``per_minute / 60`` tokens a second; each request takes one token.

State per bucket lives in one hash (``Keys.ratelimit(bucket)``): ``tokens`` (float), ``ts`` (the
Unix time they were counted at) and ``paused_until`` (set by ``observe`` when the broker says the
budget is spent). One Lua script reads and updates it atomically, timed by the Redis server's
``TIME`` so hosts with skewed clocks agree (tests inject ``now`` instead). The hash expires once
the bucket would be full again: an absent hash means a full bucket, so idle buckets cost nothing.

Waiting is client-side: the script answers "granted" or "a token comes in N seconds", and
``acquire`` sleeps that long and asks again. The sleep is stop-aware when the limiter has a
``stop`` event (a process's SIGTERM): a fleet pause can last up to MAX_PAUSE (120 s), longer than
supervisord waits for a stopping process, so once stop is set a wait longer than
``STOPPING_MAX_WAIT`` raises RateLimitStopped at once, and a wait in progress ends early with it.
Tokens that are there (or come within that short wait) are still granted while stopping: a
stopping worker must still be able to follow and cancel the order in hand.

The limit the broker announces wins over the default one; a rate the operator set
(TRADEBOT_RATE_LIMIT / TRADEBOT_DATA_RATE_LIMIT given: ``fixed`` buckets) is kept, since it may be
lower on purpose (budget left for another program). ``per_minute`` is the budget assumed until an
answer carries X-RateLimit-Limit (a
1,000/min trading tier, 10,000/min on Algo Trader Plus data, or fewer than configured); ``observe(...,
limit=N)`` then stores N in the bucket hash (field ``limit``) and every process's scripts refill at
N/60 per second from then on, higher or lower than configured: the broker counts the account's
real budget, and X-RateLimit-Remaining (never more tokens than it says are left) already covers
requests of other programs on the same account. The burst stays the configured one (at most N).
While a limit is stored the hash lives at least 10 minutes; each process re-sends an unchanged
announcement at most every LIMIT_REFRESH seconds to keep it there.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from redis.cluster import ClusterPipeline

from bot import lua
from bot.config import DEFAULT_DATA_RATE_LIMIT
from bot.errors import TradebotError
from bot.keys import Keys

log = logging.getLogger(__name__)

TRADING = "trading"
DATA = "data"
DEFAULT_DATA_PER_MINUTE = DEFAULT_DATA_RATE_LIMIT  # Settings.data_rate_limit_per_minute's default
DEFAULT_BURST = 10
# A reset header further away than this is not believed: a garbage header must not freeze the fleet.
MAX_PAUSE = 120.0
# Pause used when the broker says the budget is spent but gives no reset time.
DEFAULT_PAUSE = 1.0
# While stopping, a wait for a token longer than this is not begun (a normal refill wait is ~0.3 s).
STOPPING_MAX_WAIT = 1.0
# Alpaca sends X-RateLimit-Reset as epoch seconds; anything smaller is read as "seconds from now".
_EPOCH_THRESHOLD = 1e9
# An unchanged X-RateLimit-Limit is written to Redis again at most this often (per process and bucket).
LIMIT_REFRESH = 60.0

# The bucket scripts are bot/lua/ratelimit_take.lua and ratelimit_observe.lua (their shared
# refill code: ratelimit_prelude.lua), run with KEYS[1] the bucket hash.


class RateLimitTimeout(TradebotError, TimeoutError):
    """``acquire`` could not get a token within its timeout."""

    def __init__(self, bucket: str, timeout: float, wait: float) -> None:
        super().__init__(f"rate limit: no {bucket!r} request token within {timeout:.2f}s "
                         f"(next token in {wait:.2f}s)")
        self.bucket = bucket
        self.timeout = timeout
        self.wait = wait


class RateLimitStopped(RateLimitTimeout):
    """``acquire`` gave up waiting because the process is stopping (the limiter's stop event is set)."""

    def __init__(self, bucket: str, wait: float) -> None:
        TimeoutError.__init__(self, f"rate limit: stopping; not waiting {wait:.2f}s for a {bucket!r} request token")
        self.bucket = bucket
        self.timeout = 0.0
        self.wait = wait


class RateLimiter:
    """Token buckets shared through Redis by every process of one account.

    ``per_minute``: bucket name -> requests per minute; a bucket not named is unlimited.
    ``burst``: bucket name -> most tokens a bucket holds (default ``min(10, per_minute)``), so a
    minute's budget is not spent in one second. ``now``: Unix-time source for tests; None (the
    default) uses the Redis server's clock. ``sleep`` waits between tries (tests inject one that
    advances their clock). ``stop``: the process's stop event; once set, long waits raise
    RateLimitStopped (see the module docstring). With the default ``sleep`` the wait itself wakes
    up when ``stop`` is set; an injected ``sleep`` is checked after it returns.
    """

    def __init__(self, r: Any, keys: Keys, per_minute: Mapping[str, int],
                 burst: Mapping[str, int] | None = None, sleep: Callable[[float], None] = time.sleep,
                 *, now: Callable[[], float] | None = None, stop: threading.Event | None = None,
                 fixed: Iterable[str] = ()) -> None:
        self.r = r
        # buckets whose rate the operator set: the broker's X-RateLimit-Limit is not followed there
        # (a lower TRADEBOT_RATE_LIMIT may leave budget for another program on the account)
        self.fixed = frozenset(fixed)
        self.keys = keys
        self.sleep = sleep
        self.now = now
        self.stop = stop
        self.per_minute: dict[str, int] = {}
        self.burst: dict[str, int] = {}
        burst = burst or {}
        for bucket, rate in per_minute.items():
            self.per_minute[bucket] = _positive_int(f"rate limit of bucket {bucket!r} (per minute)", rate)
            size = burst.get(bucket, min(DEFAULT_BURST, self.per_minute[bucket]))
            self.burst[bucket] = _positive_int(f"burst of bucket {bucket!r}", size)
        unknown = set(burst) - set(per_minute)
        if unknown:
            raise ValueError(f"burst given for buckets without a rate: {', '.join(sorted(unknown))}")
        self.configured: dict[str, int] = dict(self.per_minute)  # per_minute before any announcement
        self._limit_sent: dict[str, tuple[int, float]] = {}  # bucket -> (announced limit, monotonic time sent)
        self._take = lua.script(r, "ratelimit_take")
        self._observe = lua.script(r, "ratelimit_observe")

    @classmethod
    def from_settings(cls, r: Any, settings: Any, **kw: Any) -> RateLimiter:
        """Trading bucket at ``settings.rate_limit_per_minute`` (TRADEBOT_RATE_LIMIT), data bucket at
        ``settings.data_rate_limit_per_minute`` (TRADEBOT_DATA_RATE_LIMIT: 200/min on Alpaca's free
        plan, 10,000/min on Algo Trader Plus)."""
        fixed = [bucket for bucket, given in ((TRADING, getattr(settings, "rate_limit_given", False)),
                                              (DATA, getattr(settings, "data_rate_limit_given", False))) if given]
        return cls(r, settings.keys, {TRADING: settings.rate_limit_per_minute,
                                      DATA: settings.data_rate_limit_per_minute}, fixed=fixed, **kw)

    # ------------------------------------------------------------------ taking tokens

    def try_acquire(self, bucket: str) -> float:
        """Take a token if one is there: 0.0 when granted, else the seconds until one may be."""
        if bucket not in self.per_minute:
            return 0.0
        return float(self._take(keys=[self.keys.ratelimit(bucket)], args=self._args(bucket)))

    def queue_take(self, pipe: Any, bucket: str) -> bool:
        """Queue ``try_acquire(bucket)`` on ``pipe`` (one round trip with the caller's other commands);
        False when the bucket is unlimited (nothing queued). Pass its reply to ``taken``. EVALSHA
        directly: a script registered on the pipeline would cost a SCRIPT EXISTS round trip."""
        if bucket not in self.per_minute:
            return False
        key, args = self.keys.ratelimit(bucket), self._args(bucket)
        if isinstance(pipe, ClusterPipeline):  # EVALSHA is refused there: see bot.lua.call
            pipe.execute_command("EVAL", self._take.script, 1, key, *args)
        else:
            pipe.evalsha(self._take.sha, 1, key, *args)
        return True

    @staticmethod
    def taken(reply: Any) -> bool:
        """Did the take ``queue_take`` queued get a token? False for a wait, and for an error reply
        (Redis lost its scripts, refused the write...): then the next ``acquire`` asks again itself."""
        if isinstance(reply, Exception):
            return False
        try:
            return float(reply) <= 0
        except (TypeError, ValueError):
            return False

    def acquire(self, bucket: str, timeout: float | None = None) -> None:
        """Block until a token of ``bucket`` is taken; RateLimitTimeout after ``timeout`` seconds.

        Gives up at once when the next token is further away than the time left: sleeping
        would not help, tokens only come with time. RateLimitStopped when the stop event is set
        and the wait is longer than STOPPING_MAX_WAIT (or it is set during a wait).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = self.try_acquire(bucket)
            if wait <= 0:
                return
            if deadline is not None:
                left = deadline - time.monotonic()
                if wait > left:
                    raise RateLimitTimeout(bucket, timeout or 0.0, wait)
            if self._stopping() and wait > STOPPING_MAX_WAIT:
                raise RateLimitStopped(bucket, wait)
            log.debug("rate limit %s: waiting %.3fs for a token", bucket, wait)
            self._wait(bucket, wait)

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def _wait(self, bucket: str, seconds: float) -> None:
        """Sleep ``seconds``; a stop request that comes meanwhile ends a long wait with RateLimitStopped."""
        if self.stop is None or self.stop.is_set():
            self.sleep(seconds)  # already stopping: only short waits get here
            return
        if self.sleep is time.sleep:
            interrupted = self.stop.wait(seconds)
        else:
            self.sleep(seconds)
            interrupted = self.stop.is_set()
        if interrupted and seconds > STOPPING_MAX_WAIT:
            raise RateLimitStopped(bucket, seconds)

    # ------------------------------------------------------------------ the broker's view

    def observe(self, bucket: str, remaining: int | None, reset: float | None, limit: int | None = None) -> None:
        """Apply the broker's X-RateLimit-Remaining/-Reset (and -Limit) to the shared bucket.

        ``remaining == 0`` pauses the bucket for every process until ``reset`` (epoch seconds, or
        seconds from now when small; capped at MAX_PAUSE). A positive ``remaining`` below our
        token count lowers it, so budget spent by other programs on the account is respected.
        ``limit`` (requests per minute) replaces the configured rate fleet-wide (module docstring).
        """
        if bucket not in self.per_minute:
            return
        announce = None if bucket in self.fixed else self._limit_to_send(bucket, limit)
        if announce is None and (remaining is None or remaining > self.burst_of(bucket)):
            # the bucket never holds more than its burst, so the script would change nothing (no
            # pause, min(tokens, remaining) = tokens): spare the round trip on every response
            return
        is_epoch = reset is not None and reset > _EPOCH_THRESHOLD
        args = [
            *self._args(bucket),
            "" if remaining is None else str(int(remaining)),
            "" if reset is None else repr(float(reset)),
            "1" if is_epoch else "0",
            repr(MAX_PAUSE),
            repr(DEFAULT_PAUSE),
            "" if announce is None else str(announce),
        ]
        pause = float(self._observe(keys=[self.keys.ratelimit(bucket)], args=args))
        if announce is not None:
            self._limit_sent[bucket] = (announce, time.monotonic())
        if remaining is not None and remaining <= 0:
            log.warning("rate limit %s: broker reports the budget spent; fleet paused for %.1fs", bucket, pause)

    def _limit_to_send(self, bucket: str, limit: int | None) -> int | None:
        """The announced limit to write to Redis now: a new one at once, an unchanged one every
        LIMIT_REFRESH seconds (keeps the stored limit alive); None when there is nothing to send."""
        if limit is None or isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            return None
        if limit != self.per_minute[bucket]:
            log.log(logging.WARNING if limit < self.per_minute[bucket] else logging.INFO,
                    "rate limit %s: Alpaca announces %d requests/min (configured %d): following the broker",
                    bucket, limit, self.configured[bucket])
            self.per_minute[bucket] = limit
            return limit
        sent = self._limit_sent.get(bucket)
        if sent is None or sent[0] != limit or time.monotonic() - sent[1] >= LIMIT_REFRESH:
            return limit
        return None

    def burst_of(self, bucket: str) -> int:
        """Most tokens the bucket holds: the configured burst, at most the (announced) per-minute rate."""
        return min(self.burst[bucket], self.per_minute[bucket])

    def _args(self, bucket: str) -> list[str]:
        rate = self.per_minute[bucket] / 60.0
        now = "" if self.now is None else repr(float(self.now()))
        return [repr(rate), str(self.burst_of(bucket)), now, "0" if bucket in self.fixed else "1"]


def _positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a whole number >= 1, got {value!r}")
    return value
