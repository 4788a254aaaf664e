"""Order sizing: turn a signal and the cached market into an order plan.

Two strategies:

- ``all-in`` (the original bot's behaviour, generalised by per-symbol weights): a buy may spend
  ``weight * equity`` (the ledger then buys as many whole shares as the cash not committed to other
  orders allows); a sell sells every share available (the ledger decides how many).
- ``fixed``: the signal's own qty, else the configured fixed qty, else as many whole shares as the
  configured fixed notional buys at the ask.

Pure functions: no I/O, Decimal in and out; bad input raises ValueError with a clear message.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from bot.numbers import number, positive

ALL_IN = "all-in"
FIXED = "fixed"
STRATEGIES = (ALL_IN, FIXED)
ORDER_TYPES = ("market", "limit")
# Alpaca: limit prices >= $1 take at most 2 decimals, below $1 at most 4 ("sub-penny increment").
PENNY = Decimal("0.01")
SUB_PENNY = Decimal("0.0001")
ONE_DOLLAR = Decimal(1)


@dataclass(frozen=True)
class OrderPlan:
    side: str  # "buy" | "sell"
    qty: Decimal | None  # None: the ledger decides (all-in)
    max_cash: Decimal | None  # buys under all-in: the most the order may spend
    order_type: str = "market"  # "market" | "limit"
    time_in_force: str = "ioc"
    limit_price: Decimal | None = None

    def sized(self, qty: Decimal) -> OrderPlan:
        """This plan with its final qty. A fractional qty forces time_in_force "day": Alpaca refuses
        fractional IOC/FOK orders ("fractional orders must be DAY orders")."""
        tif = "day" if qty != qty.to_integral_value() else self.time_in_force
        return replace(self, qty=qty, time_in_force=tif)

    def reserve_price(self, quote: Decimal) -> Decimal:
        """The per-share price to reserve cash at: a limit order cannot pay more than its limit."""
        return self.limit_price if self.limit_price is not None else quote


def plan_buy(strategy: str, *, weight: Decimal, equity: Decimal, ask: Decimal, signal_qty: Decimal | None,
             fixed_qty: Decimal | None, fixed_notional: Decimal | None, order_type: str = "market",
             slippage_bps: int = 0, position_value: Decimal | None = None) -> OrderPlan:
    """The plan for a buy.

    all-in: ``max_cash = weight * equity`` (rounded down to a cent), less ``position_value`` when
    given (position-target semantics: a repeated buy signal does not double the position).
    fixed: ``signal_qty``, else ``fixed_qty``, else floor(fixed_notional / ask) whole shares.
    limit: ``limit_price = ask * (1 + slippage_bps/10000)`` rounded UP to a valid tick.
    """
    _check_strategy(strategy)
    _check_order_type(order_type)
    bps = _bps(slippage_bps)
    ask = positive("ask", ask)
    limit_price = None
    if order_type == "limit":
        limit_price = round_to_tick(ask * (1 + Decimal(bps) / 10000), up=True)
    if strategy == ALL_IN:
        weight = number("weight", weight)
        if not 0 <= weight <= 1:
            raise ValueError(f"weight must be between 0 and 1, got {weight}")
        if weight == 0:
            raise ValueError("weight of this symbol is 0: the all-in strategy gives it no cash")
        equity = positive("equity", equity)
        budget = weight * equity
        if position_value is not None:
            held = number("position_value", position_value)
            budget -= max(held, Decimal(0))
            if budget <= 0:
                raise ValueError(f"position already worth {held:.2f}, at or above its target "
                                 f"{weight * equity:.2f} ({weight} of equity {equity:.2f})")
        max_cash = budget.quantize(PENNY, rounding=ROUND_FLOOR)
        if max_cash <= 0:
            raise ValueError(f"{weight} of equity {equity} is less than a cent")
        return OrderPlan("buy", None, max_cash, order_type, "ioc", limit_price)
    qty = _fixed_qty(signal_qty, fixed_qty)
    if qty is None:
        if fixed_notional is None:
            raise ValueError("the fixed strategy needs a qty: none in the signal, and neither a fixed qty "
                             "nor a fixed notional is configured")
        notional = positive("fixed_notional", fixed_notional)
        qty = (notional / ask).to_integral_value(rounding=ROUND_FLOOR)
        if qty < 1:
            raise ValueError(f"fixed notional {notional} buys no whole share at ask {ask}")
    return OrderPlan("buy", None, None, order_type, "ioc", limit_price).sized(qty)


def plan_sell(strategy: str, *, bid: Decimal | None, signal_qty: Decimal | None, fixed_qty: Decimal | None,
              order_type: str = "market", slippage_bps: int = 0) -> OrderPlan:
    """The plan for a sell.

    all-in: qty None (the ledger sells every share available). fixed: ``signal_qty``, else
    ``fixed_qty``. limit: ``limit_price = bid * (1 - slippage_bps/10000)`` rounded DOWN to a tick.
    """
    _check_strategy(strategy)
    _check_order_type(order_type)
    bps = _bps(slippage_bps)
    limit_price = None
    if order_type == "limit":
        bid = positive("bid", bid)
        limit_price = round_to_tick(bid * (1 - Decimal(bps) / 10000), up=False)
        if limit_price <= 0:
            raise ValueError(f"limit price of bid {bid} less {bps} bps rounds to {limit_price}: lower the slippage")
    if strategy == ALL_IN:
        return OrderPlan("sell", None, None, order_type, "ioc", limit_price)
    qty = _fixed_qty(signal_qty, fixed_qty)
    if qty is None:
        raise ValueError("the fixed strategy needs a qty: none in the signal and no fixed qty configured")
    return OrderPlan("sell", None, None, order_type, "ioc", limit_price).sized(qty)


def limit_price_for(side: str, quote: Decimal, slippage_bps: int) -> Decimal:
    """A limit order's price: the ask plus the slippage rounded UP to a tick for a buy, the bid less
    it rounded DOWN for a sell."""
    bps = _bps(slippage_bps)
    quote = positive("ask" if side == "buy" else "bid", quote)
    if side == "buy":
        return round_to_tick(quote * (1 + Decimal(bps) / 10000), up=True)
    price = round_to_tick(quote * (1 - Decimal(bps) / 10000), up=False)
    if price <= 0:
        raise ValueError(f"limit price of bid {quote} less {bps} bps rounds to {price}: lower the slippage")
    return price


def checked_intent(intent: Any, side: str) -> Any:
    """A strategy's Intent with its numbers checked (ValueError naming the bad one): qty positive with
    at most 9 decimals, cash and position value positive, and for a sell no cash."""
    if intent.qty is not None:
        _qty("qty", intent.qty)
    if intent.max_cash is not None:
        if side == "sell":
            raise ValueError("a sell has no max_cash: give qty, or nothing for every share")
        positive("max_cash", intent.max_cash)
    if intent.max_position_value is not None:
        number("max_position_value", intent.max_position_value)
        if intent.max_position_value < 0:
            raise ValueError(f"max_position_value must be >= 0, got {intent.max_position_value}")
    return intent


def round_to_tick(price: Decimal, *, up: bool) -> Decimal:
    """A valid limit price: 2 decimals at or above $1, 4 below; ``up`` for buys, down for sells."""
    price = number("price", price)
    tick = PENNY if price >= ONE_DOLLAR else SUB_PENNY
    rounded = price.quantize(tick, rounding=ROUND_CEILING if up else ROUND_FLOOR)
    if rounded >= ONE_DOLLAR and tick == SUB_PENNY:
        rounded = rounded.quantize(PENNY)  # 0.99996 rounds up to 1.0000: written as 1.00
    return rounded


# --------------------------------------------------------------------------- validation


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")


def _check_order_type(order_type: str) -> None:
    if order_type not in ORDER_TYPES:
        raise ValueError(f"unknown order type {order_type!r}: choose one of {', '.join(ORDER_TYPES)}")


def _bps(slippage_bps: int) -> int:
    if isinstance(slippage_bps, bool) or not isinstance(slippage_bps, int) or not 0 <= slippage_bps < 10000:
        raise ValueError(f"slippage_bps must be a whole number from 0 to 9999, got {slippage_bps!r}")
    return slippage_bps






def _fixed_qty(signal_qty: Decimal | None, fixed_qty: Decimal | None) -> Decimal | None:
    if signal_qty is not None:
        return _qty("signal qty", signal_qty)
    if fixed_qty is not None:
        return _qty("fixed qty", fixed_qty)
    return None


def _qty(what: str, value: Any) -> Decimal:
    qty = positive(what, value)
    exponent = qty.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -9:
        raise ValueError(f"{what} {qty} has more than 9 decimal places (Alpaca's limit)")
    return qty
