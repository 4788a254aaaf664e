"""The order task (benchmarks/peer_task.py) as a taskiq task on taskiq-redis's RedisStreamBroker
(a stream and a consumer group on the benchmark's Redis), for the peers table.

Run by ``python -m taskiq worker benchmarks.tq_tasks:worker_broker --workers N --max-async-tasks 1
--max-threadpool-threads 1`` with REDIS_URL, ALPACA_BASE_URL and the demo keys in the environment
(benchmarks.peers sets them); the harness sends with a broker of its own from ``make_broker``.
"""
from __future__ import annotations

import os

from taskiq_redis import RedisStreamBroker

from benchmarks import peer_task

QUEUE = "bench-taskiq-orders"  # the stream
GROUP = "bench-taskiq"
RESULTS = "bench:taskiq:results"
TASK = "place_order"


def make_broker(url: str) -> RedisStreamBroker:
    # xread_count=1: a worker takes one message per XREADGROUP, as tradebot's workers do (COUNT 1);
    # taskiq-redis's default of 100 lets the first reader of a backlog hold 100 tasks in its pending
    # list while the other processes idle. The read blocks (xread_block 2 s): XADD wakes it.
    return RedisStreamBroker(url, queue_name=QUEUE, consumer_group_name=GROUP, xread_count=1)


def place_order(token: str, symbol: str, side: str, enqueued_at: float) -> None:
    peer_task.place_order(RESULTS, "tq", token, symbol, side, enqueued_at)


def worker_broker() -> RedisStreamBroker:
    """The broker factory the taskiq CLI calls in each worker process (a consumer name of its own)."""
    broker = make_broker(os.environ["REDIS_URL"])
    broker.register_task(place_order, task_name=TASK)
    return broker
