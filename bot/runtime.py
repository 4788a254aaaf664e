"""Process plumbing shared by the entry points (processes/*.py) and the loops in bot/: the stop
event set by SIGTERM/SIGINT, the Redis probe at start, and the capped backoff of a loop that rides
out outages.

Start-up rule for the long-running processes (poller, router, worker, generator): bad settings and
credentials Redis refuses are configuration errors and fail at once with a clear message (no
password shown); an unreachable Redis is an outage like any later one, so it is logged and the
process enters its loop, which backs off until Redis answers. Exiting instead would make
supervisord give up after ``startretries`` and leave the process FATAL after a Redis restart.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import redis

from bot.redisconn import RedisAuthError, RedisUnavailable, check

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(label: str, on_stop: str = "stopping") -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT (logged as "<label>: SIGTERM received, <on_stop>"); the
    previous handlers are restored on exit. Call from the main thread."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s: %s received, %s", label, signal.Signals(signum).name, on_stop)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def probe_redis(client: redis.Redis, url: str) -> bool:
    """Ping Redis at start: True when it answers, False (logged) when unreachable.

    Raises RedisAuthError (message without the password) when Redis refuses the credentials:
    that needs a fixed configuration, not a retry.
    """
    try:
        check(client, url)
    except RedisAuthError:
        raise
    except RedisUnavailable as exc:
        log.warning("%s; starting anyway: the loop retries until Redis answers", exc)
        return False
    return True


def capped_backoff(failures: int, *, base: float = 0.1, cap: float = 5.0) -> float:
    """Pause after ``failures`` failures in a row: base, 2 x base, 4 x base ... at most ``cap``; 0 without failures."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2 ** min(failures - 1, 30))
