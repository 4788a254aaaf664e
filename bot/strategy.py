"""Strategy plug-ins: how big an order a signal gets. docs/strategies.md shows how to write one.

A strategy sees a read-only view of the signal, the market and its settings, and answers with an
``Intent`` (how many shares, or how much cash, and the position the symbol may reach) or a
``Pass`` (no order, and why). Everything else stays the fleet's: the trading state and the gates
before it, the ledger's reservation, the risk limits, the limit price, the exactly-once submit and
the follow after it; a strategy cannot place, cancel or size past them.

Built in: ``all-in``, ``fixed``, ``percent-of-equity``, ``target-weight``. More come from the
``tradebot.strategies`` entry-point group (a class with ``name`` and ``size``); a strategy is chosen
per ticker (``TRADEBOT_STRATEGY`` / ``--strategy``: ``NAME`` or ``NVDA=target-weight,*=all-in``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from importlib import metadata
from typing import Protocol, runtime_checkable

from bot.config import ConfigError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "tradebot.strategies"
CENT = Decimal("0.01")


@dataclass(frozen=True)
class SignalView:
    ticker: str
    side: str  # "buy" | "sell"
    qty: Decimal | None = None  # the signal's own size, when it carries one
    target_weight: Decimal | None = None  # the share of equity the signal wants in this ticker (0..1)
    notional: Decimal | None = None  # dollars, when the signal gives its size that way


@dataclass(frozen=True)
class MarketView:
    ticker: str
    bid: Decimal | None
    ask: Decimal | None
    price: Decimal  # what the fleet prices this order at: the ask for a buy, the bid (or last) for a sell
    equity: Decimal
    cash: Decimal
    buying_power: Decimal
    position_qty: Decimal  # shares held (the poller's view; the ledger adds orders in flight)
    position_available: Decimal  # of those, not held for other orders
    session_open: bool

    @property
    def position_value(self) -> Decimal:
        return self.position_qty * self.price


@dataclass(frozen=True)
class StrategySettings:
    weight: Decimal = Decimal(0)  # TRADEBOT_WEIGHTS for this ticker (all-in)
    fixed_qty: Decimal | None = None
    fixed_notional: Decimal | None = None
    percent: Decimal | None = None  # percent-of-equity: the share of equity per order (0..1)
    options: Mapping[str, str] = field(default_factory=dict)  # TRADEBOT_STRATEGY_OPTIONS, for plug-ins


@dataclass(frozen=True)
class Intent:
    """The order a strategy asks for. A buy: ``qty`` shares, or as many whole shares as ``max_cash``
    buys (neither: as many as the risk limits allow). A sell: ``qty`` shares, or every share
    available. ``max_position_value``: the most the position may be worth once every buy in flight
    fills, held by the ledger atomically with other workers' buys (so two at once cannot overshoot)."""

    qty: Decimal | None = None
    max_cash: Decimal | None = None
    max_position_value: Decimal | None = None


@dataclass(frozen=True)
class Pass:
    """No order for this signal; ``reason`` is journaled."""

    reason: str


@runtime_checkable
class Strategy(Protocol):
    name: str

    def size(self, signal: SignalView, market: MarketView, settings: StrategySettings) -> Intent | Pass:
        ...


# --------------------------------------------------------------------------- the built-ins


class AllIn:
    """The original bot: a buy spends ``weight x equity`` less what the position is worth; a sell
    sells every share available."""

    name = "all-in"

    def size(self, signal: SignalView, market: MarketView, settings: StrategySettings) -> Intent | Pass:
        if signal.side == "sell":
            return Intent()
        if settings.weight <= 0:
            return Pass("weight of this symbol is 0: the all-in strategy gives it no cash")
        target = settings.weight * market.equity
        budget = (target - max(market.position_value, Decimal(0))).quantize(CENT, rounding=ROUND_FLOOR)
        if budget <= 0:
            return Pass(f"position already worth {market.position_value:.2f}, at or above its target "
                        f"{target:.2f} ({settings.weight} of equity {market.equity:.2f})")
        return Intent(max_cash=budget, max_position_value=target)


class Fixed:
    """The signal's qty, else the fixed qty, else the whole shares the fixed notional buys."""

    name = "fixed"

    def size(self, signal: SignalView, market: MarketView, settings: StrategySettings) -> Intent | Pass:
        if signal.notional is not None:
            shares = (signal.notional / market.price).to_integral_value(rounding=ROUND_FLOOR)
            if shares < 1:
                return Pass(f"notional {signal.notional} is no whole share at {market.price}")
            return Intent(qty=shares)
        qty = signal.qty if signal.qty is not None else settings.fixed_qty
        if qty is not None:
            return Intent(qty=qty)
        if signal.side == "buy" and settings.fixed_notional is not None:
            shares = (settings.fixed_notional / market.price).to_integral_value(rounding=ROUND_FLOOR)
            if shares < 1:
                return Pass(f"fixed notional {settings.fixed_notional} buys no whole share at {market.price}")
            return Intent(qty=shares)
        return Pass("the fixed strategy needs a qty: none in the signal, and no fixed qty"
                    + (" or fixed notional" if signal.side == "buy" else "") + " is configured")


