"""Typed errors of the Alpaca REST API. Messages never carry credentials."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.errors import TradebotError


class AlpacaError(TradebotError):
    """Base of every error the client raises."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None,
                 body: Mapping[str, Any] | None = None, broker_message: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        # the broker's parsed JSON error body (e.g. buying_power, cost_basis); never holds request headers
        self.body: Mapping[str, Any] = dict(body or {})
        # the broker's own words (its "message", credentials scrubbed), without our "METHOD path: " prefix
        self.broker_message = broker_message

    @property
    def reject_reason(self) -> str | None:
        """The body's ``reject_reason`` when the broker gave one (seen on wash-trade refusals)."""
        value = self.body.get("reject_reason")
        return None if value in (None, "") else str(value)

    @property
    def reason(self) -> str:
        """What the broker said, fit for a journal: its message, plus its ``reject_reason`` if any."""
        said = self.broker_message or self.message
        extra = self.reject_reason
        return f"{said} ({extra})" if extra and extra not in said else said

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"(HTTP {self.status}" + (f", code {self.code})" if self.code else ")"))
        return " ".join(parts)


class Unauthorized(AlpacaError):
    """401, or 403 refusing the credentials or their permissions (wrong or missing key pair,
    data subscription that does not cover the feed)."""


class FeedNotPermitted(Unauthorized):
    """403 "subscription does not permit querying recent SIP data": the market-data feed asked for
    (``feed``, e.g. ``sip``) is not covered by the account's data plan. The fix: ALPACA_DATA_FEED=iex,
    TRADEBOT_DATA_FEED_FALLBACK=iex, or a plan that includes the feed (Algo Trader Plus for SIP)."""

    def __init__(self, message: str, *, feed: str | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.feed = feed


class InsufficientFunds(AlpacaError):
    """403 refusing an order (code 40310000) for its size: ``kind`` is ``buying_power`` ("insufficient
    buying power", body with buying_power/cost_basis) or ``qty`` ("insufficient qty available for
    order (requested: N, available: M)", body with available/existing_qty/held_for_orders)."""

    def __init__(self, message: str, *, kind: str = "buying_power", **kw) -> None:
        super().__init__(message, **kw)
        self.kind = kind


class TradingForbidden(AlpacaError):
    """403 refusing an order for a reason of the account, not of this order's size: ``kind`` is
    ``pattern_day_trading`` (code 40310100), ``wash_trade`` ("potential wash trade detected. use
    complex orders", with a ``reject_reason``), ``shorting_not_allowed`` ("account is not allowed to
    short"), ``account_restricted`` (not authorized, blocked, trading suspended, not allowed) or
    ``forbidden`` (anything else). ``broker_message`` / ``reason`` keep what the broker said."""

    def __init__(self, message: str, *, kind: str = "forbidden", **kw) -> None:
        super().__init__(message, **kw)
        self.kind = kind


class InvalidOrder(AlpacaError):
    """422 (or 400): the request was refused as invalid; no order was created."""


class DuplicateClientOrderId(InvalidOrder):
    """422 "client_order_id must be unique" (code 40010001): the id is already used.
    Resolve by looking the order up (AlpacaClient.submit_order does it)."""


class NotFound(AlpacaError):
    """404: no such order, position or asset."""


class RateLimited(AlpacaError):
    """429 after the retries ran out."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class BrokerUnavailable(AlpacaError):
    """5xx or transport failure after the retries ran out."""


class OrderOutcomeUnknown(AlpacaError):
    """A submit timed out or got a 5xx, and the lookup by client_order_id could not settle it either
    (a "not found" is no proof: a delayed POST may still land).

    The order may or may not exist; only the same client_order_id may be sent again (a duplicate is
    refused, so a late original and a re-send can never both fill), or it is looked up later.
    """

    def __init__(self, message: str, *, client_order_id: str, **kw) -> None:
        super().__init__(message, **kw)
        self.client_order_id = client_order_id
