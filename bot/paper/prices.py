"""A seedable random walk per symbol: quotes with spread and sizes, trades, minute and daily bars.

Time is cut into steps of `step_seconds` counted from the book's start instant. Each symbol
has its own generator seeded from (seed, symbol) and draws the same fixed number of values
per step, so the state at step k depends only on the seed, the symbol and k, not on when or
how often anyone asked. The walk is advanced lazily, when a symbol is read. A gap longer than
MAX_STEPS_PER_CATCHUP is bridged with one aggregated move (deterministic given the gap).
"""
from __future__ import annotations

import logging
import math
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta, timezone
from decimal import ROUND_DOWN, Decimal
from typing import Any, TypeVar

from bot.paper.clock import NEW_YORK

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_STEPS_PER_CATCHUP = 3600
# How much history a walk keeps for the historical endpoints (older entries are dropped): ticks
# (one trade and one quote per step) cover ~5.5 hours at the default 1 s step, minute bars ~35
# days; daily bars are all kept. Bounded so a long-running broker's memory stays flat.
TICK_HISTORY = 20_000
MINUTE_HISTORY = 50_000
CENT = Decimal("0.01")
SUB_CENT = Decimal("0.0001")
IEX = "V"  # exchange code of IEX, the free feed
TAPE = "C"


def rfc3339(at: datetime) -> str:
    """UTC with Z and nine fractional digits, as Alpaca writes timestamps."""
    at = at.astimezone(timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond:06d}000Z"


def tick_size(price: Decimal) -> Decimal:
    return CENT if price >= 1 else SUB_CENT


def to_price(value: float | Decimal) -> Decimal:
    price = Decimal(str(value))
    return price.quantize(tick_size(price))


@dataclass
class Quote:
    t: datetime
    bid: Decimal
    ask: Decimal
    bid_size: int
    ask_size: int

    def to_json(self) -> dict[str, Any]:
        return {"t": rfc3339(self.t), "bp": float(self.bid), "bs": self.bid_size, "bx": IEX,
                "ap": float(self.ask), "as": self.ask_size, "ax": IEX, "c": ["R"], "z": TAPE}


@dataclass
class Trade:
    t: datetime
    price: Decimal
    size: int
    id: int

    def to_json(self) -> dict[str, Any]:
        return {"t": rfc3339(self.t), "p": float(self.price), "s": self.size, "x": IEX,
                "i": self.id, "c": ["@"], "z": TAPE}


@dataclass
class Bar:
    t: datetime
    o: Decimal
    h: Decimal
    l: Decimal  # noqa: E741  (Alpaca's key)
    c: Decimal
    v: int = 0
    n: int = 0
    turnover: Decimal = field(default=Decimal(0))  # sum(price * size), for the VWAP

    @classmethod
    def opening(cls, t: datetime, price: Decimal) -> Bar:
        return cls(t, price, price, price, price)

    def merged(self, later: Bar) -> Bar:
        """This bar and the one right after it as one bar (timeframes longer than a minute)."""
        return Bar(self.t, self.o, max(self.h, later.h), min(self.l, later.l), later.c, self.v + later.v,
                   self.n + later.n, self.turnover + later.turnover)

    def add(self, price: Decimal, size: int) -> None:
        self.h = max(self.h, price)
        self.l = min(self.l, price)
        self.c = price
        self.v += size
        self.n += 1
        self.turnover += price * size

    def to_json(self) -> dict[str, Any]:
        vwap = self.turnover / self.v if self.v else self.c
        return {"t": rfc3339(self.t), "o": float(self.o), "h": float(self.h), "l": float(self.l),
                "c": float(self.c), "v": self.v, "n": self.n, "vw": round(float(vwap), 6)}


@dataclass
class Pin:
    price: Decimal
    spread: Decimal | None = None
    bid_size: int | None = None
    ask_size: int | None = None


