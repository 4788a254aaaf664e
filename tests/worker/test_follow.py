"""Follower.follow: poll to a final state, cancel past the order timeout or the stop grace."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from bot.alpaca.errors import BrokerUnavailable, InvalidOrder, NotFound, RateLimited
from bot.alpaca.models import Order
from bot.worker.follow import Follower
from bot.worker.records import Final, Unfinished
from bot.worker.stopping import StopGrace

from .bench import config, make_order

FAST = dict(order_timeout=0.05, cancel_timeout=0.05, follow_initial=0.005, follow_max=0.01)


class Orders:
    """A broker holding one order. Reads answer the next of ``reads`` (a status, or an exception to
    raise), then ``status``; an accepted cancel turns ``status`` into ``on_cancel`` (None: the cancel
    does not end it); a cancel raises the next of ``cancel_errors`` first."""

    def __init__(self, status: str = "new", *, on_cancel: str | None = "canceled", reads: tuple[Any, ...] = (),
                 cancel_errors: tuple[Exception, ...] = (), filled: str = "0") -> None:
        self.status, self.on_cancel, self.filled = status, on_cancel, filled
        self.answers, self.cancel_errors = list(reads), list(cancel_errors)
        self.reads = self.cancel_attempts = self.cancels = 0
        self.created_at = datetime.now(timezone.utc)

    def order(self, status: str | None = None) -> Order:
        return make_order(status or self.status, filled=self.filled, created_at=self.created_at)

    def get_order(self, order_id: str) -> Order:
        assert order_id == "o-1"
        self.reads += 1
        answer = self.answers.pop(0) if self.answers else self.status
        if isinstance(answer, Exception):
            raise answer
        return self.order(answer)

    def cancel_order(self, order_id: str) -> None:
        assert order_id == "o-1"
        self.cancel_attempts += 1
        if self.cancel_errors:
            raise self.cancel_errors.pop(0)
        self.cancels += 1
        if self.on_cancel is not None:
            self.status = self.on_cancel


def follower(broker: Orders, grace: StopGrace | None = None, **options: Any) -> Follower:
    return Follower(client=broker, grace=grace or StopGrace(15.0), config=config(**{**FAST, **options}),
                    clock=time.time, sleep=time.sleep)


@pytest.mark.parametrize("status", ["filled", "canceled", "expired", "rejected", "replaced"])
def test_a_final_order_is_final_at_once(status: str):
    broker = Orders(status)
    before = time.time()
    final = follower(broker).follow(broker.order())
    assert final == Final(broker.order(), final.final_at, canceled_by_us=False, stopping=False)
    assert before <= final.final_at <= time.time()
    assert broker.reads == 0 and broker.cancel_attempts == 0


def test_an_order_that_fills_while_followed_is_final():
    broker = Orders("filled", reads=("accepted", "partially_filled"))
    final = follower(broker, order_timeout=5.0).follow(broker.order("new"))
    assert isinstance(final, Final) and final.order.status == "filled" and not final.canceled_by_us
    assert broker.reads == 3 and broker.cancel_attempts == 0


def test_an_order_that_never_fills_is_canceled_after_the_order_timeout():
    broker = Orders("new")
    started = time.monotonic()
    final = follower(broker).follow(broker.order())
    assert isinstance(final, Final) and final.canceled_by_us and not final.stopping
    assert final.order.status == "canceled" and broker.cancels == 1
    assert time.monotonic() - started >= FAST["order_timeout"] - 0.01  # not before the timeout


def test_the_order_timeout_counts_from_the_orders_creation():
    broker = Orders("new")
    broker.created_at = datetime.now(timezone.utc) - timedelta(seconds=120)  # placed by an earlier delivery
    final = follower(broker, order_timeout=60.0).follow(broker.order())
    assert isinstance(final, Final) and final.canceled_by_us and broker.cancels == 1


def test_a_cancel_that_does_not_end_the_order_is_unfinished_after_the_cancel_timeout():
    broker = Orders("new", on_cancel=None)  # pending_cancel forever, say
    started = time.monotonic()
    result = follower(broker).follow(broker.order())
    assert result == Unfinished("order o-1 (tb-nvda-1-1) did not reach a final state")
    assert time.monotonic() - started >= FAST["order_timeout"] + FAST["cancel_timeout"] - 0.01
    assert broker.cancels == 1 and broker.reads >= 1  # one cancel, then reading it back


def test_a_cancel_losing_the_race_to_a_fill_is_final_filled():
    broker = Orders("new", on_cancel="filled", filled="2")
    final = follower(broker).follow(broker.order())
    assert isinstance(final, Final) and final.order.status == "filled" and final.order.filled_qty == 2
    assert final.canceled_by_us  # the outcome comes from the status: outcome_of says filled


def test_read_errors_in_between_are_survived():
    broker = Orders("filled", reads=(BrokerUnavailable("GET: HTTP 503"), RateLimited("GET: HTTP 429")))
    final = follower(broker, order_timeout=5.0).follow(broker.order("new"))
    assert isinstance(final, Final) and final.order.status == "filled" and not final.canceled_by_us
    assert broker.reads == 3 and broker.cancel_attempts == 0


def test_a_failed_cancel_is_tried_again():
    broker = Orders("new", cancel_errors=(BrokerUnavailable("DELETE: HTTP 503"),))
    final = follower(broker, cancel_timeout=1.0).follow(broker.order())
    assert isinstance(final, Final) and final.canceled_by_us and final.order.status == "canceled"
    assert (broker.cancel_attempts, broker.cancels) == (2, 1)


def test_a_cancel_refused_as_no_longer_cancelable_reads_the_order_back():
    # the fill came first: the DELETE is answered 422 and the next read shows the fill
    broker = Orders("filled", filled="2", cancel_errors=(InvalidOrder("DELETE: not cancelable", status=422),))
    broker.created_at -= timedelta(seconds=1)  # past its order timeout: canceled before the first read
    final = follower(broker).follow(broker.order("new"))
    assert isinstance(final, Final) and final.order.status == "filled" and not final.canceled_by_us
    assert (broker.cancel_attempts, broker.cancels) == (1, 0)


def test_an_order_gone_at_the_broker_propagates():
    broker = Orders("new", reads=(NotFound("GET /v2/orders/o-1: order not found", status=404),))
    with pytest.raises(NotFound):
        follower(broker, order_timeout=5.0).follow(broker.order())
    assert broker.reads == 1


def test_a_bug_in_a_read_propagates():
    broker = Orders("new", reads=(RuntimeError("boom"),))
    with pytest.raises(RuntimeError, match="boom"):
        follower(broker, order_timeout=5.0).follow(broker.order())


def test_a_stop_cancels_within_the_stop_grace():
    broker = Orders("new")
    stop, grace = threading.Event(), StopGrace(0.1)
    grace.use(stop)
    stop.set()
    started = time.monotonic()
    final = follower(broker, grace=grace, order_timeout=60.0, cancel_timeout=0.05).follow(broker.order())
    assert isinstance(final, Final) and final.canceled_by_us and final.stopping
    assert time.monotonic() - started < 5 and broker.cancels == 1


def test_a_stop_already_past_its_grace_gives_up_after_one_last_cancel():
    broker = Orders("new", on_cancel=None)
    stop, grace = threading.Event(), StopGrace(0.05)
    grace.use(stop)
    stop.set()
    assert grace.left() is not None  # the stop is noted now...
    time.sleep(0.06)  # ...and its grace is over before following begins
    result = follower(broker, grace=grace, order_timeout=60.0, cancel_timeout=1.0).follow(broker.order())
    assert isinstance(result, Unfinished)
    assert (broker.cancels, broker.reads) == (1, 0)  # best effort: the replay reads it back


class Replaced(Orders):
    """o-1 was replaced (by hand, in the dashboard) by o-2, which fills."""

    def get_order(self, order_id: str) -> Order:
        self.reads += 1
        assert order_id == "o-2"
        return make_order("filled", order_id="o-2", coid="manual-2", filled="2")


def test_a_replaced_order_is_followed_through_its_replacement():
    broker = Replaced("replaced")
    final = follower(broker, order_timeout=5.0).follow(make_order("replaced", replaced_by="o-2"))
    assert isinstance(final, Final) and final.order.id == "o-2" and final.order.status == "filled"
    assert broker.reads == 1 and broker.cancel_attempts == 0


@pytest.mark.parametrize("status", ["done_for_day", "calculated"])
def test_a_day_order_done_for_the_day_is_final_without_a_cancel(status: str):
    broker = Orders(status, filled="1")
    final = follower(broker, order_timeout=5.0).follow(broker.order())
    assert isinstance(final, Final) and final.order.status == status
    assert broker.cancel_attempts == 0


@pytest.mark.parametrize("status", ["held", "accepted_for_bidding", "pending_new", "pending_cancel", "pending_replace"])
def test_waiting_statuses_are_not_final(status: str):
    broker = Orders("filled", reads=(status, status))
    final = follower(broker, order_timeout=5.0).follow(broker.order(status))
    assert isinstance(final, Final) and final.order.status == "filled" and broker.reads == 3
