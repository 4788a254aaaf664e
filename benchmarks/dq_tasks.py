"""The order task as a Dramatiq actor (RedisBroker on the benchmark's Redis), for section 4.

Same work as a tradebot worker's order path, minus what Dramatiq would not give us for free
(ledger, risk checks, rate limiter, exactly-once journal): read the cached price (the poller's
hash), submit a market order for 1 share to the paper broker, follow it to a final state with the
worker's polling policy (50 ms doubling to 1 s), then record the stage times in a results stream.

Run by ``python -m dramatiq benchmarks.dq_tasks --processes N --threads 1`` with REDIS_URL,
ALPACA_BASE_URL and the demo keys in the environment (benchmarks.taskqueue sets them).
"""
from __future__ import annotations

import os
import time
from decimal import Decimal
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

NAMESPACE = "bench-dramatiq"
QUEUE = "orders"
RESULTS = "bench:dramatiq:results"

broker = RedisBroker(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), namespace=NAMESPACE)
dramatiq.set_broker(broker)

_state: dict[str, Any] = {}  # per process, built on the first task (after dramatiq forked us)


def _deps() -> tuple[Any, Any, Any]:
    if not _state:
        from bot.alpaca.client import AlpacaClient
        from bot.config import Settings
        from bot.market import MarketCache
        from bot.redisconn import connect

        settings = Settings.from_env()
        r = connect(settings.redis_url)
        _state.update(r=r, market=MarketCache(r, settings.keys, settings.max_price_age),
                      client=AlpacaClient.from_settings(settings))
    return _state["r"], _state["market"], _state["client"]


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=60_000)
def place_order(token: str, symbol: str, side: str, enqueued_at: float) -> None:
    from bot.alpaca.models import OrderRequest

    started_at = time.time()
    r, market, client = _deps()
    market.price(symbol)  # the cached price: raises when absent or stale, like the worker's check
    request = OrderRequest(symbol=symbol, side=side, client_order_id=f"dq-{token}", qty=Decimal(1))
    submitted_at = time.time()
    order = client.submit_order(request)
    delay = 0.05
    while not order.is_terminal:
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
        order = client.get_order(order.id)
    final_at = time.time()
    r.xadd(RESULTS, {"token": token, "enqueued_at": repr(enqueued_at), "started_at": repr(started_at),
                     "submitted_at": repr(submitted_at), "final_at": repr(final_at), "status": order.status})
