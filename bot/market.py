"""The Redis market cache: prices, account, positions and market clock.

The price poller is the ONE writer of these hashes (``write_*``); workers read them through
``MarketCache``, which returns typed records with their age and raises typed errors, one read at a
time or, before an order, all at once in one round trip (``MarketCache.snapshot``).

Hash layout (every key comes from ``bot.keys.Keys``):

- ``{prefix}:prices:{SYMBOL}``: ``bid``, ``ask``, ``bid_size``, ``ask_size``, ``last`` (decimal
  strings; a side the feed did not quote is absent, never "0"), ``quote_time`` (Unix seconds of
  the quote), ``polled_at`` (Unix seconds when the response arrived), ``as_of`` (Unix seconds when
  the request was sent; orders concurrent writers, see below).
- ``{prefix}:account``: ``cash``, ``buying_power``, ``equity``, ``status``, ``trading_blocked``
  and ``account_blocked`` ("1"/"0"), ``polled_at``, ``as_of``.
- ``{prefix}:positions``: one field per symbol whose value is JSON
  ``{"qty", "qty_available", "avg_entry_price", "market_value", "side"}`` (decimals as strings,
  ``market_value`` may be null), plus two bookkeeping fields whose names cannot be tickers:
  ``_polled_at`` and ``_as_of``. A hash holding only those means "polled, and flat everywhere";
  no hash at all means "never polled".
- ``{prefix}:clock``: ``is_open`` ("1"/"0"), ``next_open``, ``next_close``, ``timestamp`` (ISO 8601,
  the broker's offsets), ``polled_at``, ``as_of``.

Every write replaces its hash atomically (a Lua script: DEL + HSET), so a field that is no longer
true (a closed position, a side that lost its quote) never lingers next to fresh ones. The script
first compares the hash's stored ``as_of`` with the write's: a write whose request was sent
earlier than the stored data's is dropped, so a slow response can never overwrite a newer one.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import redis
from redis.commands.core import Script

from bot import codec, lua
from bot.alpaca.models import Account, Clock, Position, Snapshot
from bot.errors import TradebotError
from bot.keys import Keys

log = logging.getLogger(__name__)

AS_OF = "as_of"
POLLED_AT = "polled_at"
# Bookkeeping fields of the positions hash: the leading underscore keeps them apart from tickers.
POSITIONS_POLLED_AT = "_polled_at"
POSITIONS_AS_OF = "_as_of"
# A cache entry stamped further in the future than this is a clock problem between hosts: not fresh.
FUTURE_TOLERANCE = 5.0
# Refresh asks kept in the list at most (the poller empties it at once; this bounds it while it is down).
REFRESH_ASKS_KEPT = 10

# The replace-if-newer write is bot/lua/market_replace_if_newer.lua.
_REPLACE_SCRIPT = "market_replace_if_newer"


# ---------------------------------------------------------------------- errors


class MarketDataError(TradebotError):
    """Base of every error the market cache raises."""


class NoPrice(MarketDataError):
    """The cache holds no price for the symbol (the poller never wrote one)."""

    def __init__(self, symbol: str, key: str) -> None:
        super().__init__(f"no price for {symbol}: {key} is empty; is the price poller running "
                         f"and is {symbol} in its TRADEBOT_SYMBOLS?")
        self.symbol = symbol


class StalePrice(MarketDataError):
    """The cached price is older than the allowed age."""

    def __init__(self, symbol: str, age: float, limit: float) -> None:
        if age < 0:
            text = (f"price of {symbol} was polled {-age:.1f}s in the future: check the clocks of the "
                    f"poller's host and this one")
        else:
            text = (f"price of {symbol} is {age:.1f}s old, more than the {limit:.1f}s allowed: "
                    f"the price poller is behind or down")
        super().__init__(text)
        self.symbol = symbol
        self.age: float | None = age  # None only for a StaleQuote without quote time
        self.limit = limit


class StaleQuote(StalePrice):
    """The cached quote's own time is too old (or in the future), however recent the poll."""

    def __init__(self, symbol: str, age: float | None, limit: float) -> None:
        if age is None:
            text = f"quote of {symbol} has no quote time: its age is unknown"
        elif age < 0:
            text = (f"quote of {symbol} is stamped {-age:.1f}s in the future: check the clocks of the "
                    f"poller's host and this one")
        else:
            text = (f"quote of {symbol} is {age:.1f}s old, more than the {limit:.1f}s allowed: the feed "
                    f"has no recent quote for {symbol}")
        MarketDataError.__init__(self, text)
        self.symbol = symbol
        self.age = age
        self.limit = limit


