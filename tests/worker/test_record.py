"""Recorder: the ledger settled or released, ONE journal entry with the XACK (or one DLQ entry), a refresh
after a fill; outcome_of for every final status."""
from __future__ import annotations

import time
from decimal import Decimal

import pytest

from bot.alpaca.models import Order
from bot.worker.record import Recorder, outcome_of
from bot.worker.records import (
    DEAD,
    DUPLICATE,
    JOURNALED,
    DeadLetter,
    Delivery,
    Duplicate,
    Final,
    Job,
    Placed,
    Rejected,
    Skip,
)

from .bench import ASK, CONSUMER, SYMBOL, Bench, make_order

FINAL_AT = 1_750_000_100.25


def recorder(bench: Bench, order_timeout: float = 10.0) -> Recorder:
    return Recorder(r=bench.r, rb=bench.rb, keys=bench.keys, consumer=CONSUMER, ledger=bench.ledger,
                    market=bench.market, order_timeout=order_timeout, clock=lambda: FINAL_AT)


def reserved_job(bench: Bench, qty: int = 2) -> Job:
    job = bench.job()
    bench.ledger.reserve_buy(job.coid, SYMBOL, ASK, qty=Decimal(qty))
    return job


def order_of(job: Job, status: str, filled: str = "0", price: str | None = None) -> Order:
    return make_order(status, order_id="o-7", coid=job.coid, qty="2", filled=filled, price=price)


def test_a_filled_order_settles_journals_acks_and_asks_for_a_refresh(bench: Bench):
    job = reserved_job(bench)
    order = order_of(job, "filled", "2", "100.02")
    stage = recorder(bench)
    placed = Placed(order, 1_750_000_099.5, Decimal(2))
    assert stage.final(job, placed, Final(order, FINAL_AT)) == JOURNALED
    reservation = bench.ledger.get(job.coid)
    assert reservation is not None and reservation.settled
    assert (reservation.qty, reservation.price, reservation.cash) == (2, Decimal("100.02"), Decimal("200.04"))
    [entry] = bench.journal()
    assert (entry.outcome, entry.reason, entry.status, entry.order_id, entry.client_order_id) == (
        "filled", "", "filled", "o-7", job.coid)
    assert (entry.qty, entry.filled_qty, entry.filled_avg_price) == (2, 2, Decimal("100.02"))
    assert (entry.source_id, entry.ticker, entry.side, entry.consumer, entry.deliveries) == (
        job.signal.source_id, SYMBOL, "buy", CONSUMER, 1)
    assert (entry.claimed_at, entry.submitted_at, entry.final_at) == (job.claimed_at, 1_750_000_099.5, FINAL_AT)
    assert bench.pending() == 0
    assert bench.r.llen(bench.keys.refresh_request) == 1
    assert bench.r.exists(bench.keys.done("nvda", job.signal.source_id))
    assert stage.outcomes == {"filled": 1}


def test_an_order_canceled_unfilled_releases_and_asks_for_no_refresh(bench: Bench):
    job = reserved_job(bench)
    order = order_of(job, "canceled")
    stage = recorder(bench, order_timeout=0.5)
    assert stage.final(job, Placed(order, time.time(), Decimal(2)), Final(order, FINAL_AT, canceled_by_us=True)) \
        == JOURNALED
    assert bench.ledger.get(job.coid) is None
    [entry] = bench.journal()
    assert (entry.outcome, entry.reason) == ("canceled", "not filled within the 0.5s order timeout; canceled")
    assert bench.r.llen(bench.keys.refresh_request) == 0 and bench.pending() == 0


def test_an_order_canceled_because_the_worker_stopped_says_so(bench: Bench):
    job = reserved_job(bench)
    order = order_of(job, "canceled")
    final = Final(order, FINAL_AT, canceled_by_us=True, stopping=True)
    assert recorder(bench).final(job, Placed(order, time.time(), Decimal(2)), final) == JOURNALED
    assert bench.journal()[0].reason == "canceled unfilled: the worker was stopping"


