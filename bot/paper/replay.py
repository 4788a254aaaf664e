"""The paper broker's replay mode: recorded prices at a market time the replay driver sets.

Two clocks run side by side. *Market time* is the recording's instant: it picks the recorded price
in force and whether the session is open; the driver moves it forward (POST /_paper/replay) and it
stands still in between. *Wall time* stamps everything the fleet reads and compares with its own
clock: quote and trade times (the quote-age check), the clock's next_open/next_close (workers call
``open_at(wall now)``), order times. A replay that stamped quotes in market time would have every
quote judged days old, or in the future, by the workers. See docs/replay.md.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from bot.paper.clock import ClockState, MarketClock, Now, always_closed_state, always_open_state, regular_hours_state
from bot.paper.exchange import CODE_INVALID, BrokerError
from bot.paper.prices import (
    MINUTE_HISTORY,
    TICK_HISTORY,
    Bar,
    PriceBook,
    Quote,
    SymbolWalk,
    Trade,
    _minute_start,
    _ny_midnight,
    to_price,
)
from bot.recording import RecordedPrice

# the recording carries no sizes: a deep book, so an IOC order is never cut short by a made-up size
REPLAY_SIZE = 10_000
TRADE_SIZE = 100


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


class MarketTime:
    """The replay's market instant: starts at the recording's first record, only moves forward."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self._at = start
        self._lock = threading.Lock()

    @property
    def at(self) -> datetime:
        return self._at

    def move_to(self, at: datetime) -> datetime:
        """Set the market instant; the previous one. Backwards is refused: fills already made at a
        later price cannot be unmade."""
        with self._lock:
            if at < self._at:
                raise BrokerError(400, f"market time cannot go back (now {self._at.isoformat()}, "
                                       f"asked {at.isoformat()})", CODE_INVALID)
            previous, self._at = self._at, at
            return previous


@dataclass(frozen=True)
class Tick:
    at: datetime  # market time
    bid: Decimal
    ask: Decimal
    last: Decimal

    @classmethod
    def of(cls, price: RecordedPrice) -> Tick:
        known = [p for p in (price.bid, price.ask) if p is not None]
        last = price.last if price.last is not None else to_price(sum(known, Decimal(0)) / len(known))
        bid = price.bid if price.bid is not None else (price.ask if price.ask is not None else last)
        ask = price.ask if price.ask is not None else bid
        if ask < bid:  # a crossed recorded quote: keep it tradeable rather than guess which side is wrong
            bid, ask = ask, bid
        return cls(utc(price.at), to_price(bid), to_price(ask), to_price(last))


class RecordedWalk(SymbolWalk):
    """One symbol's recorded ticks, consumed up to the market time. History (trades, quotes, bars) is
    kept in market time; the latest quote and trade are restamped with the wall time of each read."""

    # super().__init__ is not called: it draws a random walk
    def __init__(self, symbol: str, ticks: Sequence[Tick]) -> None:
        first = ticks[0]
        self.symbol = symbol
        self.start = first.at
        self.step_seconds, self.volatility, self.spread_bps = 1.0, 0.0, 0.0
        self.step = 0
        self.pin = None
        self.trade_id = 0
        self.mid = float((first.bid + first.ask) / 2)
        self._ticks = ticks
        self._times = [t.at for t in ticks]
        self._next = 0  # index of the first tick not consumed
        self.prev_daily = Bar.opening(_ny_midnight(first.at, -1), first.last)
        self.next_midnight = _ny_midnight(first.at, 1)
        # before its first tick a symbol shows that tick (the one look-ahead a replay allows)
        self.quote = Quote(first.at, first.bid, first.ask, REPLAY_SIZE, REPLAY_SIZE)
        self.last_trade = Trade(first.at, first.last, TRADE_SIZE, 0)
        self.minute_bar = Bar.opening(_minute_start(first.at), first.last)
        self.daily_bar = Bar.opening(_ny_midnight(first.at), first.last)
        self.trades: deque[Trade] = deque(maxlen=TICK_HISTORY)
        self.quotes: deque[Quote] = deque(maxlen=TICK_HISTORY)
        self.minute_bars: deque[Bar] = deque(maxlen=MINUTE_HISTORY)
        self.daily_bars: list[Bar] = [self.prev_daily]

    def advance_to(self, step: int) -> None:
        """Steps belong to the random walk; a recorded walk moves by market time (``advance_market``)."""

    def advance_market(self, market: datetime, wall: datetime) -> None:
        end = bisect.bisect_right(self._times, market)
        for tick in self._ticks[self._next:end]:
            self._apply(tick)
        self._next = max(self._next, end)
        self.quote = replace(self.quote, t=wall)
        self.last_trade = replace(self.last_trade, t=wall)

    def _apply(self, tick: Tick) -> None:
        self.mid = float((tick.bid + tick.ask) / 2)
        self.trade_id += 1
        self.quote = Quote(tick.at, tick.bid, tick.ask, REPLAY_SIZE, REPLAY_SIZE)
        if self.pin is not None:  # an operator's pin outlasts the recording's ticks, as it outlasts the walk's
            self.quote = self._make_quote(tick.at, REPLAY_SIZE, REPLAY_SIZE)
        self.last_trade = Trade(tick.at, self.pin.price if self.pin else tick.last, TRADE_SIZE, self.trade_id)
        self.trades.append(self.last_trade)
        self.quotes.append(self.quote)
        self._record(tick.at, self.last_trade.price, TRADE_SIZE)


