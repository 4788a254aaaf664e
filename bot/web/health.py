"""Is the fleet healthy? What /healthz answers: a list of reasons, empty when healthy."""
from __future__ import annotations

import json
import time

import redis

from bot.config import Settings
from bot.heartbeat import read_heartbeats
from bot.logs import redact_url
from bot.order_events import OrderEvents


def health_reasons(r: redis.Redis, settings: Settings, now: float | None = None) -> list[str]:
    """Why the fleet is not healthy (empty: healthy): Redis unreachable, no or stale heartbeats,
    the order-updates stream not live, stale prices, position drift, unresolved orders."""
    now = time.time() if now is None else now
    keys = settings.keys
    try:
        r.ping()
    except redis.RedisError as exc:
        return [f"Redis at {redact_url(settings.redis_url)} unreachable: {type(exc).__name__}"]
    reasons = []
    beats = read_heartbeats(r, keys, now)
    if not beats:
        reasons.append("no process writes a heartbeat to this Redis")
    reasons += [f"{beat.process}: last heartbeat {beat.age:.0f}s ago" for beat in beats if beat.stale]
    health = OrderEvents(r, keys, now=lambda: now).listener_health()
    if not health.live:
        reasons.append(f"orders are polled, not followed by events: {health.why}")
    for symbol in settings.symbols:
        polled = r.hget(keys.prices(symbol), "polled_at")
        if not polled:
            reasons.append(f"no price of {symbol} cached yet")
        elif now - float(polled) > settings.max_price_age:
            reasons.append(f"price of {symbol} is {now - float(polled):.0f}s old (max {settings.max_price_age:g}s)")
    drift = r.hget(keys.reconcile, "drift")
    for row in json.loads(drift) if drift else []:
        reasons.append(f"position drift {row['symbol']}: broker {row['broker']}, the books {row['expected']}")
    unresolved = int(r.hlen(keys.unresolved))
    if unresolved:
        reasons.append(f"{unresolved} order(s) with an unknown outcome not resolved yet")
    return reasons