def test_a_partial_fill_settles_what_filled(bench: Bench):
    job = reserved_job(bench, qty=2)
    order = order_of(job, "canceled", "1", "100.01")
    assert recorder(bench).final(job, Placed(order, time.time(), Decimal(2)),
                                 Final(order, FINAL_AT, canceled_by_us=True)) == JOURNALED
    reservation = bench.ledger.get(job.coid)
    assert reservation is not None and reservation.settled and reservation.qty == 1
    [entry] = bench.journal()
    assert (entry.outcome, entry.reason) == ("partially_filled", "filled 1 of 2, the rest canceled")
    assert bench.r.llen(bench.keys.refresh_request) == 1


def test_the_journal_reason_of_a_partial_fill_shows_plain_quantities(bench: Bench):
    job = reserved_job(bench, qty=20)
    order = make_order("canceled", order_id="o-7", coid=job.coid, qty="20", filled="10", price="100.01")
    assert recorder(bench).final(job, Placed(order, time.time(), Decimal(20)),
                                 Final(order, FINAL_AT, canceled_by_us=True)) == JOURNALED
    assert bench.journal()[0].reason == "filled 10 of 20, the rest canceled"


def test_a_skip_releases_the_reservation_and_journals_no_coid(bench: Bench):
    job = reserved_job(bench)  # an earlier delivery reserved, then crashed before its submit
    stage = recorder(bench)
    assert stage.skipped(job, Skip("kill switch on: operator", gate=True, qty=Decimal(2))) == JOURNALED
    assert bench.ledger.get(job.coid) is None
    [entry] = bench.journal()
    assert (entry.outcome, entry.reason, entry.client_order_id, entry.order_id, entry.status) == (
        "skipped", "kill switch on: operator", "", "", "")
    assert (entry.qty, entry.filled_qty, entry.submitted_at, entry.final_at) == (2, None, None, FINAL_AT)
    assert bench.pending() == 0 and bench.r.llen(bench.keys.refresh_request) == 0
    assert stage.outcomes == {"skipped": 1}


def test_a_rejection_releases_and_journals_the_coid(bench: Bench):
    job = reserved_job(bench)
    rejected = Rejected("insufficient buying power", Decimal(2), 1_750_000_099.5)
    assert recorder(bench).rejected(job, rejected) == JOURNALED
    assert bench.ledger.get(job.coid) is None
    [entry] = bench.journal()
    assert (entry.outcome, entry.reason, entry.client_order_id, entry.order_id) == (
        "rejected", "insufficient buying power", job.coid, "")
    assert (entry.qty, entry.submitted_at, entry.final_at) == (2, 1_750_000_099.5, FINAL_AT)
    assert bench.pending() == 0


def test_a_signal_is_journaled_once(bench: Bench):
    job = bench.job()
    stage = recorder(bench)
    assert stage.skipped(job, Skip("no NVDA shares to sell")) == JOURNALED
    again = bench.job(bench.deliver(job.signal))  # the same signal routed twice
    assert stage.skipped(again, Skip("no NVDA shares to sell")) == DUPLICATE
    assert len(bench.journal()) == 1 and bench.pending() == 0  # the second entry is acked too
    assert stage.outcomes == {"skipped": 1}


def test_a_fill_starts_the_cooldown_in_the_same_script(bench: Bench):
    job = reserved_job(bench)
    order = order_of(job, "filled", "2", "100.02")
    stage = Recorder(r=bench.r, rb=bench.rb, keys=bench.keys, consumer=CONSUMER, ledger=bench.ledger,
                     market=bench.market, order_timeout=10.0, clock=lambda: FINAL_AT, cooldown=30.0)
    assert stage.final(job, Placed(order, FINAL_AT - 1, Decimal(2)), Final(order, FINAL_AT)) == JOURNALED
    assert bench.r.get(bench.keys.cooldown(SYMBOL)) == repr(FINAL_AT)
    assert 29_000 < bench.r.pttl(bench.keys.cooldown(SYMBOL)) <= 30_000