class RecordedPrices(PriceBook):
    """A PriceBook over recorded ticks: a symbol without any is not quoted at all."""

    def __init__(self, ticks: dict[str, list[Tick]], market: MarketTime) -> None:
        super().__init__(seed=0, start=market.start)
        self.market = market
        self._ticks = ticks

    def has(self, symbol: str) -> bool:
        return symbol in self._ticks

    def walk(self, symbol: str, at: datetime) -> SymbolWalk:
        with self._lock:
            walk = self._walks.get(symbol)
            if walk is None:
                ticks = self._ticks.get(symbol)
                if not ticks:
                    raise BrokerError(422, f"no recorded price for {symbol}", CODE_INVALID)
                walk = self._walks[symbol] = RecordedWalk(symbol, ticks)
            assert isinstance(walk, RecordedWalk)
            walk.advance_market(self.market.at, at)
            return walk


class ReplayClock(MarketClock):
    """The session of the market instant, told in wall time: is_open as at the market instant, and
    next_open/next_close that far from wall now (market seconds counted as wall seconds, so while
    the driver holds market time a cached clock never shows a boundary that has not come)."""

    def __init__(self, market: MarketTime, mode: str = "real", now: Now | None = None) -> None:
        super().__init__(mode, now)
        self.market = market

    def state(self, at: datetime | None = None) -> ClockState:
        wall = at or self.now()
        market = self.market.at
        if self.mode == "open":
            session = always_open_state(market)
        elif self.mode == "closed":
            session = always_closed_state(market)
        else:
            session = regular_hours_state(market)
        shift = wall - market
        return ClockState(wall, session.is_open, session.next_open + shift, session.next_close + shift)

    def day_order_expiry(self, at: datetime) -> datetime | None:
        # a day order expires when the driver moves market time past the close (Replay.advance),
        # never by wall time
        return None


@dataclass
class Replay:
    """What a replaying broker holds besides its exchange: the market instant and the ticks."""

    market: MarketTime
    ticks: dict[str, list[Tick]]
    end: datetime

    @classmethod
    def of(cls, prices: Iterable[RecordedPrice], start: float | None = None) -> Replay:
        ticks: dict[str, list[Tick]] = {}
        for price in sorted(prices, key=lambda p: p.at):
            ticks.setdefault(price.symbol, []).append(Tick.of(price))
        if not ticks:
            raise ValueError("the recording has no prices to replay")
        first = min(t[0].at for t in ticks.values())
        last = max(t[-1].at for t in ticks.values())
        begin = first if start is None else min(first, utc(start))
        return cls(MarketTime(begin), ticks, last)

    def book(self) -> RecordedPrices:
        return RecordedPrices(self.ticks, self.market)

    def clock(self, mode: str, now: Now | None) -> ReplayClock:
        return ReplayClock(self.market, mode, now)

    def to_json(self, exchange: Any) -> dict[str, Any]:
        return {"market_time": self.market.at.timestamp(), "start": self.market.start.timestamp(),
                "end": self.end.timestamp(), "symbols": sorted(self.ticks),
                "is_open": exchange.clock.is_open()}


def session_closes_between(clock: MarketClock, before: datetime, after: datetime) -> bool:
    """Did the market close (by the clock's session rule) at some instant in (before, after]?"""
    if clock.mode == "open":
        return False
    # open at `before`: its session's close; closed: the next session's close (after its open)
    return regular_hours_state(before).next_close <= after