class PercentOfEquity:
    """Each order is ``percent x equity`` worth: a buy spends that much, a sell sells that much
    (at most what is available)."""

    name = "percent-of-equity"

    def size(self, signal: SignalView, market: MarketView, settings: StrategySettings) -> Intent | Pass:
        if settings.percent is None or not 0 < settings.percent <= 1:
            return Pass("percent-of-equity needs TRADEBOT_PERCENT (or --percent) between 0 and 1")
        amount = (settings.percent * market.equity).quantize(CENT, rounding=ROUND_FLOOR)
        if signal.side == "buy":
            return Intent(max_cash=amount) if amount > 0 else Pass(f"{settings.percent} of equity is less than a cent")
        shares = min((amount / market.price).to_integral_value(rounding=ROUND_FLOOR), market.position_available)
        return Intent(qty=shares) if shares >= 1 else Pass(f"{amount} is less than one {signal.ticker} share to sell")


class TargetWeight:
    """The signal says what share of equity the ticker should be (``target_weight``, else the
    ticker's TRADEBOT_WEIGHTS); the order is the difference, so a replayed or repeated signal
    orders nothing. A buy signal only buys up to the target, a sell signal only sells down to it.
    Differences within ``band`` of the target's value (option ``band``, default 0.02: the cash the
    ledger's price buffer leaves unspent is inside it) are left alone."""

    name = "target-weight"
    BAND = Decimal("0.02")

    def size(self, signal: SignalView, market: MarketView, settings: StrategySettings) -> Intent | Pass:
        target_weight = signal.target_weight if signal.target_weight is not None else settings.weight
        target = target_weight * market.equity
        held = max(market.position_value, Decimal(0))
        band = max(Decimal(settings.options.get("band", self.BAND)) * target, market.price)
        at_target = Pass(f"at target: {signal.ticker} worth {held:.2f}, target {target:.2f} "
                         f"({target_weight} of equity {market.equity:.2f})")
        if signal.side == "buy":
            budget = (target - held).quantize(CENT, rounding=ROUND_FLOOR)
            return Intent(max_cash=budget, max_position_value=target) if budget > band else at_target
        excess = held - target
        shares = min((excess / market.price).to_integral_value(rounding=ROUND_FLOOR), market.position_available)
        return Intent(qty=shares) if excess > band and shares >= 1 else at_target


BUILTINS: dict[str, Callable[[], Strategy]] = {cls.name: cls for cls in (AllIn, Fixed, PercentOfEquity, TargetWeight)}


# --------------------------------------------------------------------------- the registry


def available() -> dict[str, Callable[[], Strategy]]:
    """Every strategy by name: the built-ins, then the ``tradebot.strategies`` entry points (a
    plug-in cannot replace a built-in: it is refused with a warning)."""
    found = dict(BUILTINS)
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if point.name in BUILTINS:
            if point.value != f"{BUILTINS[point.name].__module__}:{BUILTINS[point.name].__name__}":
                log.warning("strategy plug-in %s (%s) has a built-in's name: ignored", point.name, point.value)
            continue
        found[point.name] = _loader(point)
    return found


def _loader(point: metadata.EntryPoint) -> Callable[[], Strategy]:
    def load() -> Strategy:
        try:
            made = point.load()()
        except Exception as exc:  # a broken plug-in is a configuration error, said in one line
            raise ConfigError(f"strategy {point.name!r} ({point.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}") from None
        if not isinstance(made, Strategy):
            raise ConfigError(f"strategy {point.name!r} ({point.value}) has no name and size(signal, market, "
                              "settings) method")
        return made
    return load


@dataclass(frozen=True)
class StrategyMap:
    """Which strategy each ticker uses: ``NAME``, or ``SYMBOL=NAME,...`` with ``*=NAME`` for the rest."""

    default: str
    by_ticker: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> StrategyMap:
        default, by_ticker = "all-in", {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            symbol, sep, name = part.partition("=")
            if not sep:
                default = part
            elif not symbol.strip() or not name.strip():
                raise ConfigError(f"strategy {part!r} is not NAME or SYMBOL=NAME")
            elif symbol.strip() == "*":
                default = name.strip()
            else:
                by_ticker[symbol.strip().upper()] = name.strip()
        return cls(default, by_ticker)

    @property
    def names(self) -> set[str]:
        return {self.default, *self.by_ticker.values()}

    def name_for(self, ticker: str) -> str:
        return self.by_ticker.get(ticker.upper(), self.default)

    def __str__(self) -> str:
        return ",".join([*(f"{s}={n}" for s, n in sorted(self.by_ticker.items())), f"*={self.default}"]) \
            if self.by_ticker else self.default


def parse_options(text: str) -> dict[str, str]:
    """``TRADEBOT_STRATEGY_OPTIONS``: ``key=value,key=value`` for plug-ins (ConfigError if malformed)."""
    options = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"strategy option {part!r} is not KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


class Strategies:
    """The loaded strategies of one worker, by ticker (ConfigError at start for an unknown name)."""

    def __init__(self, chosen: StrategyMap) -> None:
        known = available()
        unknown = sorted(chosen.names - set(known))
        if unknown:
            raise ConfigError(f"unknown strategy {', '.join(map(repr, unknown))}: choose one of "
                              f"{', '.join(sorted(known))} (plug-ins: the {ENTRY_POINT_GROUP} entry points)")
        self.chosen = chosen
        self._loaded = {name: known[name]() for name in chosen.names}

    def for_ticker(self, ticker: str) -> Strategy:
        return self._loaded[self.chosen.name_for(ticker)]

    def named(self, name: str) -> Strategy:
        """A strategy a signal names for itself (loaded on first use); ConfigError when unknown."""
        if name not in self._loaded:
            known = available()
            if name not in known:
                raise ConfigError(f"unknown strategy {name!r} (installed: {', '.join(sorted(known))})")
            self._loaded[name] = known[name]()
        return self._loaded[name]