class NotPolled(MarketDataError):
    """The poller has not written this hash yet (distinct from 'empty')."""


class CorruptEntry(MarketDataError):
    """A cached field cannot be read (the hash was written by something other than the poller)."""


class NotRead(MarketDataError):
    """A snapshot taken without this read (``MarketCache.snapshot(..., account=False)``) was asked for it."""


class NotReady(MarketDataError):
    """wait_ready timed out; the message lists the keys still missing."""

    def __init__(self, missing: Sequence[str], waited: float) -> None:
        super().__init__(f"the price poller did not fill {', '.join(missing)} within {waited:.1f}s")
        self.missing = list(missing)


# ---------------------------------------------------------------------- write side (the poller)


def _script(client: Any) -> Script:
    # register_script works on a client and on a pipeline (which loads it before EXEC)
    return lua.script(client, _REPLACE_SCRIPT)


def _num(value: float) -> str:
    return repr(float(value))


def _dec_text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _replace_if_newer(client: Any, key: str, as_of_field: str, as_of: float, fields: Mapping[str, str],
                      script: Any = None) -> Any:
    args: list[str] = [as_of_field, _num(as_of)]
    for name, value in fields.items():
        args += [name, value]
    return lua.call(client, script or _script(client), [key], args)


def price_fields(snapshot: Snapshot, polled_at: float, as_of: float) -> dict[str, str]:
    """The hash fields of one snapshot; sides the feed did not quote are left out, never zero."""
    values: dict[str, str | None] = {
        "bid": _dec_text(snapshot.bid),
        "ask": _dec_text(snapshot.ask),
        # a size only means something next to its price
        "bid_size": _dec_text(snapshot.bid_size) if snapshot.bid is not None else None,
        "ask_size": _dec_text(snapshot.ask_size) if snapshot.ask is not None else None,
        "last": _dec_text(snapshot.last),
        "quote_time": _num(snapshot.quote_time.timestamp()) if snapshot.quote_time else None,
        POLLED_AT: _num(polled_at),
        AS_OF: _num(as_of),
    }
    return {k: v for k, v in values.items() if v is not None}


def write_prices(pipe_or_r: Any, keys: Keys, snapshots: Mapping[str, Snapshot], polled_at: float, *,
                 as_of: float | None = None, symbols: Iterable[str] | None = None,
                 log_skips: bool = True) -> dict[str, str]:
    """Write one price hash per usable snapshot, all in ONE pipeline; return {symbol: reason} skipped.

    ``symbols``: the symbols that were asked for; those missing from ``snapshots`` are reported
    as skipped. A snapshot with neither bid nor ask is skipped (its hash keeps the older price,
    whose ``polled_at`` then shows its age). Given a pipeline, the commands are queued on it and
    the caller executes it; given a client, a pipeline is created and executed here.
    ``as_of`` (default ``polled_at``) is when the request was sent.
    """
    as_of = polled_at if as_of is None else as_of
    skipped: dict[str, str] = {}
    answered = {s.upper() for s in snapshots}
    for symbol in symbols or ():
        if symbol.upper() not in answered:
            skipped[symbol.upper()] = "missing from the market-data response"
    owns_pipeline = not isinstance(pipe_or_r, redis.client.Pipeline)
    pipe = pipe_or_r.pipeline(transaction=False) if owns_pipeline else pipe_or_r
    script = _script(pipe)  # one script object: the pipeline checks its sha once before sending
    for symbol, snapshot in snapshots.items():
        if snapshot.bid is None and snapshot.ask is None:
            skipped[symbol.upper()] = "no bid and no ask (null or zero)"
            continue
        _replace_if_newer(pipe, keys.prices(symbol), AS_OF, as_of, price_fields(snapshot, polled_at, as_of), script)
    if log_skips:
        for symbol, reason in skipped.items():
            log.warning("price of %s not written: %s", symbol, reason)
    if owns_pipeline:
        written = pipe.execute()
        older = written.count(0)
        if older:
            log.debug("%d price writes dropped: the cache already holds newer prices", older)
    return skipped


