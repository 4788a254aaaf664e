"""The fleet-wide rate limiter as the worker's client sees it: every wait for a token is bounded."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from bot.ratelimit import RateLimiter
from bot.worker.config import LIMITER_WAIT, SUBMIT_LIMITER_WAIT


class BoundedLimiter:
    """Waits for a token at most ``wait`` seconds (``SUBMIT_LIMITER_WAIT`` inside ``tight()``), and
    while the worker is stopping at most what is left of its stop grace; a longer wait raises
    RateLimitTimeout at once. So an order is never sent long after its checks."""

    def __init__(self, limiter: RateLimiter, wait: float = LIMITER_WAIT,
                 stop_left: Callable[[], float | None] = lambda: None) -> None:
        self.limiter = limiter
        self.wait = wait
        self.stop_left = stop_left

    def acquire(self, bucket: str, timeout: float | None = None) -> None:
        """A token, waiting at most the shortest of ``wait``, ``timeout`` (the caller's own bound,
        e.g. the client's submit deadline) and the stop grace left; else RateLimitTimeout."""
        bound = self.wait if timeout is None else min(self.wait, timeout)
        left = self.stop_left()
        if left is not None:
            bound = min(bound, left)
        self.limiter.acquire(bucket, timeout=max(0.0, bound))

    def observe(self, bucket: str, remaining: int | None, reset: float | None, limit: int | None = None) -> None:
        """The broker's rate headers, its announced X-RateLimit-Limit included, to the fleet's bucket."""
        self.limiter.observe(bucket, remaining, reset, limit=limit)

    @contextlib.contextmanager
    def tight(self, wait: float = SUBMIT_LIMITER_WAIT) -> Iterator[None]:
        """Waits inside the block are at most ``wait`` (one worker: one call at a time)."""
        saved, self.wait = self.wait, min(self.wait, wait)
        try:
            yield
        finally:
            self.wait = saved
