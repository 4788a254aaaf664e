"""policy.rule_for: every row of POLICY, first match wins, the stage decides between rows."""
from __future__ import annotations

import pytest
import redis

from bot.alpaca.errors import (
    AlpacaError,
    BrokerUnavailable,
    DuplicateClientOrderId,
    InsufficientFunds,
    InvalidOrder,
    NotFound,
    OrderOutcomeUnknown,
    RateLimited,
    Unauthorized,
)
from bot.ratelimit import RateLimitTimeout
from bot.worker.policy import CANCEL, FOLLOW, POLICY, SUBMIT, Action, rule_for

STAGES = (None, SUBMIT, FOLLOW, CANCEL)


def funds() -> InsufficientFunds:
    return InsufficientFunds("POST /v2/orders: insufficient buying power", status=403, code=40310000)


def duplicate() -> DuplicateClientOrderId:
    return DuplicateClientOrderId("POST /v2/orders: client_order_id must be unique", status=422, code=40010001)


def test_redis_unreachable_raises_in_every_stage():
    for exc in (redis.ConnectionError("refused"), redis.TimeoutError("timed out")):
        for stage in STAGES:
            assert rule_for(exc, stage).action is Action.RAISE, (exc, stage)


def test_duplicate_client_order_id_stays_pending_even_in_submit():
    # a subclass of InvalidOrder: its own row comes first, so it is never REJECT (nor RETRY)
    for stage in STAGES:
        rule = rule_for(duplicate(), stage)
        assert rule.action is Action.PENDING, stage
        assert rule.reason(duplicate()) == ("broker: DuplicateClientOrderId: POST /v2/orders: "
                                            "client_order_id must be unique (HTTP 422, code 40010001)")
        assert not rule.traceback


def test_refusals_are_rejected_in_submit_only():
    invalid = InvalidOrder("POST /v2/orders: qty must be > 0", status=422)
    assert rule_for(funds(), SUBMIT).action is Action.REJECT
    assert rule_for(invalid, SUBMIT).action is Action.REJECT
    outside = rule_for(funds())
    assert outside.action is Action.PENDING
    assert outside.reason(funds()).startswith("broker: ")
    assert outside.reason(funds()) == ("broker: InsufficientFunds: POST /v2/orders: insufficient buying power "
                                       "(HTTP 403, code 40310000)")


@pytest.mark.parametrize("exc", [RateLimited("429", retry_after=1.0), BrokerUnavailable("503"),
                                 RateLimitTimeout("trading", 1.0, 3.0)], ids=lambda e: type(e).__name__)
def test_nothing_placed_is_retried_in_submit_and_pending_outside(exc: Exception):
    assert rule_for(exc, SUBMIT).action is Action.RETRY
    outside = rule_for(exc)
    assert outside.action is Action.PENDING
    assert outside.reason(exc) == f"broker: {exc}"


def test_bad_keys_are_pending_in_submit():
    exc = Unauthorized("401", status=401)
    rule = rule_for(exc, SUBMIT)
    assert rule.action is Action.PENDING and rule.reason(exc) == f"broker: {exc}"


def test_an_unknown_outcome_is_sent_again_under_the_same_id_in_submit_and_pending_elsewhere():
    # the same client_order_id again is refused by the broker if the first POST landed: sending it
    # again is what makes the broker answer definitively; outside the submit it stays pending
    exc = OrderOutcomeUnknown("POST timed out", client_order_id="tb-x")
    assert rule_for(exc, SUBMIT).action is Action.RETRY
    assert rule_for(exc).action is Action.PENDING and rule_for(exc).reason(exc) == f"broker: {exc}"


def test_follow_not_found_or_refused_is_pending_other_broker_errors_are_retried():
    gone = NotFound("GET /v2/orders/o-1: order not found", status=404)
    rule = rule_for(gone, FOLLOW)
    assert rule.action is Action.PENDING
    assert rule.reason(gone) == "broker: NotFound: GET /v2/orders/o-1: order not found (HTTP 404)"
    assert rule_for(InvalidOrder("422"), FOLLOW).action is Action.PENDING
    for exc in (BrokerUnavailable("503"), RateLimited("429"), Unauthorized("401"), AlpacaError("odd"),
                RateLimitTimeout("trading", 1.0, 2.0)):
        assert rule_for(exc, FOLLOW).action is Action.RETRY, exc


def test_any_broker_error_of_a_cancel_is_retried():
    for exc in (InvalidOrder("DELETE: 422", status=422), NotFound("404"), funds(),
                BrokerUnavailable("503"), AlpacaError("odd"), RateLimitTimeout("trading", 1.0, 2.0)):
        assert rule_for(exc, CANCEL).action is Action.RETRY, exc


def test_redis_refusing_a_write_is_pending():
    exc = redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'")
    for stage in STAGES:
        rule = rule_for(exc, stage)
        assert rule.action is Action.PENDING and not rule.traceback
        assert rule.reason(exc) == "redis: OOM command not allowed when used memory > 'maxmemory'"


def test_a_bug_is_pending_with_its_traceback():
    exc = RuntimeError("boom")
    for stage in STAGES:
        rule = rule_for(exc, stage)
        assert rule.action is Action.PENDING and rule.traceback
        assert rule.reason(exc) == "internal error: RuntimeError: boom"
    assert rule_for(KeyError("ticker")).reason(KeyError("ticker")) == "internal error: KeyError: 'ticker'"


def test_interrupts_are_not_ours_to_keep():
    for exc in (KeyboardInterrupt(), SystemExit(1)):
        rule = rule_for(exc, SUBMIT)
        assert rule.action is Action.RAISE and rule not in POLICY


def test_only_the_broker_errors_are_tied_to_a_stage():
    # a stage-only row never applies outside its stage: rule_for(exc) skips it
    for exc in (funds(), BrokerUnavailable("503"), NotFound("404"), InvalidOrder("422")):
        assert rule_for(exc).stage is None
    assert {rule.stage for rule in POLICY} == {None, SUBMIT, FOLLOW, CANCEL}
