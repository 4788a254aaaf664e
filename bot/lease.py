"""A lease in Redis: one holder at a time, kept by renewing it well inside its ttl. A holder that
stops renewing (killed, paused, cut off from Redis) loses it after ttl and a standby takes over."""
from __future__ import annotations

import time

import redis

from bot import lua


class Lease:
    def __init__(self, r: redis.Redis, key: str, holder: str, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("a lease's ttl must be > 0")
        self.r, self.key, self.holder, self.ttl = r, key, holder, ttl
        self._take = lua.script(r, "lease_take")
        self._release = lua.script(r, "lease_release")
        self.renewed_at = 0.0  # monotonic time of the last successful take

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    def take(self) -> bool:
        """Take it, or renew it when already ours: True while we hold it."""
        held = bool(self._take(keys=[self.key], args=[self.holder, max(1, int(self.ttl * 1000))]))
        if held:
            self.renewed_at = time.monotonic()
        return held

    def due(self) -> bool:
        return time.monotonic() - self.renewed_at >= self.renew_every

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.holder])
        self.renewed_at = 0.0

    def holder_now(self) -> str | None:
        value = self.r.get(self.key)
        return value.decode() if isinstance(value, bytes) else value
