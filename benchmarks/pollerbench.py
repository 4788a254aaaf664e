"""Section 6, the price poller: HTTP requests per tick and the age of the cached prices, with 20
symbols at a 1 s interval, against a zero-latency paper broker (the poller alone: no load).

Requests are counted by the paper broker (/_paper/stats, per route); a tick is one snapshots
request (the poller sends ONE market-data request per tick for all symbols, so the two counts
agree unless a tick failed). Price age = now - polled_at of a random symbol's cache hash, sampled
at random moments (every ~100 ms), as a worker reading the cache would see it.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from benchmarks.common import SYMBOLS_20, Dist, Fleet, Procs, Sampler
from bot.keys import Keys

SNAPSHOTS_ROUTE = "GET /v2/stocks/snapshots"


@dataclass
class PollerResult:
    symbols: int
    interval: float
    seconds: float
    ticks: int
    requests: int
    by_route: dict[str, int] = field(default_factory=dict)
    price_age: Dist | None = None

    @property
    def requests_per_tick(self) -> float:
        return self.requests / self.ticks if self.ticks else float("nan")

    @property
    def data_requests_per_tick(self) -> float:
        return self.by_route.get(SNAPSHOTS_ROUTE, 0) / self.ticks if self.ticks else float("nan")

    def to_dict(self) -> dict:
        return {"symbols": self.symbols, "interval": self.interval, "seconds": self.seconds, "ticks": self.ticks,
                "requests": self.requests, "requests_per_tick": self.requests_per_tick,
                "data_requests_per_tick": self.data_requests_per_tick, "by_route": self.by_route,
                "price_age": self.price_age.to_dict() if self.price_age else None}


def price_age_probe(r: redis.Redis, symbols: Sequence[str]) -> Callable[[], float | None]:
    """A probe: seconds since the poller's response for a random symbol arrived (its polled_at)."""
    keys = Keys()

    def probe() -> float | None:
        value = r.hget(keys.prices(random.choice(list(symbols))), "polled_at")
        if not value:
            return None
        return max(0.0, time.time() - float(value))

    return probe


def run(r: redis.Redis, redis_url: str, procs: Procs, work_dir: Path, quick: bool,
        interval: float = 1.0) -> PollerResult:
    fleet = Fleet(procs, redis_url, SYMBOLS_20)
    fleet.start_broker(latency=0.0)
    try:
        fleet.start_poller(r, interval=interval)
        time.sleep(1.5 * interval)  # past the first tick's one-off requests
        seconds = 6.0 if quick else 20.0
        before = fleet.broker_stats()
        with Sampler(price_age_probe(r, SYMBOLS_20), 0.1) as ages:
            time.sleep(seconds)
        after = fleet.broker_stats()
        procs.check_alive(fleet.members)
        by_route = {route: after["by_route"].get(route, 0) - before["by_route"].get(route, 0)
                    for route in after["by_route"]}
        by_route = {k: v for k, v in by_route.items() if v}
        return PollerResult(len(SYMBOLS_20), interval, seconds, by_route.get(SNAPSHOTS_ROUTE, 0),
                            after["requests"] - before["requests"], by_route,
                            Dist.of([a * 1000 for a in ages.samples]))
    finally:
        procs.stop(reversed(fleet.members))
