"""Pre-trade checks. Each returns None when the order may go, else the precise reason it may not
(the worker journals that reason with outcome "skipped"). Pure functions: the worker reads the
halt key, clock and positions and passes the values in.

Stale prices are not checked here: ``bot.market.MarketCache.price`` raises ``StalePrice`` (poll too
old, or stamped in the future) and ``StaleQuote`` (the quote's own time too old). The market clock's
age is checked here (``check_market_open``), its session bounds by ``bot.market.ClockState.open_at``.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

# A signal (or a cache entry) stamped further in the future than this is a clock problem, not fresh data.
MAX_FUTURE_SKEW = 5.0
# The poller reads the market clock every 30 s: a clock hash older than two of its polls (plus slack)
# means the poller is behind or down, and the cached is_open may no longer be true.
MAX_CLOCK_AGE = 90.0


@dataclass(frozen=True)
class RiskLimits:
    max_signal_age: float  # seconds from the source entry's time to the check
    max_order_notional: Decimal  # qty * price of one order
    max_position_value: Decimal  # (held + bought) * price after a buy
    allow_extended_hours: bool = False  # trade while the regular session is closed
    max_clock_age: float = MAX_CLOCK_AGE  # seconds: an older cached market clock counts as unknown

    @classmethod
    def from_settings(cls, settings: Any) -> RiskLimits:
        return cls(
            max_signal_age=float(settings.max_signal_age),
            max_order_notional=Decimal(settings.max_order_notional),
            max_position_value=Decimal(settings.max_position_value),
            allow_extended_hours=bool(settings.extended_hours),
        )


def check_halt(halt_reason: str | None) -> str | None:
    """The kill switch: any value (even empty) in the halt key stops new orders."""
    if halt_reason is None:
        return None
    return f"kill switch on: {halt_reason.strip() or '(no reason given)'}"


def check_signal_age(source_at: float | None, now: float, limits: RiskLimits) -> str | None:
    if source_at is None:
        return "signal age unknown: it carries no source time"
    age = now - source_at
    if age > limits.max_signal_age:
        return f"signal is {age:.1f}s old (max {limits.max_signal_age:g}s)"
    if -age > MAX_FUTURE_SKEW:
        return f"signal is stamped {-age:.1f}s in the future: check the clocks of the source and this host"
    return None


def check_market_open(clock_state_is_open: bool | None, limits: RiskLimits,
                      clock_age: float | None = None) -> str | None:
    """Fail closed: no clock in the cache, or one too old to trust, is a reason to wait, not to trade.

    ``clock_state_is_open``: whether the regular session is open NOW by the cached clock (see
    ``bot.market.ClockState.open_at``); ``clock_age``: seconds since the clock was polled.
    """
    if clock_state_is_open is None:
        return "market clock unknown: the price poller has not written it"
    if clock_age is not None and clock_age > limits.max_clock_age:
        return (f"market clock unknown: stale, polled {clock_age:.0f}s ago (max {limits.max_clock_age:g}s); "
                f"is the price poller running?")
    if clock_age is not None and -clock_age > MAX_FUTURE_SKEW:
        return (f"market clock unknown: polled {-clock_age:.1f}s in the future; check the clocks of the "
                f"poller's host and this one")
    if not clock_state_is_open and not limits.allow_extended_hours:
        return "market is closed"
    return None


def check_order_notional(qty: Decimal | None, price: Decimal | None, limits: RiskLimits) -> str | None:
    if qty is None or price is None:
        return "order value unknown: no qty or no price to value it"
    notional = qty * price
    if notional > limits.max_order_notional:
        return (f"order notional {_money(notional)} ({_qty(qty)} x {price}) exceeds the max "
                f"{_money(limits.max_order_notional)}")
    return None


def check_position_value(current_qty: Decimal, add_qty: Decimal | None, price: Decimal | None,
                         limits: RiskLimits) -> str | None:
    """Buys only: the position after the fill must stay within max_position_value."""
    if add_qty is None or price is None:
        return "position value unknown: no qty or no price to value it"
    after = (current_qty + add_qty) * price
    if after > limits.max_position_value:
        return (f"position would be worth {_money(after)} ({_qty(current_qty)} held + {_qty(add_qty)} "
                f"x {price}), above the max {_money(limits.max_position_value)}")
    return None


def buy_cash_cap(limits: RiskLimits, *, current_qty: Decimal, price: Decimal) -> Decimal:
    """The most a buy may spend and pass both value checks: pass it as (or min it into) the
    ledger's ``max_cash`` so an all-in buy is sized to the limits instead of skipped by them."""
    room = limits.max_position_value - max(current_qty, Decimal(0)) * price
    return max(Decimal(0), min(limits.max_order_notional, room))


@dataclass(frozen=True)
class Refusal:
    """Why a gate refused a signal. ``gate``: the kill switch or the market clock refused it, checks
    that may refuse every signal for hours (the worker spares the broker a lookup for those)."""

    reason: str
    gate: bool


def check_reduce_only(reduce_only_reason: str | None, side: str) -> str | None:
    """Reduce-only: a buy would add exposure (this fleet holds long positions only, and a sell
    never offers more than the shares available, so every sell shrinks a position)."""
    if reduce_only_reason is None or side != "buy":
        return None
    return f"reduce-only: {reduce_only_reason.strip() or '(no reason given)'}: a buy would add exposure"


def pre_trade_check(*, halt_reason: str | None, source_at: float | None, now: float,
                    clock_is_open: bool | None, limits: RiskLimits, require_open: bool = True,
                    clock_age: float | None = None, clock_error: str | None = None,
                    reduce_only_reason: str | None = None, side: str = "buy") -> Refusal | None:
    """The gates in their order: the trading state (halted; reduce-only for a buy), signal age, a
    readable market clock, market hours (the last two skipped when ``require_open`` is False).
    The first refusal, or None."""
    reason = check_halt(halt_reason) or check_reduce_only(reduce_only_reason, side)
    if reason:
        return Refusal(reason, gate=True)
    reason = check_signal_age(source_at, now, limits)
    if reason:
        return Refusal(reason, gate=False)
    if not require_open:
        return None
    if clock_error is not None:
        return Refusal(f"market clock unknown: {clock_error}", gate=True)
    reason = check_market_open(clock_is_open, limits, clock_age)
    return Refusal(reason, gate=True) if reason else None


def pre_trade_reason(*, halt_reason: str | None, source_at: float | None, now: float,
                     clock_is_open: bool | None, limits: RiskLimits, require_open: bool = True,
                     clock_age: float | None = None) -> str | None:
    """``pre_trade_check``'s reason alone."""
    refusal = pre_trade_check(halt_reason=halt_reason, source_at=source_at, now=now, clock_is_open=clock_is_open,
                              limits=limits, require_open=require_open, clock_age=clock_age)
    return refusal.reason if refusal is not None else None


def sell_qty_cap(limits: RiskLimits, price: Decimal) -> Decimal:
    """The most whole shares one sell may offer at ``price`` within max_order_notional (0 = not one).

    An all-in sell is sized to this instead of being skipped: a position worth more than the
    order limit is then closed over several sells, each within the limit.
    """
    if price <= 0:
        return Decimal(0)
    return (limits.max_order_notional / price).to_integral_value(rounding=ROUND_FLOOR)


def _money(value: Decimal) -> str:
    """Cents, unless that would hide the fraction that breaks the limit."""
    cents = value.quantize(Decimal("0.01"))
    return format(cents if cents == value else value, "f")


def _qty(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
