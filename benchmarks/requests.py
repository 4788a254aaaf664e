"""Section 7, the request economy: order-route REST requests per signal by the broker's fill delay,
following orders by the listener's trade_updates events against polling them.

One worker (fixed strategy, 1 share), the router, the poller and, for ``events``, the order-updates
listener; the paper broker fills each order ``fill_delay`` seconds after it is accepted. 16 buy
signals (4 with --quick) go in as one burst; the count is the paper broker's own (/_paper/stats,
the ``orders`` group: POST /v2/orders, GET /v2/orders/{id}, the lookup by client_order_id, DELETE)
from the burst until every signal is journaled. Alpaca allows 200 requests a minute per account,
so ``200 / requests per signal`` is how many signals a minute one account carries.
"""
from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

from benchmarks.common import BenchError, Fleet, Procs, burst, tradebot_cmd, wait_for, wait_journaled
from bot.keys import Keys
from bot.order_events import OrderEvents

FILL_DELAYS = (0.0, 0.25, 1.0, 3.0)
MODES = ("events", "poll")
ACCOUNT_BUDGET = 200  # Alpaca's REST requests per minute per account
SYMBOLS = ("NVDA",)


@dataclass
class RequestPoint:
    mode: str
    fill_delay: float
    signals: int
    order_requests: int
    by_route: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def per_signal(self) -> float:
        return self.order_requests / self.signals if self.signals else float("nan")

    @property
    def signals_per_minute(self) -> float:
        return ACCOUNT_BUDGET / self.per_signal if self.per_signal else float("inf")


def run(r: redis.Redis, redis_url: str, procs: Procs, work_dir: Path, quick: bool,
        delays: tuple[float, ...] = FILL_DELAYS) -> list[RequestPoint]:
    count = 4 if quick else 16
    points: list[RequestPoint] = []
    for mode in MODES:
        r.flushall()
        fleet = Fleet(procs, redis_url, SYMBOLS,
                      worker_args=("--strategy", "fixed", "--fixed-qty", "1", "--follow", mode,
                                   "--order-timeout", "30", "--claim-idle", "120", "--max-signal-age", "600"))
        fleet.start_broker()
        listeners = []
        try:
            fleet.start_poller(r)
            fleet.start_router(r)
            if mode == "events":
                listeners.append(procs.start("listener", tradebot_cmd("listener"), fleet.env()))
                events = OrderEvents(r, Keys())
                wait_for(lambda events=events: events.listener_health().live, 60, "the listener live", procs=procs,
                         watch=[*fleet.members, *listeners])
            fleet.add_workers(r, 1)
            for delay in delays:
                points.append(_measure(r, fleet, procs, mode, delay, count))
        finally:
            procs.stop([*reversed(fleet.members), *listeners])
    return points


def _measure(r: redis.Redis, fleet: Fleet, procs: Procs, mode: str, delay: float, count: int) -> RequestPoint:
    fleet.reset_broker(r)
    _set_fill_delay(fleet, delay)
    before = fleet.broker_stats()
    sent = burst(r, count, SYMBOLS)
    rows = wait_journaled(r, [s.entry_id for s in sent], 120 + count * (delay + 2), procs, fleet.members)
    after = fleet.broker_stats()
    routes = {route: after["by_route"].get(route, 0) - before["by_route"].get(route, 0) for route in after["by_route"]}
    order_routes = {k: v for k, v in routes.items() if v and "/v2/orders" in k}
    outcomes: dict[str, int] = {}
    for row in rows.values():
        outcomes[row.get("outcome", "?")] = outcomes.get(row.get("outcome", "?"), 0) + 1
    if outcomes.get("filled", 0) != count:
        raise BenchError(f"{mode} at fill delay {delay}s: outcomes {outcomes}, expected {count} filled")
    requests = after["by_group"].get("orders", 0) - before["by_group"].get("orders", 0)
    return RequestPoint(mode, delay, count, requests, order_routes, outcomes)


def _set_fill_delay(fleet: Fleet, seconds: float) -> None:
    request = urllib.request.Request(f"{fleet.base_url}/_paper/fill_delay", method="POST",
                                     data=json.dumps({"fill_delay": seconds}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()  # the setting applies to orders accepted from now on
