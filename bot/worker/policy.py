"""The worker's error policy: what an exception on a signal's path becomes, in one table.

Besides the table, values say it: a Skip is journaled ``skipped`` (after the broker lookup), a
Rejected ``rejected``, a DeadLetter goes to the DLQ; an unparseable entry and one delivered more
than ``max_deliveries`` times are DeadLetters (the latter only once no order exists for it).
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

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
    TradingForbidden,
    Unauthorized,
)
from bot.ratelimit import RateLimitTimeout


class Action(enum.Enum):
    RAISE = "raise"  # the loop backs off and replays the own PEL (Redis unreachable)
    PENDING = "pending"  # the entry stays pending: replayed with a broker lookup first, DLQ after max_deliveries
    REJECT = "reject"  # journaled rejected: the broker refused this order for good
    RETRY = "retry"  # the stage tries again itself (another submit after a pause, the next poll)


SUBMIT, FOLLOW, CANCEL = "submit", "follow", "cancel"


@dataclass(frozen=True)
class Rule:
    errors: tuple[type[BaseException], ...]
    action: Action
    reason: Callable[[BaseException], str] = str
    stage: str | None = None  # only while this stage runs; None: anywhere
    traceback: bool = False  # log the traceback: a bug, not an outage


def _broker(exc: BaseException) -> str:
    return f"broker: {exc}"


def _broker_named(exc: BaseException) -> str:
    return f"broker: {type(exc).__name__}: {exc}"


# "Try again later", never "this order is bad" (RateLimitTimeout: no token in time).
TRANSIENT = (BrokerUnavailable, RateLimited, Unauthorized, OrderOutcomeUnknown, RateLimitTimeout)

# First match wins.
POLICY: tuple[Rule, ...] = (
    # nothing can be recorded while Redis is away
    Rule((redis.ConnectionError, redis.TimeoutError), Action.RAISE),
    # the broker says the id exists yet cannot show it: transient, look again later
    Rule((DuplicateClientOrderId,), Action.PENDING, _broker_named),
    # refused for good: nothing was placed and asking again would be refused again
    Rule((InsufficientFunds, InvalidOrder, TradingForbidden), Action.REJECT, stage=SUBMIT),
    # nothing placed (busy broker, no token in time), or maybe placed (an unknown outcome: the same
    # client_order_id again is refused if the first landed): submit again with fresh checks, a few times
    Rule((RateLimited, BrokerUnavailable, RateLimitTimeout, OrderOutcomeUnknown), Action.RETRY, stage=SUBMIT),
    # a cancel refused (already final: 422) or failed: the follower reads the order back anyway
    Rule((AlpacaError, RateLimitTimeout), Action.RETRY, stage=CANCEL),
    # the order followed vanished or is refused: the replay looks it up again
    Rule((NotFound, InvalidOrder), Action.PENDING, _broker_named, stage=FOLLOW),
    # a poll or a cancel failed: the follower keeps going until its deadline
    Rule((AlpacaError, RateLimitTimeout), Action.RETRY, stage=FOLLOW),
    # try later; after an unknown outcome the order may exist, so the replay looks it up first
    Rule(TRANSIENT, Action.PENDING, _broker),
    Rule((AlpacaError,), Action.PENDING, _broker_named),
    # Redis refused a write (OOM...): not the signal's fault
    Rule((redis.ResponseError,), Action.PENDING, lambda exc: f"redis: {exc}"),
    # a bug: keep the entry; after max_deliveries it reaches the DLQ with this reason
    Rule((Exception,), Action.PENDING, lambda exc: f"internal error: {type(exc).__name__}: {exc}", traceback=True),
)


def rule_for(exc: BaseException, stage: str | None = None) -> Rule:
    """The first rule of POLICY for ``exc`` that applies in ``stage`` (None: outside any stage's own handling)."""
    for rule in POLICY:
        if isinstance(exc, rule.errors) and rule.stage in (None, stage):
            return rule
    return Rule((BaseException,), Action.RAISE)  # KeyboardInterrupt, SystemExit: not ours to keep
