"""Historical market data (GET /v2/stocks/bars, trades, quotes, and their single-symbol twins) read
from the price walk's own record, so that history and the latest endpoints always agree: the last
1Min bar is the latest minute bar, the last trade the latest trade, the last quote the latest quote.

History starts when the broker's walk starts (its start instant, and one made-up previous daily
bar); older ranges are simply empty, like a symbol with no trades. Paging follows Alpaca: `limit`
counts items over all symbols, results run symbol by symbol then by time, and `next_page_token`
(opaque, base64) resumes after the last item returned.
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from bot.paper.exchange import CODE_INVALID, BrokerError, check_symbol
from bot.paper.prices import Bar, PriceBook, Quote, SymbolWalk, Trade, _ny_midnight

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
TIMEFRAME_RE = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D)$")
UNIT_MINUTES = {"Min": 1, "T": 1, "Hour": 60, "H": 60, "Day": 1440, "D": 1440}

Item = Bar | Trade | Quote


@dataclass(frozen=True)
class HistoryQuery:
    symbols: tuple[str, ...]
    start: datetime
    end: datetime
    limit: int = DEFAULT_LIMIT
    descending: bool = False
    page_token: str | None = None


@dataclass(frozen=True)
class Page:
    by_symbol: dict[str, list[dict[str, Any]]]
    next_page_token: str | None


def parse_timeframe(text: str) -> int:
    """Minutes per bar: 1Min..59Min, 1Hour..23Hour, 1Day (Alpaca's forms; Week/Month not served)."""
    match = TIMEFRAME_RE.match(text or "")
    if match is None:
        raise BrokerError(400, f"invalid timeframe: {text!r}", CODE_INVALID)
    amount, unit = int(match.group(1)), match.group(2)
    limits = {1: 59, 60: 23, 1440: 1}
    if not 1 <= amount <= limits[UNIT_MINUTES[unit]]:
        raise BrokerError(400, f"invalid timeframe: {text!r}", CODE_INVALID)
    return amount * UNIT_MINUTES[unit]


def parse_limit(text: str | None) -> int:
    try:
        limit = int(text) if text else DEFAULT_LIMIT
    except ValueError:
        raise BrokerError(400, f"invalid limit: {text!r}", CODE_INVALID) from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BrokerError(400, f"limit must be between 1 and {MAX_LIMIT}", CODE_INVALID)
    return limit


# --- bars of any timeframe from the walk's minute and daily bars ------------------------------------
def _bucket(at: datetime, minutes: int) -> datetime:
    # N-minute and hour buckets are aligned on the UTC epoch, as Alpaca's are
    epoch = int(at.timestamp()) // 60
    return datetime.fromtimestamp((epoch - epoch % minutes) * 60, timezone.utc)


def aggregate(bars: Iterable[Bar], minutes: int) -> list[Bar]:
    out: list[Bar] = []
    for bar in bars:
        start = _bucket(bar.t, minutes)
        if out and out[-1].t == start:
            out[-1] = out[-1].merged(bar)
        else:
            out.append(Bar(start, bar.o, bar.h, bar.l, bar.c, bar.v, bar.n, bar.turnover))
    return out


def walk_bars(walk: SymbolWalk, minutes: int) -> list[Item]:
    bars = [*walk.daily_bars, walk.daily_bar] if minutes >= 1440 else [*walk.minute_bars, walk.minute_bar]
    return list(bars if minutes in (1, 1440) else aggregate(bars, minutes))


# --- paging ---------------------------------------------------------------------------------------
def _key(symbol: str, item: Item) -> str:
    return f"{symbol}|{int(item.t.timestamp() * 1_000_000)}"


def encode_token(symbol: str, item: Item) -> str:
    return base64.urlsafe_b64encode(_key(symbol, item).encode()).decode()


def decode_token(token: str) -> tuple[str, int]:
    try:
        symbol, micros = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return symbol, int(micros)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BrokerError(400, "invalid page_token", CODE_INVALID) from None


def _after_token(symbol: str, items: list[Item], token: tuple[str, int] | None, descending: bool) -> list[Item]:
    """Drop what earlier pages returned (everything up to the token's symbol and time)."""
    if token is None:
        return items
    token_symbol, micros = token
    if symbol < token_symbol:
        return []
    if symbol > token_symbol:
        return items

    def micros_of(item: Item) -> int:
        return int(item.t.timestamp() * 1_000_000)

    return [i for i in items if (micros_of(i) < micros if descending else micros_of(i) > micros)]


def page(query: HistoryQuery, items_of: Callable[[str], list[Item]]) -> Page:
    """One page over all the query's symbols (sorted), `limit` items in total."""
    token = decode_token(query.page_token) if query.page_token else None
    out: dict[str, list[dict[str, Any]]] = {}
    left = query.limit
    for symbol in sorted(set(query.symbols)):
        items = [i for i in items_of(symbol) if query.start <= i.t <= query.end]
        if query.descending:
            items.reverse()
        items = _after_token(symbol, items, token, query.descending)
        if not items:
            continue
        if len(items) > left:
            out[symbol] = [i.to_json() for i in items[:left]]
            return Page(out, encode_token(symbol, items[left - 1]))
        out[symbol] = [i.to_json() for i in items]
        left -= len(items)
        if left == 0:  # a full page: more may follow (the next page may come back empty)
            return Page(out, encode_token(symbol, items[-1]))
    return Page(out, None)


class History:
    """The three historical feeds over one PriceBook, advanced to `now` first."""

    def __init__(self, prices: PriceBook, now: datetime) -> None:
        self.prices = prices
        self.now = now

    def bars(self, query: HistoryQuery, minutes: int) -> Page:
        return page(query, lambda s: self.prices.read(s, self.now, lambda w: walk_bars(w, minutes)))

    def trades(self, query: HistoryQuery) -> Page:
        return page(query, lambda s: self.prices.read(s, self.now, lambda w: list(w.trades)))

    def quotes(self, query: HistoryQuery) -> Page:
        return page(query, lambda s: self.prices.read(s, self.now, lambda w: list(w.quotes)))


def valid_symbols(raw: Iterable[str]) -> tuple[str, ...]:
    """The symbols the walk can serve (others are left out of the answer, as at Alpaca)."""
    return tuple(s for s in (check_symbol(r) for r in raw) if s is not None)


def default_start(now: datetime) -> datetime:
    # Alpaca's default start is the beginning of the current day (New York)
    return _ny_midnight(now)


def day_end(at: datetime) -> datetime:
    """A bare date as `end` means the whole day (Alpaca reads it inclusively)."""
    return at + timedelta(days=1) - timedelta(microseconds=1)
