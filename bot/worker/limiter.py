"""The fleet-wide rate limiter as the worker's client sees it: every wait for a token is bounded."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from bot.ratelimit import RateLimiter
from bot.worker.config import LIMITER_WAIT, SUBMIT_LIMITER_WAIT


class BoundedLimiter:
    """Waits for a token at most ``wait`` seconds (``SUBMIT_LIMITER_WAIT`` inside ``tight()``), and
    while the worker is stopping at most what is left of its stop grace; a longer wait raises
    RateLimitTimeout at once. So an order is never sent long after its checks.

    A submit's token can be taken in the round trip of its re-check (``queue_token``, then
    ``tight(taken=...)``): the POST's own acquire then costs no round trip of its own."""

    def __init__(self, limiter: RateLimiter, wait: float = LIMITER_WAIT,
                 stop_left: Callable[[], float | None] = lambda: None) -> None:
        self.limiter = limiter
        self.wait = wait
        self.stop_left = stop_left
        self._taken: set[str] = set()  # buckets whose next acquire has its token already (inside tight())

    def acquire(self, bucket: str, timeout: float | None = None) -> None:
        """A token, waiting at most the shortest of ``wait``, ``timeout`` (the caller's own bound,
        e.g. the client's submit deadline) and the stop grace left; else RateLimitTimeout."""
        if bucket in self._taken:
            self._taken.discard(bucket)  # taken with the re-check, a moment ago
            return
        bound = self.wait if timeout is None else min(self.wait, timeout)
        left = self.stop_left()
        if left is not None:
            bound = min(bound, left)
        self.limiter.acquire(bucket, timeout=max(0.0, bound))

    def observe(self, bucket: str, remaining: int | None, reset: float | None, limit: int | None = None) -> None:
        """The broker's rate headers, its announced X-RateLimit-Limit included, to the fleet's bucket."""
        self.limiter.observe(bucket, remaining, reset, limit=limit)

    def queue_token(self, pipe: Any, bucket: str) -> bool:
        """Queue the take of a ``bucket`` token on ``pipe`` (RateLimiter.queue_take); False when
        nothing was queued. Its reply goes to ``tight(taken=...)`` through ``RateLimiter.taken``."""
        queue = getattr(self.limiter, "queue_take", None)  # a stand-in limiter may not queue
        return bool(queue is not None and queue(pipe, bucket))

    @contextlib.contextmanager
    def tight(self, wait: float = SUBMIT_LIMITER_WAIT, *, taken: str | None = None) -> Iterator[None]:
        """Waits inside the block are at most ``wait`` (one worker: one call at a time). ``taken``: a
        bucket whose token was taken already (``queue_token``): the block's first acquire of it uses
        that token; one the block did not use is given up with it (never saved for a later request)."""
        saved, self.wait = self.wait, min(self.wait, wait)
        if taken is not None:
            self._taken.add(taken)
        try:
            yield
        finally:
            self.wait = saved
            self._taken.clear()