def _minute_start(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _ny_midnight(at: datetime, days: int = 0) -> datetime:
    day = at.astimezone(NEW_YORK).date() + timedelta(days=days)
    return datetime.combine(day, time(0), tzinfo=NEW_YORK).astimezone(timezone.utc)


class SymbolWalk:
    """One symbol's price path. Not thread-safe on its own; PriceBook serialises access."""

    def __init__(self, seed: int, symbol: str, start: datetime, step_seconds: float,
                 volatility: float, spread_bps: float) -> None:
        self.symbol = symbol
        self.start = start
        self.step_seconds = step_seconds
        self.volatility = volatility
        self.spread_bps = spread_bps
        self.rng = random.Random(f"{seed}:walk:{symbol}")
        self.step = 0
        self.pin: Pin | None = None
        self.trade_id = 0
        self.mid = self.rng.uniform(20.0, 400.0)
        first = to_price(self.mid)
        # yesterday's bar, made up around the first price (fixed number of draws)
        prev_close = to_price(self.mid * math.exp(self.rng.gauss(0, 0.01)))
        prev_open = to_price(float(prev_close) * math.exp(self.rng.gauss(0, 0.01)))
        high = max(prev_open, prev_close) * Decimal("1.005")
        low = min(prev_open, prev_close) * Decimal("0.995")
        self.prev_daily = Bar(_ny_midnight(start, -1), prev_open, to_price(high), to_price(low), prev_close,
                              v=self.rng.randint(1_000_000, 50_000_000), n=self.rng.randint(10_000, 200_000))
        self.prev_daily.turnover = prev_close * self.prev_daily.v
        self.next_midnight = _ny_midnight(start, 1)
        self.quote = Quote(start, first, first, 0, 0)
        self.last_trade = Trade(start, first, 100, 0)
        self.minute_bar = Bar.opening(_minute_start(start), first)
        self.daily_bar = Bar.opening(_ny_midnight(start), first)
        # the history the historical endpoints serve: exactly what the latest endpoints showed
        self.trades: deque[Trade] = deque(maxlen=TICK_HISTORY)
        self.quotes: deque[Quote] = deque(maxlen=TICK_HISTORY)
        self.minute_bars: deque[Bar] = deque(maxlen=MINUTE_HISTORY)  # completed minutes
        self.daily_bars: list[Bar] = [self.prev_daily]  # completed days
        self._draw_step(start)

    # --- stepping -----------------------------------------------------------------------
    def time_of(self, step: int) -> datetime:
        return self.start + timedelta(seconds=step * self.step_seconds)

    def advance_to(self, step: int) -> None:
        if step <= self.step:
            return
        gap = step - self.step
        if gap > MAX_STEPS_PER_CATCHUP:
            self._jump(gap - MAX_STEPS_PER_CATCHUP)
        while self.step < step:
            self.step += 1
            self._draw_step(self.time_of(self.step))

    def _jump(self, steps: int) -> None:
        # one move with the variance of `steps` steps; keeps long idle gaps cheap
        z = self.rng.gauss(0, 1)
        if self.pin is None:
            self.mid *= math.exp(self.volatility * math.sqrt(steps) * z)
        self.step += steps

    def _draw_step(self, at: datetime) -> None:
        # always draw the same five values, pinned or not, so the sequence stays aligned
        z = self.rng.gauss(0, 1)
        bid_size = self.rng.randint(100, 2000)
        ask_size = self.rng.randint(100, 2000)
        trade_at_ask = self.rng.random() < 0.5
        trade_size = self.rng.randint(1, 500)
        if self.pin is None:
            self.mid *= math.exp(self.volatility * z)
        self.quote = self._make_quote(at, bid_size, ask_size)
        self.trade_id += 1
        price = self.quote.ask if trade_at_ask else self.quote.bid
        self.last_trade = Trade(at, price, trade_size, self.trade_id)
        self.trades.append(self.last_trade)
        self.quotes.append(self.quote)
        self._record(at, price, trade_size)

    def _make_quote(self, at: datetime, bid_size: int, ask_size: int) -> Quote:
        pin = self.pin
        mid = pin.price if pin is not None else to_price(self.mid)
        tick = tick_size(mid)
        if pin is not None and pin.spread is not None:
            half = (pin.spread / 2).quantize(tick, ROUND_DOWN)
        else:
            half = max(tick, (mid * Decimal(self.spread_bps) / 20000).quantize(tick, ROUND_DOWN))
        if pin is not None:
            bid_size = pin.bid_size if pin.bid_size is not None else bid_size
            ask_size = pin.ask_size if pin.ask_size is not None else ask_size
        bid = max(mid - half, tick)
        return Quote(at, bid, mid + half, bid_size, ask_size)

    def _record(self, at: datetime, price: Decimal, size: int) -> None:
        if at >= self.next_midnight:
            self.daily_bars.append(self.daily_bar)
            self.prev_daily = self.daily_bar
            self.daily_bar = Bar.opening(_ny_midnight(at), price)
            self.next_midnight = _ny_midnight(at, 1)
        minute = _minute_start(at)
        if minute != self.minute_bar.t:
            if self.minute_bar.n:  # the opening placeholder of the first minute has no trades yet
                self.minute_bars.append(self.minute_bar)
            self.minute_bar = Bar.opening(minute, price)
        self.minute_bar.add(price, size)
        self.daily_bar.add(price, size)

    # --- pinning ------------------------------------------------------------------------
    def set_pin(self, pin: Pin | None) -> None:
        """Freeze the quote around `pin.price`; None resumes the walk from the pinned price."""
        self.pin = pin
        if pin is not None:
            self.mid = float(pin.price)
            # re-quote now (no draws) so the pin shows before the next step; the last trade too, at the
            # pinned price: positions and equity are valued at the last trade, and one from before
            # the pin (the walk's, far away) would misstate them until the next step
            self.quote = self._make_quote(self.quote.t, self.quote.bid_size, self.quote.ask_size)
            self.last_trade = replace(self.last_trade, price=pin.price)
            # history shows what latest shows: the re-quote, and the last trade at the pinned price
            self.quotes.append(self.quote)
            if self.trades:
                self.trades[-1] = self.last_trade

    # --- views --------------------------------------------------------------------------
    def snapshot_json(self) -> dict[str, Any]:
        return {
            "latestTrade": self.last_trade.to_json(),
            "latestQuote": self.quote.to_json(),
            "minuteBar": self.minute_bar.to_json(),
            "dailyBar": self.daily_bar.to_json(),
            "prevDailyBar": self.prev_daily.to_json(),
        }


class PriceBook:
    """All symbols' walks, advanced to the step of the instant asked for. Thread-safe."""

    def __init__(self, seed: int, start: datetime, step_seconds: float = 1.0,
                 volatility: float = 0.0002, spread_bps: float = 4.0) -> None:
        if step_seconds <= 0:
            raise ValueError("step_seconds must be > 0")
        self.seed = seed
        self.start = start
        self.step_seconds = step_seconds
        self.volatility = volatility
        self.spread_bps = spread_bps
        self._walks: dict[str, SymbolWalk] = {}
        self._lock = threading.RLock()

    def has(self, symbol: str) -> bool:
        """Can this book quote the symbol? The walk quotes any (a replay only what it recorded)."""
        return True

    def step_at(self, at: datetime) -> int:
        return max(0, math.floor((at - self.start).total_seconds() / self.step_seconds))

    def walk(self, symbol: str, at: datetime) -> SymbolWalk:
        """The symbol's walk advanced to instant `at` (created on first use)."""
        with self._lock:
            walk = self._walks.get(symbol)
            if walk is None:
                walk = SymbolWalk(self.seed, symbol, self.start, self.step_seconds, self.volatility, self.spread_bps)
                self._walks[symbol] = walk
            walk.advance_to(self.step_at(at))
            return walk

    def quote(self, symbol: str, at: datetime) -> Quote:
        return self.walk(symbol, at).quote

    def read(self, symbol: str, at: datetime, reader: Callable[[SymbolWalk], T]) -> T:
        """`reader(walk)` under the lock: the walk's history deques must not grow while copied."""
        with self._lock:
            return reader(self.walk(symbol, at))

    def pin(self, symbol: str, pin: Pin | None, at: datetime) -> Quote:
        with self._lock:
            walk = self.walk(symbol, at)
            walk.set_pin(pin)
            return walk.quote

    def symbols(self) -> list[str]:
        with self._lock:
            return sorted(self._walks)
