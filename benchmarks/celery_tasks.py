"""The order task (benchmarks/peer_task.py) as a Celery task on the Redis broker (kombu's Redis
transport: a list per queue, BRPOP) with ``acks_late``, for the peers table.

Run by ``python -m celery -A benchmarks.celery_tasks worker --pool prefork --concurrency N`` with
REDIS_URL, ALPACA_BASE_URL and the demo keys in the environment (benchmarks.peers sets them); the
harness sends by task name with an app of its own from ``make_app``.
"""
from __future__ import annotations

import os

from celery import Celery

from benchmarks import peer_task

QUEUE = "bench-celery-orders"
RESULTS = "bench:celery:results"
TASK = "place_order"


def make_app(url: str | None) -> Celery:
    app = Celery("bench-celery", broker=url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # ack once the task ran (a lost worker's task is redelivered), like XACK after the journal
        worker_prefetch_multiplier=1,  # each pool process holds at most one unacked task (tradebot reads COUNT 1)
        task_ignore_result=True,  # no result backend: the task writes its own result row
        task_default_queue=QUEUE,
        task_serializer="json", accept_content=["json"],
        broker_connection_retry_on_startup=True,
    )
    return app


app = make_app(os.environ.get("REDIS_URL"))  # no broker URL outside a worker: nothing connects on import


@app.task(name=TASK, acks_late=True, ignore_result=True)
def place_order(token: str, symbol: str, side: str, enqueued_at: float) -> None:
    peer_task.place_order(RESULTS, "cy", token, symbol, side, enqueued_at)
