"""The order task (benchmarks/peer_task.py) as a Dramatiq actor (RedisBroker on the benchmark's
Redis), for section 4.

Run by ``python -m dramatiq benchmarks.dq_tasks --processes N --threads 1`` with REDIS_URL,
ALPACA_BASE_URL and the demo keys in the environment (benchmarks.taskqueue sets them).
"""
from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from benchmarks import peer_task

NAMESPACE = "bench-dramatiq"
QUEUE = "orders"
RESULTS = "bench:dramatiq:results"

broker = RedisBroker(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), namespace=NAMESPACE)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=60_000)
def place_order(token: str, symbol: str, side: str, enqueued_at: float) -> None:
    peer_task.place_order(RESULTS, "dq", token, symbol, side, enqueued_at)