def record_prices(r: Any, keys: Keys, snapshots: Mapping[str, Snapshot], now: float, *, keep: float) -> None:
    """Append each snapshot's prices to the price history (for `tradebot record`), trimmed to
    ``keep`` seconds by MINID on every write (approximate: whole nodes, cheap)."""
    pipe = r.pipeline(transaction=False)
    minid = f"{max(int((now - keep) * 1000), 0)}-0"
    for symbol, snapshot in snapshots.items():
        fields = {"symbol": symbol.upper(), "at": _num(now)}
        for name in ("bid", "ask", "last"):
            value = getattr(snapshot, name)
            if value is not None:
                fields[name] = format(value, "f")
        if len(fields) > 2:
            pipe.xadd(keys.price_history, fields, minid=minid, approximate=True)
    pipe.execute()


def write_account(r: Any, keys: Keys, account: Account, polled_at: float, *, as_of: float | None = None) -> bool:
    """Replace the account hash; False when it already held newer data."""
    as_of = polled_at if as_of is None else as_of
    fields = {
        "cash": _dec_text(account.cash) or "0",
        "buying_power": _dec_text(account.buying_power) or "0",
        "equity": _dec_text(account.equity) or "0",
        "status": account.status,
        "trading_blocked": _flag(account.trading_blocked),
        "account_blocked": _flag(account.account_blocked),
        POLLED_AT: _num(polled_at),
        AS_OF: _num(as_of),
    }
    return bool(_replace_if_newer(r, keys.account, AS_OF, as_of, fields))


def position_json(position: Position) -> str:
    return json.dumps({
        "qty": _dec_text(position.qty),
        "qty_available": _dec_text(position.qty_available),
        "avg_entry_price": _dec_text(position.avg_entry_price),
        "market_value": _dec_text(position.market_value),
        "side": position.side,
    }, separators=(",", ":"))


def write_positions(r: Any, keys: Keys, positions: Iterable[Position], polled_at: float, *,
                    as_of: float | None = None) -> bool:
    """Replace the positions hash atomically: closed positions vanish; ``_polled_at`` is always set."""
    as_of = polled_at if as_of is None else as_of
    fields = {position.symbol.upper(): position_json(position) for position in positions}
    fields[POSITIONS_POLLED_AT] = _num(polled_at)
    fields[POSITIONS_AS_OF] = _num(as_of)
    return bool(_replace_if_newer(r, keys.positions, POSITIONS_AS_OF, as_of, fields))


def write_clock(r: Any, keys: Keys, clock: Clock, polled_at: float, *, as_of: float | None = None) -> bool:
    as_of = polled_at if as_of is None else as_of
    fields = {
        "is_open": _flag(clock.is_open),
        "next_open": clock.next_open.isoformat(),
        "next_close": clock.next_close.isoformat(),
        "timestamp": clock.timestamp.isoformat(),
        POLLED_AT: _num(polled_at),
        AS_OF: _num(as_of),
    }
    return bool(_replace_if_newer(r, keys.clock, AS_OF, as_of, fields))


# ---------------------------------------------------------------------- read side (workers)


@dataclass(frozen=True)
class Price:
    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None
    bid_size: Decimal | None
    ask_size: Decimal | None
    quote_time: float | None  # Unix seconds of the quote
    polled_at: float  # Unix seconds when the poller received it
    age: float  # seconds since polled_at, at read time

    @property
    def mid(self) -> Decimal | None:
        if self.bid is None or self.ask is None:
            return None
        return (self.bid + self.ask) / 2

    def for_side(self, side: str) -> Decimal | None:
        """What a market order would pay: the ask to buy, the bid to sell; the last trade otherwise."""
        quoted = self.ask if side == "buy" else self.bid
        return quoted if quoted is not None else self.last