def test_a_fill_recorded_again_settles_again_and_journals_nothing(bench: Bench):
    """A redelivery that meets the done marker (the journal was written) still settles (idempotent,
    the first settle time kept), acks, and asks for a refresh; it writes no second entry."""
    job = reserved_job(bench)
    order = order_of(job, "filled", "2", "100.02")
    stage = recorder(bench)
    assert stage.final(job, Placed(order, FINAL_AT - 1, Decimal(2)), Final(order, FINAL_AT)) == JOURNALED
    first = bench.ledger.get(job.coid)
    again = bench.job(bench.deliver(job.signal))
    assert stage.final(again, Placed(order, FINAL_AT - 1, Decimal(2)), Final(order, FINAL_AT)) == DUPLICATE
    assert bench.ledger.get(job.coid) == first and first is not None and first.settled
    assert len(bench.journal()) == 1 and bench.pending() == 0
    assert bench.r.llen(bench.keys.refresh_request) == 2


def test_a_fill_without_a_price_settles_at_the_reserved_price(bench: Bench):
    job = reserved_job(bench)
    order = order_of(job, "filled", "2")  # the broker gave no filled_avg_price
    assert recorder(bench).final(job, Placed(order, FINAL_AT - 1, Decimal(2)), Final(order, FINAL_AT)) == JOURNALED
    reservation = bench.ledger.get(job.coid)
    assert reservation is not None and reservation.settled and reservation.price == ASK
    assert reservation.cash == bench.ledger.buffered_price(ASK) * 2


def test_a_duplicate_is_only_acked(bench: Bench):
    signal = bench.signal()
    delivery = bench.deliver(signal)
    assert recorder(bench).duplicate(Duplicate(delivery.entry_id, "nvda", signal.source_id)) == DUPLICATE
    assert bench.pending() == 0 and bench.journal() == [] and bench.dlq() == []


def test_an_unparseable_entry_is_one_dlq_entry(bench: Bench):
    raw = {b"ticker": b"NVDA", b"side": b"hold", b"source_stream": b"nvda", b"source_id": b"1-2", b"routed_at": b"1"}
    delivery = bench.deliver(fields=raw)
    stage = recorder(bench)
    dead = DeadLetter(delivery, "unusable signal: side 'hold' is not buy/sell")
    assert stage.dead_letter(dead) == DEAD
    [entry] = bench.dlq()
    assert (entry["source_stream"], entry["source_id"], entry["reason"], entry["deliveries"]) == (
        "nvda", "1-2", "unusable signal: side 'hold' is not buy/sell", "1")
    assert (entry["entry_stream"], entry["entry_id"], entry["consumer"]) == (bench.keys.signals, delivery.entry_id,
                                                                             CONSUMER)
    assert entry["raw_side"] == "hold" and entry["raw_ticker"] == "NVDA"
    assert bench.pending() == 0 and bench.journal() == []
    assert stage.dead_letter(dead) == DUPLICATE and len(bench.dlq()) == 1  # once per signal


def test_an_entry_without_a_usable_origin_is_dead_lettered_under_its_own_id(bench: Bench):
    delivery = bench.deliver(fields={b"ticker": b"NVDA", b"side": b"buy", b"source_stream": b"\xff"})
    assert recorder(bench).dead_letter(DeadLetter(delivery, "unusable signal: field b'source_stream'")) == DEAD
    [entry] = bench.dlq()
    assert (entry["source_stream"], entry["source_id"]) == (bench.keys.signals, delivery.entry_id)
    assert bench.pending() == 0


