"""Triage.examine and Triage.order_behind: what an entry is before anything is decided."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from bot.alpaca.errors import BrokerUnavailable, InvalidOrder
from bot.alpaca.models import Order, OrderRequest
from bot.signals import client_order_id
from bot.worker.records import DeadLetter, Delivery, Duplicate, Job, Skip
from bot.worker.replays import OwnReplays
from bot.worker.triage import Triage

from .bench import ASK, SYMBOL, Bench, make_order

CLAIMED_AT = 1_750_000_000.5


class Lookups:
    """A broker that only answers lookups by client_order_id (``found``, or raises ``error``)."""

    def __init__(self, found: Order | None = None, error: Exception | None = None,
                 during: Callable[[], Any] = lambda: None) -> None:
        self.found, self.error, self.during = found, error, during
        self.asked: list[str] = []

    def get_order_by_client_id(self, coid: str) -> Order | None:
        self.asked.append(coid)
        self.during()
        if self.error is not None:
            raise self.error
        return self.found


def triage(bench: Bench, client: Any, replays: OwnReplays | None = None, max_deliveries: int = 5) -> Triage:
    return Triage(keys=bench.keys, market=bench.market, client=client, ledger=bench.ledger,
                  replays=replays if replays is not None else OwnReplays(1.0, 8.0), max_deliveries=max_deliveries,
                  clock=lambda: CLAIMED_AT, events=bench.events)


def coid_of(delivery: Delivery) -> str:
    fields = {k.decode(): v.decode() for k, v in delivery.fields.items()}
    return client_order_id(fields["source_stream"], fields["source_id"])


def test_unparseable_fields_are_dead_letters(bench: Bench):
    lookups = Lookups()
    missing = Delivery("1-1", {b"ticker": b"NVDA", b"side": b"buy"}, 1)
    dead = triage(bench, lookups).examine(missing)
    assert dead == DeadLetter(missing, "unusable signal: missing field 'source_stream'")
    assert dead.signal is None and dead.release is None
    garbled = Delivery("1-2", {b"ticker": b"\xff\xfe", b"side": b"buy", b"source_stream": b"nvda",
                               b"source_id": b"1-1", b"routed_at": b"1"}, 9)
    dead = triage(bench, lookups).examine(garbled)
    assert isinstance(dead, DeadLetter) and dead.reason == "unusable signal: field b'ticker' is not UTF-8"
    assert lookups.asked == []


def test_a_signal_with_its_done_marker_is_a_duplicate(bench: Bench):
    signal = bench.signal()
    delivery = bench.deliver(signal)
    bench.r.set(bench.keys.done("nvda", signal.source_id), "1750000000000-0")
    lookups = Lookups()
    for deliveries in (1, 2, 99):  # even delivered too often: already recorded, nothing to look up
        verdict = triage(bench, lookups).examine(replace(delivery, deliveries=deliveries))
        assert verdict == Duplicate(delivery.entry_id, "nvda", signal.source_id)
    assert lookups.asked == []


def test_a_first_delivery_is_a_job_without_a_broker_request(bench: Bench):
    signal = bench.signal(qty="3")
    delivery = bench.deliver(signal)
    before = bench.client.request_count
    job = triage(bench, bench.client).examine(delivery)
    assert isinstance(job, Job)
    assert (job.entry_id, job.signal, job.coid, job.deliveries, job.claimed_at, job.existing) == (
        delivery.entry_id, signal, f"tb-nvda-{signal.source_id}", 1, CLAIMED_AT, None)
    assert job.market.price().ask == ASK and job.market.value(bench.keys.halt) is None
    assert bench.client.request_count == before


def test_a_redelivery_whose_order_exists_carries_that_order(bench: Bench):
    delivery = bench.deliver()
    placed = bench.client.submit_order(OrderRequest(SYMBOL, "buy", coid_of(delivery), qty=Decimal(2)))
    job = triage(bench, bench.client).examine(replace(delivery, deliveries=2))
    assert isinstance(job, Job) and job.existing is not None
    assert (job.existing.id, job.existing.client_order_id, job.existing.qty) == (placed.id, coid_of(delivery), 2)
    assert job.deliveries == 2 and bench.orders() == 1


def test_a_redelivery_without_an_order_reads_the_cache_after_the_lookup(bench: Bench):
    delivery = bench.deliver()
    lookups = Lookups(during=lambda: bench.r.set(bench.keys.halt, "operator"))  # set while the lookup runs
    job = triage(bench, lookups).examine(replace(delivery, deliveries=2))
    assert isinstance(job, Job) and job.existing is None
    assert lookups.asked == [coid_of(delivery)]
    assert job.market.value(bench.keys.halt) == "operator"  # the checks will see it


def test_over_delivered_without_an_order_is_a_dead_letter_with_the_last_error(bench: Bench):
    delivery = replace(bench.deliver(), deliveries=6)
    replays = OwnReplays(1.0, 8.0)
    replays.left_pending(delivery.entry_id, "broker: order was not placed (HTTP 503)")
    lookups = Lookups()
    dead = triage(bench, lookups, replays, max_deliveries=5).examine(delivery)
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "delivered 6 times (max 5); last error: broker: order was not placed (HTTP 503)"
    assert dead.release == coid_of(delivery) and dead.delivery == delivery
    assert dead.signal is not None and dead.signal.source_stream == "nvda"
    assert lookups.asked == [coid_of(delivery)]  # looked up first: an order would be journaled instead


def test_over_delivered_by_another_worker_has_no_error_of_this_one(bench: Bench):
    delivery = replace(bench.deliver(), deliveries=3)
    dead = triage(bench, Lookups(), max_deliveries=2).examine(delivery)
    assert isinstance(dead, DeadLetter)
    assert dead.reason == "delivered 3 times (max 2); last error: no error recorded by this worker"


def test_over_delivered_with_an_order_is_a_job_for_that_order(bench: Bench):
    delivery = replace(bench.deliver(), deliveries=6)
    order = make_order("filled", coid=coid_of(delivery), filled="2", price="100.01")
    job = triage(bench, Lookups(found=order)).examine(delivery)
    assert isinstance(job, Job) and job.existing == order and job.deliveries == 6


def test_over_delivered_and_the_lookup_fails_transiently_raises(bench: Bench):
    delivery = replace(bench.deliver(), deliveries=6)
    with pytest.raises(BrokerUnavailable):  # cannot tell whether an order exists: stays pending
        triage(bench, Lookups(error=BrokerUnavailable("GET: HTTP 503"))).examine(delivery)


def test_over_delivered_and_the_lookup_is_refused_is_a_dead_letter_saying_so(bench: Bench):
    delivery = replace(bench.deliver(), deliveries=6)
    refused = InvalidOrder("GET /v2/orders:by_client_order_id: bad id", status=422)
    dead = triage(bench, Lookups(error=refused)).examine(delivery)
    assert isinstance(dead, DeadLetter) and dead.release == coid_of(delivery)
    assert dead.reason == ("delivered 6 times (max 5); last error: no error recorded by this worker; "
                           "order lookup refused: GET /v2/orders:by_client_order_id: bad id (HTTP 422)")


def test_a_gate_skip_of_a_first_delivery_without_a_reservation_asks_nothing(bench: Bench):
    job = triage(bench, bench.client).examine(bench.deliver())
    assert isinstance(job, Job)
    before = bench.client.request_count
    assert triage(bench, bench.client).order_behind(job, Skip("kill switch on: night", gate=True)) is None
    assert bench.client.request_count == before


@pytest.mark.parametrize("case", ["reserved", "redelivered", "not-a-gate"])
def test_any_other_skip_asks_the_broker_for_the_order_behind_it(bench: Bench, case: str):
    delivery = bench.deliver()
    job = triage(bench, bench.client).examine(delivery)
    assert isinstance(job, Job)
    skip = Skip("kill switch on: night", gate=True)
    if case == "reserved":  # it got past the gates once: reserved, maybe submitted
        bench.ledger.reserve_buy(job.coid, SYMBOL, ASK, qty=Decimal(2))
    elif case == "redelivered":
        job = replace(job, deliveries=2)
    else:
        skip = Skip("no NVDA shares to sell")
    placed = bench.client.submit_order(OrderRequest(SYMBOL, "buy", job.coid, qty=Decimal(2)))
    before = bench.client.request_count
    behind = triage(bench, bench.client).order_behind(job, skip)
    assert behind is not None and behind.id == placed.id
    assert bench.client.request_count == before + 1


def test_order_behind_a_skip_is_none_when_the_broker_has_none(bench: Bench):
    job = triage(bench, bench.client).examine(bench.deliver())
    assert isinstance(job, Job)
    assert triage(bench, bench.client).order_behind(job, Skip("price of NVDA is 30s old")) is None
