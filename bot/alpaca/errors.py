"""Typed errors of the Alpaca REST API. Messages never carry credentials."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.errors import TradebotError


class AlpacaError(TradebotError):
    """Base of every error the client raises."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None,
                 body: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        # the broker's parsed JSON error body (e.g. buying_power, cost_basis); never holds request headers
        self.body: Mapping[str, Any] = dict(body or {})

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.append(f"(HTTP {self.status}" + (f", code {self.code})" if self.code else ")"))
        return " ".join(parts)


class Unauthorized(AlpacaError):
    """401, or 403 refusing the credentials or their permissions (wrong or missing key pair,
    data subscription that does not cover the feed)."""


class InsufficientFunds(AlpacaError):
    """403 refusing an order (code 40310000): buying power or shares not sufficient."""


class TradingForbidden(AlpacaError):
    """403 refusing an order for a reason of the account, not of this order's size: ``kind`` is
    ``pattern_day_trading`` (code 40310100), ``wash_trade``, ``account_restricted`` (not authorized,
    blocked, trading suspended, shorting not allowed) or ``forbidden`` (anything else)."""

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