@dataclass(frozen=True)
class AccountState:
    cash: Decimal
    buying_power: Decimal
    equity: Decimal
    status: str
    trading_blocked: bool
    account_blocked: bool
    polled_at: float
    age: float


@dataclass(frozen=True)
class PositionState:
    symbol: str
    qty: Decimal
    qty_available: Decimal
    avg_entry_price: Decimal
    market_value: Decimal | None
    side: str = "long"


@dataclass(frozen=True)
class ClockState:
    is_open: bool
    next_open: datetime
    next_close: datetime
    polled_at: float
    age: float

    def open_at(self, now: float) -> bool:
        """Is the regular session open at ``now`` (Unix seconds) by this clock?

        The clock is polled every 30 s, so its ``is_open`` may be up to that old: an open clock
        stops counting as open at its ``next_close``, and a closed one counts as open from its
        ``next_open`` until its ``next_close`` (the session it announced). The caller still bounds
        the clock's age (``bot.risk.check_market_open``).
        """
        close = self.next_close.timestamp()
        if self.is_open:
            return now < close
        return self.next_open.timestamp() <= now < close


class MarketCache:
    """Typed reads of the poller's hashes. Cheap to create; share the Redis client."""

    def __init__(self, r: redis.Redis, keys: Keys, max_price_age: float = 5.0,
                 now: Callable[[], float] = time.time, *, max_quote_age: float | None = None,
                 future_tolerance: float = FUTURE_TOLERANCE) -> None:
        """``max_price_age``: seconds since the poll; ``max_quote_age``: seconds since the quote's own
        time (None = not checked: readers that only display prices); ``future_tolerance``: how far
        in the future a poll or quote may be stamped (clock skew between hosts) and still count."""
        self.r = r
        self.keys = keys
        self.max_price_age = max_price_age
        self.max_quote_age = max_quote_age
        self.future_tolerance = future_tolerance
        self.now = now

    # prices
    def price(self, symbol: str) -> Price:
        """The cached price; NoPrice when absent, StalePrice when polled longer than max_price_age
        ago (or further in the future than the tolerance), StaleQuote when the quote's own time is
        older than max_quote_age (or unknown, or in the future) while that limit is set."""
        key = self.keys.prices(symbol)
        return self._price_from(symbol, key, _text_hash(self.r.hgetall(key)), self.now())

    def _price_from(self, symbol: str, key: str, data: Mapping[str, str], now: float) -> Price:
        if not data or POLLED_AT not in data:
            raise NoPrice(symbol.upper(), key)
        price = _parse_price(symbol.upper(), key, data, now)
        if price.age > self.max_price_age or -price.age > self.future_tolerance:
            raise StalePrice(price.symbol, price.age, self.max_price_age)
        if self.max_quote_age is not None:
            quote_age = None if price.quote_time is None else now - price.quote_time
            if quote_age is None or quote_age > self.max_quote_age or -quote_age > self.future_tolerance:
                raise StaleQuote(price.symbol, quote_age, self.max_quote_age)
        return price

    # account
    def account(self) -> AccountState | None:
        """The cached account, or None when the poller has not written it yet."""
        return self._account_from(_text_hash(self.r.hgetall(self.keys.account)), self.now())

    def _account_from(self, data: Mapping[str, str], now: float) -> AccountState | None:
        if not data:
            return None
        key = self.keys.account
        polled_at = _float(key, data, POLLED_AT)
        return AccountState(
            cash=_decimal(key, data, "cash"),
            buying_power=_decimal(key, data, "buying_power"),
            equity=_decimal(key, data, "equity"),
            status=data.get("status", ""),
            trading_blocked=data.get("trading_blocked") == "1",
            account_blocked=data.get("account_blocked") == "1",
            polled_at=polled_at,
            age=now - polled_at,
        )

    # positions
    def position(self, symbol: str) -> PositionState | None:
        """The open position in ``symbol``; None = flat. NotPolled when positions were never written."""
        pipe = self.r.pipeline(transaction=False)
        self._queue_position(pipe, symbol)
        raw, polled = pipe.execute()
        return self._position_from(symbol, raw, polled)

    def _queue_position(self, pipe: Any, symbol: str) -> None:
        pipe.hget(self.keys.positions, symbol.upper()).hexists(self.keys.positions, POSITIONS_POLLED_AT)

    def _position_from(self, symbol: str, raw: str | None, polled: bool) -> PositionState | None:
        key = self.keys.positions
        if not polled:
            raise NotPolled(f"positions were never polled: {key} is empty; is the price poller running?")
        return None if raw is None else _parse_position(key, symbol.upper(), raw)

    def positions(self) -> dict[str, PositionState]:
        """Every open position by symbol ({} = flat everywhere). NotPolled when never written."""
        key = self.keys.positions
        data = _text_hash(self.r.hgetall(key))
        if POSITIONS_POLLED_AT not in data:
            raise NotPolled(f"positions were never polled: {key} is empty; is the price poller running?")
        return {name: _parse_position(key, name, raw) for name, raw in data.items() if not name.startswith("_")}

    def positions_as_of(self) -> float | None:
        """When the request behind the cached positions was sent (Unix seconds), None when never."""
        raw = self.r.hget(self.keys.positions, POSITIONS_AS_OF)
        if raw is None:
            return None
        return _float(self.keys.positions, {POSITIONS_AS_OF: codec.text(raw)}, POSITIONS_AS_OF)

    def positions_polled_at(self) -> float | None:
        """When the positions were last polled (Unix seconds), None when never (tests of the poller use it)."""
        raw = self.r.hget(self.keys.positions, POSITIONS_POLLED_AT)
        if raw is None:
            return None
        return _float(self.keys.positions, {POSITIONS_POLLED_AT: codec.text(raw)}, POSITIONS_POLLED_AT)

    # clock
    def clock(self) -> ClockState | None:
        return self._clock_from(_text_hash(self.r.hgetall(self.keys.clock)), self.now())

    def _clock_from(self, data: Mapping[str, str], now: float) -> ClockState | None:
        if not data:
            return None
        key = self.keys.clock
        polled_at = _float(key, data, POLLED_AT)
        return ClockState(is_open=data.get("is_open") == "1", next_open=_datetime(key, data, "next_open"),
                          next_close=_datetime(key, data, "next_close"), polled_at=polled_at,
                          age=now - polled_at)

    # everything an order needs, in one round trip
    def snapshot(self, symbol: str, extra_keys: Sequence[str] = (), *,
                 also: Callable[[Any], None] | None = None, account: bool = True) -> MarketSnapshot:
        """Price of ``symbol``, account, its position, the clock and the string values of
        ``extra_keys`` (e.g. the kill switch), read in ONE pipeline: one round trip instead of one
        per read. ``account=False`` leaves the account and the position out (a re-check of the
        gates and the price needs neither): their accessors raise NotRead. ``also(pipe)`` may queue
        more commands after these; their replies (a Redis error as an exception object) are the
        snapshot's ``more``.

        Nothing is parsed or checked here: each accessor of the snapshot does that when called
        (once; a second call answers the same), exactly like the read of the same name (ages
        counted from the snapshot's ``read_at``), so the caller's checks keep their order and a bad
        entry it never looks at stops nothing.
        A Redis error of one read (WRONGTYPE...) is raised by that read's accessor; a connection
        error or timeout is raised here, as by any read.
        """
        symbol = symbol.upper()
        extra_keys = tuple(extra_keys)
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.prices(symbol))
        pipe.hgetall(self.keys.clock)
        if account:
            pipe.hgetall(self.keys.account)
            self._queue_position(pipe, symbol)
        for key in extra_keys:
            pipe.get(key)
        if also is not None:
            also(pipe)
        replies = pipe.execute(raise_on_error=False)
        read_at = self.now()
        price, clock = replies[:2]
        if account:
            account_data, position, polled = replies[2:5]
            start = 5
        else:
            account_data = position = polled = NotRead(f"{symbol}: this snapshot did not read the account and "
                                                       "positions")
            start = 2
        values = replies[start:start + len(extra_keys)]
        return MarketSnapshot(cache=self, symbol=symbol, read_at=read_at, price_data=price,
                              account_data=account_data, clock_data=clock, position_data=position,
                              positions_polled=polled, values=dict(zip(extra_keys, values, strict=True)),
                              more=tuple(replies[start + len(extra_keys):]))

    # coordination with the poller
    def request_refresh(self) -> None:
        """Ask the poller to refresh account and positions now (e.g. after a fill).

        Requests pile up in a short list that the poller empties at once: many requests between
        two of its reads cost one refresh. The trim bounds the list while the poller is down.
        """
        pipe = self.r.pipeline(transaction=False)
        pipe.lpush(self.keys.refresh_request, self.refresh_ask())
        pipe.ltrim(self.keys.refresh_request, 0, REFRESH_ASKS_KEPT - 1)
        pipe.execute()

    def refresh_ask(self) -> str:
        """The value of one refresh ask (when it was asked), for a script that pushes it itself."""
        return _num(self.now())

    def missing(self, symbols: Iterable[str]) -> list[str]:
        """Keys the poller has not filled yet (prices per symbol, account, positions, the market clock).

        The clock counts: the poller writes it last in its first tick, and a worker's gates skip
        every signal while it is missing, so a signal arriving as the fleet starts would be
        journaled ``skipped`` instead of traded."""
        symbols = [s.upper() for s in symbols]
        pipe = self.r.pipeline(transaction=False)
        for symbol in symbols:
            pipe.hexists(self.keys.prices(symbol), POLLED_AT)
        pipe.hexists(self.keys.account, POLLED_AT)
        pipe.hexists(self.keys.positions, POSITIONS_POLLED_AT)
        pipe.hexists(self.keys.clock, POLLED_AT)
        names = [self.keys.prices(s) for s in symbols] + [self.keys.account, self.keys.positions, self.keys.clock]
        return [name for name, present in zip(names, pipe.execute(), strict=True) if not present]

    def wait_ready(self, symbols: Iterable[str], timeout: float | None,
                   stop_event: threading.Event | None = None, *, poll: float = 0.1,
                   log_every: float = 5.0) -> bool:
        """Block until prices of all ``symbols``, the account, positions and the clock are in the cache.

        True when ready; False when ``stop_event`` was set first; NotReady after ``timeout``
        seconds (None = no limit). Logs what is missing every ``log_every`` seconds.
        """
        symbols = list(symbols)
        stop_event = stop_event or threading.Event()
        started = time.monotonic()
        next_log = started
        while True:
            missing = self.missing(symbols)
            if not missing:
                return True
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                raise NotReady(missing, waited)
            if time.monotonic() >= next_log:
                log.info("waiting for the price poller to fill %s (%.0fs so far)", ", ".join(missing), waited)
                next_log += log_every
            pause = poll if timeout is None else max(0.0, min(poll, timeout - waited))
            if stop_event.wait(pause):
                return False


