"""Submitter.submit: fresh checks, entry ownership, bounded attempts; Placed, Skip, Unsent, Lost, Rejected."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from bot.alpaca.errors import BrokerUnavailable, OrderOutcomeUnknown, RateLimited
from bot.alpaca.models import OrderRequest
from bot.worker.config import CLIENT_KNOBS
from bot.worker.keeper import EntryKeeper
from bot.worker.records import Job, Lost, Placed, Rejected, Skip, Unsent
from bot.worker.stopping import StopGrace
from bot.worker.submit import Submitter

from .bench import SYMBOL, Bench, config


class PostFaults(httpx.BaseTransport):
    """The paper broker, except that the first order POSTs get ``answers`` (then they pass through);
    ``on_post`` runs at every POST (what happens meanwhile)."""

    def __init__(self, inner: httpx.BaseTransport, answers: list[httpx.Response],
                 on_post: Callable[[], Any] = lambda: None) -> None:
        self.inner, self.answers, self.on_post = inner, list(answers), on_post
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v2/orders":
            self.posts += 1
            self.on_post()
            if self.answers:
                return self.answers.pop(0)
        return self.inner.handle_request(request)


def unavailable(n: int) -> list[httpx.Response]:
    return [httpx.Response(503, json={"code": 50300000, "message": "service unavailable"}) for _ in range(n)]


def throttled(retry_after: str = "0") -> httpx.Response:
    return httpx.Response(429, json={"message": "rate limit exceeded"}, headers={"Retry-After": retry_after})


def submitter(bench: Bench, client: Any = None, grace: StopGrace | None = None,
              **options: Any) -> tuple[Submitter, EntryKeeper]:
    cfg = config(**{"submit_retry_pause": 0.01, **options})
    keeper = EntryKeeper(bench.r, bench.keys.signals, bench.keys.workers_group, cfg.consumer, cfg.keep_fresh_every)
    built = Submitter(client=client or bench.client, market=bench.market, keys=bench.keys, keeper=keeper,
                      gates=bench.gates(), grace=grace or StopGrace(cfg.stop_grace), limiter=None, config=cfg,
                      clock=time.time, events=bench.events)
    return built, keeper


def request_for(job: Job, qty: int = 2) -> OrderRequest:
    return OrderRequest(SYMBOL, "buy", job.coid, qty=Decimal(qty))


def test_an_order_is_placed_under_the_coid(bench: Bench):
    job = bench.job()
    stage, keeper = submitter(bench)
    before = time.time()
    placed = stage.submit(job, request_for(job))
    assert isinstance(placed, Placed) and not placed.adopted
    assert (placed.order.client_order_id, placed.order.qty, placed.qty) == (job.coid, 2, 2)
    assert before <= placed.submitted_at <= time.time()
    assert bench.orders() == 1 and keeper.lost == set()
    assert bench.pending() == 1  # submitting acks nothing


def test_a_halt_set_before_the_submit_is_a_skip_carrying_the_qty(bench: Bench):
    job = bench.job()  # decided while the kill switch was off
    bench.r.set(bench.keys.halt, "operator")
    stage, _keeper = submitter(bench)
    assert stage.submit(job, request_for(job, 3)) == Skip("kill switch on: operator", gate=True, qty=Decimal(3))
    assert bench.orders() == 0 and bench.client.get_order_by_client_id(job.coid) is None


def test_a_price_gone_stale_before_the_submit_is_a_skip(bench: Bench):
    job = bench.job()
    bench.r.hset(bench.keys.prices(SYMBOL), "polled_at", repr(time.time() - 30))
    stage, _keeper = submitter(bench)
    skip = stage.submit(job, request_for(job))
    assert isinstance(skip, Skip) and not skip.gate and skip.qty == 2
    assert skip.reason.startswith("price of NVDA is 30"), skip.reason
    assert bench.orders() == 0


def test_a_stop_requested_before_the_submit_sends_nothing(bench: Bench):
    job = bench.job()
    stop, grace = threading.Event(), StopGrace(15.0)
    grace.use(stop)
    stop.set()
    stage, _keeper = submitter(bench, grace=grace)
    assert stage.submit(job, request_for(job)) == Unsent(f"stopping before order {job.coid} was sent")
    assert bench.orders() == 0 and bench.client.get_order_by_client_id(job.coid) is None


def test_an_entry_reclaimed_by_another_consumer_is_lost_and_sends_nothing(bench: Bench):
    job = bench.job()
    bench.r.xclaim(bench.keys.signals, bench.keys.workers_group, "rescuer", 0, [job.entry_id])
    stage, keeper = submitter(bench)
    assert stage.submit(job, request_for(job)) == Lost()
    assert bench.orders() == 0 and keeper.lost == {job.entry_id}
    rows = bench.r.xpending_range(bench.keys.signals, bench.keys.workers_group, "-", "+", 10)
    assert [row["consumer"] for row in rows] == ["rescuer"]  # never taken back


def test_a_broker_refusing_the_funds_is_rejected(bench: Bench):
    job = bench.job()
    bench.exchange.reset(cash=Decimal(50))  # the broker's cash drops; the cache still says 100000
    bench.exchange.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
    stage, _keeper = submitter(bench)
    before = time.time()
    rejected = stage.submit(job, request_for(job))
    assert isinstance(rejected, Rejected) and rejected.qty == 2
    assert before <= rejected.submitted_at <= time.time()
    assert "insufficient buying power" in rejected.reason, rejected.reason
    assert "HTTP 403" not in rejected.reason  # the broker's message, not the exception's decoration
    assert bench.client.get_order_by_client_id(job.coid) is None


def test_a_broker_that_stays_unavailable_raises_after_submit_attempts_posts(bench: Bench):
    job = bench.job()
    refusing = PostFaults(bench.transport, unavailable(10))
    stage, _keeper = submitter(bench, client=bench.client_on(refusing, **CLIENT_KNOBS), submit_attempts=3)
    # a 503 may come after the order took effect: each POST's outcome is unknown (the same
    # client_order_id is sent again: a second one could never fill), and the order is marked so
    with pytest.raises(OrderOutcomeUnknown, match="outcome unknown"):
        stage.submit(job, request_for(job))
    assert refusing.posts == 3 and bench.orders() == 0
    assert bench.events.unknown_since(job.coid) is not None


def test_a_throttled_submit_is_sent_again_after_fresh_checks(bench: Bench):
    job = bench.job()
    throttling = PostFaults(bench.transport, [throttled()])
    stage, _keeper = submitter(bench, client=bench.client_on(throttling, **CLIENT_KNOBS))
    placed = stage.submit(job, request_for(job))
    assert isinstance(placed, Placed) and placed.order.client_order_id == job.coid
    assert throttling.posts == 2 and bench.orders() == 1


def test_a_halt_during_the_retry_pause_is_honoured(bench: Bench):
    job = bench.job()
    halting = PostFaults(bench.transport, [throttled()], on_post=lambda: bench.r.set(bench.keys.halt, "operator"))
    stage, _keeper = submitter(bench, client=bench.client_on(halting, **CLIENT_KNOBS))
    assert stage.submit(job, request_for(job)) == Skip("kill switch on: operator", gate=True, qty=Decimal(2))
    assert halting.posts == 1 and bench.orders() == 0


def test_a_stop_during_the_retry_pause_leaves_it_unsent(bench: Bench):
    job = bench.job()
    stop, grace = threading.Event(), StopGrace(15.0)
    grace.use(stop)
    stopping = PostFaults(bench.transport, unavailable(10), on_post=stop.set)
    # a 30 s pause before the second attempt: only the stop can end it this soon
    stage, _keeper = submitter(bench, client=bench.client_on(stopping, **CLIENT_KNOBS), grace=grace,
                               submit_retry_pause=30.0, submit_retry_max_pause=60.0)
    started = time.monotonic()
    assert stage.submit(job, request_for(job)) == Unsent(f"stopping before order {job.coid} was sent")
    assert time.monotonic() - started < 10 and stopping.posts == 1 and bench.orders() == 0


def test_a_broker_asking_for_a_longer_wait_than_allowed_raises_at_once(bench: Bench):
    job = bench.job()
    throttling = PostFaults(bench.transport, [throttled("30")])
    stage, _keeper = submitter(bench, client=bench.client_on(throttling, **CLIENT_KNOBS), submit_attempts=3)
    with pytest.raises(RateLimited):
        stage.submit(job, request_for(job))
    assert throttling.posts == 1 and bench.orders() == 0