def test_a_dead_letter_releases_the_reservation_it_names(bench: Bench):
    job = reserved_job(bench)
    delivery = Delivery(job.entry_id, bench.r.xrange(bench.keys.signals)[0][1], 6)
    dead = DeadLetter(delivery, "delivered 6 times (max 5); last error: x", job.signal, release=job.coid)
    assert recorder(bench).dead_letter(dead) == DEAD
    assert bench.ledger.get(job.coid) is None
    [entry] = bench.dlq()
    assert (entry["source_id"], entry["deliveries"]) == (job.signal.source_id, "6")


# ---------------------------------------------------------------------- outcome_of


@pytest.mark.parametrize("status, filled, by_us, extra, expected", [
    ("filled", "10", False, {}, ("filled", "")),
    ("canceled", "3", True, {}, ("partially_filled", "filled 3 of 10, the rest canceled")),
    ("expired", "3", False, {}, ("partially_filled", "filled 3 of 10, the rest expired")),
    ("replaced", "3", False, {}, ("partially_filled", "filled 3 of 10, the rest replaced")),
    ("canceled", "0", True, {}, ("canceled", "not filled within the 10s order timeout; canceled")),
    ("canceled", "0", False, {},
     ("canceled", "canceled by the broker with nothing filled (no liquidity for the IOC order?)")),
    ("expired", "0", False, {}, ("expired", "expired with nothing filled")),
    ("replaced", "0", False, {"replaced_by": "o-9"}, ("canceled", "replaced by order o-9")),
    ("replaced", "0", False, {}, ("canceled", "replaced by order ?")),
    ("rejected", "0", False, {"reject_reason": "market closed"}, ("rejected", "market closed")),
    ("rejected", "0", False, {},
     ("rejected", "rejected by the broker after it accepted the order (Alpaca gives no reason on the order)")),
    ("done_for_day", "10", False, {}, ("filled", "")),
    ("done_for_day", "3", False, {}, ("partially_filled", "filled 3 of 10, done for the day")),
    ("calculated", "0", False, {}, ("expired", "done for the day with nothing filled")),
], ids=["filled", "partial-canceled", "partial-expired", "partial-replaced", "canceled-by-us", "canceled-by-broker",
        "expired", "replaced", "replaced-unknown", "rejected-with-reason", "rejected", "done-for-day-filled",
        "done-for-day-partial", "calculated-nothing"])
def test_outcome_of(status: str, filled: str, by_us: bool, extra: dict[str, str], expected: tuple[str, str]):
    order = make_order(status, qty="10", filled=filled, **extra)
    assert outcome_of(order, canceled_by_us=by_us, order_timeout=10.0) == expected


def test_outcome_of_a_fractional_partial_fill():
    order = make_order("canceled", qty="2.50", filled="0.50")
    assert outcome_of(order, canceled_by_us=True, order_timeout=10.0) == (
        "partially_filled", "filled 0.5 of 2.5, the rest canceled")


def test_a_delivery_held_past_its_marker_records_nothing_and_keeps_the_settled_reservation(bench: Bench):
    """Worker A journals a fill and acks; the done marker expires (retention); a delivery of the same
    entry held all along (a paused worker B) then ends in a skip: journal_record.lua refuses it (the
    group acked the entry), and the release that came with the skip is not made, so A's settled
    reservation keeps counting its cash until the cached account shows the fill."""
    job = reserved_job(bench)
    order = order_of(job, "filled", "2", "100.02")
    stage = recorder(bench)
    assert stage.final(job, Placed(order, FINAL_AT - 1, Decimal(2)), Final(order, FINAL_AT)) == JOURNALED
    bench.r.delete(bench.keys.done("nvda", job.signal.source_id))  # the marker's ttl ran out
    assert stage.skipped(job, Skip("no NVDA shares to sell")) == DUPLICATE
    assert len(bench.journal()) == 1
    kept = bench.ledger.get(job.coid)
    assert kept is not None and kept.settled and kept.cash == Decimal("200.04")