@dataclass(frozen=True)
class MarketSnapshot:
    """What a worker reads before an order, from one round trip (``MarketCache.snapshot``).

    The accessors have the names, results and errors of the MarketCache reads (``price``:
    NoPrice, StalePrice, StaleQuote, CorruptEntry; ``position``: NotPolled, CorruptEntry; ...),
    evaluated when first called, with ages counted from ``read_at``; a later call answers the same
    without parsing again (an error is raised again). A Redis error of one read is raised by its
    accessor, the way the separate read would have raised it.
    """

    cache: MarketCache
    symbol: str  # upper case
    read_at: float  # the cache's clock right after the replies came
    price_data: Any  # raw replies (or the Redis error of that read)
    account_data: Any
    clock_data: Any
    position_data: Any
    positions_polled: Any
    values: Mapping[str, Any]  # extra key -> its GET reply (or error)
    more: tuple[Any, ...] = ()  # replies of the commands ``also`` queued, in order
    _parsed: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def price(self) -> Price:
        if "price" not in self._parsed:
            data = _reply(self.price_data)
            self._parsed["price"] = self.cache._price_from(self.symbol, self.cache.keys.prices(self.symbol), data,
                                                           self.read_at)
        return self._parsed["price"]

    def account(self) -> AccountState | None:
        if "account" not in self._parsed:
            self._parsed["account"] = self.cache._account_from(_reply(self.account_data), self.read_at)
        return self._parsed["account"]

    def position(self) -> PositionState | None:
        if "position" not in self._parsed:
            self._parsed["position"] = self.cache._position_from(self.symbol, _reply(self.position_data),
                                                                 _reply(self.positions_polled))
        return self._parsed["position"]

    def clock(self) -> ClockState | None:
        if "clock" not in self._parsed:
            self._parsed["clock"] = self.cache._clock_from(_reply(self.clock_data), self.read_at)
        return self._parsed["clock"]

    def value(self, key: str) -> str | None:
        """The string value of an extra key (None when absent)."""
        return _reply(self.values[key])

    def exists(self, key: str) -> bool:
        """Does the extra key exist (EXISTS semantics: a key holding another type than a string
        exists too, though ``value`` raises WRONGTYPE for it)?"""
        reply = self.values[key]
        if isinstance(reply, redis.ResponseError) and str(reply).startswith("WRONGTYPE"):
            return True
        return _reply(reply) is not None


