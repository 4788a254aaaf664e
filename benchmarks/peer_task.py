"""The order task every peer task queue runs (Dramatiq, taskiq, Celery: benchmarks/dq_tasks.py,
tq_tasks.py, celery_tasks.py wrap it in their own decorators), so that the peers differ only in
how a task reaches a worker.

Same work as a tradebot worker's order path, minus what a task queue would not give us for free
(ledger, risk checks, rate limiter, exactly-once journal): read the cached price (the poller's
hash), submit a market order for 1 share to the paper broker, follow it to a final state with the
worker's polling policy (50 ms doubling to 1 s), then record the stage times in a results stream.
Every worker process reads REDIS_URL, ALPACA_BASE_URL and the demo keys from its environment
(benchmarks.taskqueue sets them).
"""
from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

_state: dict[str, Any] = {}  # per process, built on the first task (after the queue forked its workers)


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


def place_order(results: str, order_prefix: str, token: str, symbol: str, side: str, enqueued_at: float) -> None:
    """The task body; ``results`` is the stream the harness reads, ``order_prefix`` tags the
    client_order_id with the queue's name."""
    from bot.alpaca.models import OrderRequest

    started_at = time.time()
    r, market, client = _deps()
    market.price(symbol)  # the cached price: raises when absent or stale, like the worker's check
    request = OrderRequest(symbol=symbol, side=side, client_order_id=f"{order_prefix}-{token}", qty=Decimal(1))
    submitted_at = time.time()
    order = client.submit_order(request)
    delay = 0.05
    while not order.is_terminal:
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
        order = client.get_order(order.id)
    final_at = time.time()
    r.xadd(results, {"token": token, "enqueued_at": repr(enqueued_at), "started_at": repr(started_at),
                     "submitted_at": repr(submitted_at), "final_at": repr(final_at), "status": order.status})