def _text_hash(reply: Mapping[Any, Any]) -> dict[str, str]:
    """An HGETALL reply with str names and values (the cache's client is a decoded one; bytes are
    decoded as strict UTF-8, as that client would)."""
    return {codec.text(name): codec.text(value) for name, value in reply.items()}


def _reply(reply: Any) -> Any:
    """A pipelined reply read with raise_on_error=False: the value, or its error raised now."""
    if isinstance(reply, Exception):
        raise reply
    return reply


# ---------------------------------------------------------------------- parsing helpers


def _parse_price(symbol: str, key: str, data: Mapping[str, str], now: float) -> Price:
    polled_at = _float(key, data, POLLED_AT)
    quote_time = data.get("quote_time")
    return Price(
        symbol=symbol,
        bid=_optional_decimal(key, data, "bid"),
        ask=_optional_decimal(key, data, "ask"),
        last=_optional_decimal(key, data, "last"),
        bid_size=_optional_decimal(key, data, "bid_size"),
        ask_size=_optional_decimal(key, data, "ask_size"),
        quote_time=None if not quote_time else _float(key, data, "quote_time"),
        polled_at=polled_at,
        age=now - polled_at,
    )


def _parse_position(key: str, symbol: str, raw: str) -> PositionState:
    try:
        d = json.loads(raw)
        qty = Decimal(d["qty"])
        return PositionState(
            symbol=symbol,
            qty=qty,
            qty_available=Decimal(d["qty_available"]) if d.get("qty_available") is not None else qty,
            avg_entry_price=Decimal(d.get("avg_entry_price") or "0"),
            market_value=None if d.get("market_value") is None else Decimal(d["market_value"]),
            side=str(d.get("side") or "long"),
        )
    except (ValueError, TypeError, KeyError, InvalidOperation) as exc:
        raise CorruptEntry(f"{key} field {symbol} is not a position ({type(exc).__name__}): {raw[:100]!r}") from None


def _float(key: str, data: Mapping[str, str], name: str) -> float:
    try:
        return float(data[name])
    except (KeyError, ValueError, TypeError):
        raise CorruptEntry(f"{key} field {name} is missing or not a number: {data.get(name)!r}") from None


def _optional_decimal(key: str, data: Mapping[str, str], name: str) -> Decimal | None:
    raw = data.get(name)
    if raw is None or raw == "":
        return None
    return _decimal(key, data, name)


def _decimal(key: str, data: Mapping[str, str], name: str) -> Decimal:
    try:
        value = Decimal(data[name])
    except (KeyError, InvalidOperation, TypeError):
        raise CorruptEntry(f"{key} field {name} is missing or not a decimal: {data.get(name)!r}") from None
    if not value.is_finite():
        raise CorruptEntry(f"{key} field {name} is not finite: {data[name]!r}")
    return value


def _datetime(key: str, data: Mapping[str, str], name: str) -> datetime:
    try:
        return datetime.fromisoformat(data[name])
    except (KeyError, ValueError, TypeError):
        raise CorruptEntry(f"{key} field {name} is missing or not an ISO time: {data.get(name)!r}") from None
