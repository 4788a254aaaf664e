"""Cash and share reservations of orders in flight, shared by every worker through Redis.

Why: the cached account and positions (written by the poller) lag the broker. Two workers that
size buys from the same cached cash would together spend it twice; two sells would sell the same
shares twice. So before submitting, a worker RESERVES what its order may use, and every decision
is one Lua script that reads the cached account (or positions) hash and the ledger hash and
writes the new reservation atomically: no two reservations can both take the same dollar.

A reservation lives in the ledger hash (``Keys.ledger``), field = client_order_id (so a worker
that reclaims a crashed worker's signal finds the reservation under the same id), value = JSON.
Its life:

- ``reserve_buy`` / ``reserve_sell``: active; counts in full.
- ``settle`` (the order is final): counts at the FILLED amount until the cache is refreshed by a
  poll whose request was sent after the settle time: a buy's cash until the account hash's
  ``as_of`` passes it, a buy's shares (for the position limit) and a sell's shares until the
  positions hash's ``as_of`` does; the scripts then drop it, lazily, as they pass.

Per-symbol position limit: ``reserve_buy(..., max_position_qty=...)`` counts the cached position
plus every buy reservation of the symbol the positions do not show yet, so concurrent buys on
different workers cannot together grow a position past max_position_value (or the all-in target).
- ``release`` (nothing was placed, or nothing filled): dropped at once.
- Older than ``max_age`` (a crashed worker nobody reclaimed): dropped by the scripts and logged.

Lua numbers are doubles, so amounts are kept as integers of micro-dollars (10^-6 $) and
nano-shares (10^-9 share, Alpaca's finest qty) stored as digit strings; every integer stays below
2^53, and decimal strings from the cache are parsed digit by digit, never through a float.
Rounding always favours safety: cash needed rounds up, cash available rounds down.

Clocks: created/settled times come from ``now`` (this host), ``as_of`` from the poller's host.
On one host they agree; across hosts, ``reflect_margin`` seconds of skew can be tolerated (a
settled reservation is dropped only when ``as_of > settled_at + reflect_margin``).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

from bot import codec, lua
from bot.codec import decimal_text
from bot.errors import TradebotError
from bot.keys import Keys
from bot.numbers import non_negative, positive

log = logging.getLogger(__name__)

CASH_SCALE = 6  # micro-dollars
SHARE_SCALE = 9  # nano-shares: Alpaca accepts qty with up to 9 decimals
MAX_UNITS = 2**53 - 1  # the largest integer a Lua number (a double) holds exactly
DEFAULT_MAX_AGE = 3600.0

# The scripts are bot/lua/ledger_*.lua (the shared helpers: ledger_common.lua); each reads and
# writes the ledger, account and positions hashes (KEYS 1-3) in one atomic step.


# --------------------------------------------------------------------------- errors and records


class LedgerError(TradebotError):
    """Base of the ledger's errors."""


class Shortfall(LedgerError):
    """What is available does not cover what the order needs."""

    def __init__(self, message: str, available: Decimal, needed: Decimal | None = None) -> None:
        super().__init__(message)
        self.available = available
        self.needed = needed


class InsufficientCash(Shortfall):
    """The cash not committed to other orders does not cover this buy."""


class InsufficientShares(Shortfall):
    """The shares held and not reserved by other sells do not cover this sell."""


class PositionLimit(LedgerError):
    """The symbol's position, with the buys in flight, leaves no room for this buy."""

    def __init__(self, message: str, room: Decimal, needed: Decimal | None = None) -> None:
        super().__init__(message)
        self.room = room
        self.needed = needed


class NoAccountData(LedgerError):
    """The poller has not written the account (buys) or positions (sells) yet."""


class CorruptCache(LedgerError):
    """A cached account/position field cannot be read as a decimal."""


@dataclass(frozen=True)
class Reservation:
    client_order_id: str
    symbol: str
    side: str  # "buy" | "sell"
    qty: Decimal  # shares reserved; after settle, shares filled
    cash: Decimal  # buys: cash reserved incl. the buffer (after settle: filled cost); sells: 0
    price: Decimal  # buys: the price given to reserve_buy (after settle: the fill price); sells: 0
    created_at: float
    settled_at: float | None = None  # set once the order is final

    @property
    def settled(self) -> bool:
        return self.settled_at is not None


# --------------------------------------------------------------------------- the ledger


class Ledger:
    """Reservations shared by all workers. Cheap to create; share the Redis client.

    ``cash_buffer_bps``: buys reserve at price * (1 + bps/10000), so the ask moving a little
    between sizing and fill cannot turn into a 403 "insufficient buying power".
    ``max_age``: seconds after which a reservation nobody settled or released is dropped.
    ``reflect_margin``: seconds of clock skew between worker and poller hosts to tolerate.
    """

    def __init__(self, r: Any, keys: Keys, *, cash_buffer_bps: int = 50, now: Callable[[], float] = time.time,
                 max_age: float = DEFAULT_MAX_AGE, reflect_margin: float = 0.0) -> None:
        if isinstance(cash_buffer_bps, bool) or not isinstance(cash_buffer_bps, int) or cash_buffer_bps < 0:
            raise ValueError(f"cash_buffer_bps must be a whole number >= 0, got {cash_buffer_bps!r}")
        if not max_age > 0:
            raise ValueError(f"max_age must be > 0 seconds, got {max_age!r}")
        if reflect_margin < 0:
            raise ValueError(f"reflect_margin must be >= 0 seconds, got {reflect_margin!r}")
        self.r = r
        self.keys = keys
        self.cash_buffer_bps = cash_buffer_bps
        self.now = now
        self.max_age = float(max_age)
        self.reflect_margin = float(reflect_margin)
        self._reserve_buy = lua.script(r, "ledger_reserve_buy")
        self._reserve_sell = lua.script(r, "ledger_reserve_sell")
        self._settle = lua.script(r, "ledger_settle")
        self._totals = lua.script(r, "ledger_totals")

    @property
    def _keys(self) -> list[str]:
        return [self.keys.ledger, self.keys.account, self.keys.positions]

    # ------------------------------------------------------------------ reserving

    def buffered_price(self, price: Decimal) -> Decimal:
        """The per-share cash a buy reserves: price plus the buffer, rounded up to a micro-dollar."""
        return _from_units(self._price_units(price), CASH_SCALE)

    def reserve_buy(self, client_order_id: str, symbol: str, price: Decimal, *, qty: Decimal | None = None,
                    max_cash: Decimal | None = None, max_position_qty: Decimal | None = None) -> Reservation:
        """Reserve cash for a buy of ``symbol``.

        ``qty`` None: as many whole shares as min(max_cash, available cash) buys at the buffered
        price. ``qty`` given: that qty, which must fit the available cash (and ``max_cash``).
        ``max_position_qty``: the most shares the symbol's position may reach once every buy in
        flight fills: the cached position (its ``qty``) plus the shares of every buy reservation
        of the symbol the cached positions do not show yet (other workers' orders included) plus
        this buy. All-in buys are sized down to it; a fixed qty that does not fit raises
        PositionLimit. The same ``client_order_id`` again returns the existing reservation.
        """
        symbol = _symbol(symbol)
        _require_id(client_order_id)
        price_u = self._price_units(price)
        qty_text, cash_u = "", ""
        if qty is not None:
            qty = positive("qty", qty)
            _units(qty, SHARE_SCALE, exact=True, what="qty")
            cash_u = str(_units(qty * _from_units(price_u, CASH_SCALE), CASH_SCALE, ROUND_CEILING, what="order cost"))
            qty_text = decimal_text(qty)
        max_cash_u = "" if max_cash is None else str(_limit_units(non_negative("max_cash", max_cash), CASH_SCALE))
        max_position_u = "" if max_position_qty is None else str(
            _limit_units(non_negative("max_position_qty", max_position_qty), SHARE_SCALE))
        now = self.now()
        result = self._run(self._reserve_buy, [client_order_id, symbol, str(price_u), qty_text, cash_u, max_cash_u,
                                               repr(now), repr(self.max_age), repr(self.reflect_margin),
                                               decimal_text(price), max_position_u])
        status = result["status"]
        if status == "exists":
            return self._existing(client_order_id, result["record"], symbol, "buy")
        if status == "noaccount":
            raise NoAccountData(f"no cached account in {self.keys.account}: the price poller has not written "
                                f"it yet; cannot size a buy of {symbol}")
        if status == "nopositions":
            raise NoAccountData(f"no cached positions in {self.keys.positions}: the price poller has not written "
                                f"them yet; cannot check the position limit of {symbol}")
        if status == "corrupt_cache":
            key = self.keys.account if result["field"] in ("cash", "buying_power") else self.keys.positions
            raise CorruptCache(f"{key} field {result['field']} is not readable: {str(result['value'])[:100]!r}")
        if status == "noroom":
            raise self._position_limit(symbol, qty, result)
        if status == "nocash":
            raise self._insufficient_cash(symbol, price, qty, max_cash, result)
        reservation = _reservation(client_order_id, result["record"])
        log.debug("reserved %s cash for buy %s %s (%s)", reservation.cash, reservation.qty, symbol, client_order_id)
        return reservation

    def reserve_sell(self, client_order_id: str, symbol: str, *, qty: Decimal | None = None,
                     max_qty: Decimal | None = None) -> Reservation:
        """Reserve shares for a sell: ``qty`` None = all the shares not reserved by other sells, but
        at most ``max_qty`` when given (an all-in sell capped by the order notional limit)."""
        symbol = _symbol(symbol)
        _require_id(client_order_id)
        qty_u = max_qty_u = ""
        if qty is not None:
            qty_u = str(_units(positive("qty", qty), SHARE_SCALE, exact=True, what="qty"))
        elif max_qty is not None:
            max_qty_u = str(_units(positive("max_qty", max_qty), SHARE_SCALE, ROUND_FLOOR, what="max_qty"))
        now = self.now()
        result = self._run(self._reserve_sell, [client_order_id, symbol, qty_u, repr(now), repr(self.max_age),
                                                repr(self.reflect_margin), max_qty_u])
        status = result["status"]
        if status == "exists":
            return self._existing(client_order_id, result["record"], symbol, "sell")
        if status == "noaccount":
            raise NoAccountData(f"no cached positions in {self.keys.positions}: the price poller has not "
                                f"written them yet; cannot size a sell of {symbol}")
        if status == "corrupt_cache":
            raise CorruptCache(f"{self.keys.positions} field {result['field']} is not a position: "
                               f"{str(result['value'])[:100]!r}")
        if status == "noshares":
            available = _from_units(int(result["available"]), SHARE_SCALE)
            held = _from_units(int(result["held"]), SHARE_SCALE)
            reserved = _from_units(int(result["reserved"]), SHARE_SCALE)
            wanted = "any" if qty is None else decimal_text(qty)
            raise InsufficientShares(
                f"insufficient shares of {symbol}: want {wanted}, available {decimal_text(available)} "
                f"({decimal_text(held)} held - {decimal_text(reserved)} reserved by other sells)", available, qty)
        reservation = _reservation(client_order_id, result["record"])
        log.debug("reserved %s %s for sell (%s)", reservation.qty, symbol, client_order_id)
        return reservation

    # ------------------------------------------------------------------ ending

    def settle(self, client_order_id: str, filled_qty: Decimal, filled_avg_price: Decimal | None) -> None:
        """The order is final: keep counting what it filled until the cache shows it.

        Nothing filled = ``release``. ``filled_avg_price`` None: the reserved (buffered) price.
        Idempotent: settling again updates the amounts but keeps the first settle time.
        """
        args = self.settle_args(client_order_id, filled_qty, filled_avg_price)
        outcome = "missing" if args is None else self._settle(keys=[self.keys.ledger], args=args)
        self.settled(client_order_id, codec.text(outcome), filled_qty)

    def settle_args(self, client_order_id: str, filled_qty: Decimal,
                    filled_avg_price: Decimal | None) -> list[str] | None:
        """The settle script's ARGV (``ledger_settle_common.lua``: id, filled qty, its nano-shares, the
        filled cost in micro-dollars, the price, the settle time), also queued by the worker's journal
        script. With a usable fill price nothing is read: the cost is a buy's (a sell's settle uses only
        the shares). Without one the reservation is read first (its side and reserved price; one more
        round trip); None when there is no reservation to settle."""
        filled_qty = non_negative("filled_qty", filled_qty)
        qty_u = _units(filled_qty, SHARE_SCALE, ROUND_CEILING, what="filled_qty")
        if filled_avg_price is not None and filled_avg_price.is_finite() and filled_avg_price > 0:
            try:
                cash_u = _units(filled_qty * filled_avg_price, CASH_SCALE, ROUND_CEILING, what="filled cost")
            except LedgerError:
                pass  # too large for a buy: a sell's settle still works from the reservation below
            else:
                return [client_order_id, decimal_text(filled_qty), str(qty_u), str(cash_u),
                        decimal_text(filled_avg_price), repr(self.now())]
        reservation = self.get(client_order_id)
        if reservation is None:
            return None
        cash_u, price = 0, Decimal(0)
        if reservation.side == "buy":
            if filled_avg_price is None:
                per_share = self.buffered_price(reservation.price)
                price = reservation.price
            else:
                per_share = price = positive("filled_avg_price", filled_avg_price)
            cash_u = _units(filled_qty * per_share, CASH_SCALE, ROUND_CEILING, what="filled cost")
        return [client_order_id, decimal_text(filled_qty), str(qty_u), str(cash_u), decimal_text(price),
                repr(self.now())]

    @staticmethod
    def settled(client_order_id: str, outcome: str, filled_qty: Decimal) -> None:
        """Log what a settle did (``outcome``: the script's answer, 'missing' when nothing was there)."""
        if outcome == "missing":
            log.warning("settle %s: no reservation in the ledger (released, expired or never made)", client_order_id)
        else:
            log.debug("settle %s: %s (filled %s)", client_order_id, outcome, filled_qty)

    def release(self, client_order_id: str) -> None:
        """No order was placed (or it filled nothing): drop the reservation now."""
        self.r.hdel(self.keys.ledger, client_order_id)

    # ------------------------------------------------------------------ reading

    def exists(self, client_order_id: str) -> bool:
        """Is a reservation stored under this client_order_id (whatever its state)?"""
        return bool(self.r.hexists(self.keys.ledger, client_order_id))

    def get(self, client_order_id: str) -> Reservation | None:
        raw = self.r.hget(self.keys.ledger, client_order_id)
        return None if raw is None else _reservation(client_order_id, raw)

    def reservations(self) -> list[Reservation]:
        """Every reservation stored (including ones the next script will drop), oldest first."""
        items = []
        for cid, raw in self.r.hgetall(self.keys.ledger).items():
            try:
                items.append(_reservation(codec.text(cid), raw))
            except LedgerError:
                log.warning("ledger field %s is corrupt; the next reservation drops it", cid)
        return sorted(items, key=lambda res: res.created_at)

    def sweep(self) -> None:
        """Drop the reservations that no longer count (settled and reflected by the cache, expired,
        corrupt): every reservation does that on its way, this does it when no signal comes (after a
        burst the settled ones would otherwise stay in the hash until the next one)."""
        self._totals_now()

    def committed_cash(self) -> Decimal:
        """Cash of buys in flight plus settled buys the cached account does not show yet."""
        return _from_units(int(self._totals_now()["cash"]), CASH_SCALE)

    def reserved_shares(self, symbol: str) -> Decimal:
        """Shares of sells in flight plus settled sells the cached positions do not show yet."""
        shares = self._totals_now()["shares"] or {}
        return _from_units(int(shares.get(_symbol(symbol), 0)), SHARE_SCALE)

    def pending_buy_qty(self, symbol: str) -> Decimal:
        """Shares of buys in flight plus settled buys the cached positions do not show yet."""
        buys = self._totals_now().get("buys") or {}
        return _from_units(int(buys.get(_symbol(symbol), 0)), SHARE_SCALE)

    # ------------------------------------------------------------------ helpers

    def _totals_now(self) -> dict[str, Any]:
        return self._run(self._totals, [repr(self.now()), repr(self.max_age), repr(self.reflect_margin)])

    def _run(self, script: Any, args: list[str]) -> dict[str, Any]:
        result = json.loads(script(keys=self._keys, args=args))
        expired = result.get("expired") or []
        if expired:
            log.warning("ledger dropped %d reservation(s) older than %.0fs that were never settled or "
                        "released (crashed worker?): %s", len(expired), self.max_age, ", ".join(expired))
        corrupt = result.get("corrupt") or []
        if corrupt:
            log.warning("ledger dropped %d unreadable reservation(s): %s", len(corrupt), ", ".join(corrupt))
        return result

    def _price_units(self, price: Decimal) -> int:
        price = positive("price", price)
        buffered = price * (10000 + self.cash_buffer_bps) / 10000
        return _units(buffered, CASH_SCALE, ROUND_CEILING, what="price")

    def _existing(self, client_order_id: str, raw: str, symbol: str, side: str) -> Reservation:
        reservation = _reservation(client_order_id, raw)
        if (reservation.symbol, reservation.side) != (symbol, side):
            raise LedgerError(f"client_order_id {client_order_id} already reserves a {reservation.side} of "
                              f"{reservation.symbol}, not a {side} of {symbol}")
        log.info("reservation %s exists (redelivered signal): reusing it", client_order_id)
        return reservation

    def _position_limit(self, symbol: str, qty: Decimal | None, result: dict[str, Any]) -> PositionLimit:
        shares = lambda name: _from_units(int(result[name]), SHARE_SCALE)  # noqa: E731
        held, in_flight, limit = shares("held"), shares("in_flight"), shares("max_position")
        room = max(Decimal(0), limit - held - in_flight)
        wanted = decimal_text(qty) if qty is not None else "1 more share"
        message = (f"position limit of {symbol}: {decimal_text(held)} held + {decimal_text(in_flight)} in buys not "
                   f"yet in the positions leave room for {decimal_text(room)} of at most {decimal_text(limit)} "
                   f"shares; wanted {wanted}")
        return PositionLimit(message, room, qty)

    def _insufficient_cash(self, symbol: str, price: Decimal, qty: Decimal | None, max_cash: Decimal | None,
                           result: dict[str, Any]) -> InsufficientCash:
        cash = lambda name: _from_units(int(result[name]), CASH_SCALE)  # noqa: E731
        available, need = cash("available"), cash("need")
        what = f"{decimal_text(qty)} x" if qty is not None else "1 share at"
        detail = (f"available {_money(available)} (min(cash {_money(cash('cash'))}, buying power "
                  f"{_money(cash('buying_power'))}) - {_money(cash('committed'))} committed to other orders)")
        if max_cash is not None and cash("cap") < available:
            detail += f", capped at {_money(cash('cap'))} (the order's budget)"
        message = (f"insufficient cash to buy {symbol}: need {_money(need)} ({what} {decimal_text(price)} plus "
                   f"{self.cash_buffer_bps} bps buffer), {detail}")
        return InsufficientCash(message, available, need)


# --------------------------------------------------------------------------- conversions


def _limit_units(limit: Decimal, scale: int) -> int:
    """An upper bound in units, rounded down; a bound past what the ledger can hold is no bound at all
    (no amount it holds can exceed MAX_UNITS), so it is clamped there instead of refused."""
    return min(int(limit.scaleb(scale).to_integral_value(rounding=ROUND_FLOOR)), MAX_UNITS)


def _units(value: Decimal, scale: int, rounding: str = ROUND_CEILING, *, exact: bool = False, what: str) -> int:
    """value * 10^scale as an int (rounded as asked, or exactly); LedgerError beyond 2^53."""
    scaled = value.scaleb(scale)
    integral = scaled.to_integral_value(rounding=rounding)
    if exact and integral != scaled:
        raise ValueError(f"{what} {value} has more than {scale} decimal places")
    if abs(integral) > MAX_UNITS:
        raise LedgerError(f"{what} {value} is too large for the ledger (limit {Decimal(MAX_UNITS).scaleb(-scale)})")
    return int(integral)


def _from_units(n: int, scale: int) -> Decimal:
    """Back to a Decimal without trailing zeros or exponent: 100500000 micro-$ -> Decimal('100.5')."""
    value = Decimal(n).scaleb(-scale)
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


def _symbol(symbol: str) -> str:
    cleaned = (symbol or "").strip().upper()
    if not cleaned or cleaned.startswith("_"):
        raise ValueError(f"not a ticker: {symbol!r}")
    return cleaned


def _require_id(client_order_id: str) -> None:
    if not client_order_id:
        raise ValueError("client_order_id is empty")


def _money(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.01"), rounding=ROUND_FLOOR), "f")


def _reservation(client_order_id: str, raw: Any) -> Reservation:
    try:
        data = json.loads(raw)
        side = data["side"]
        qty = Decimal(data["qty"]) if side == "buy" else _from_units(int(data["qty_u"]), SHARE_SCALE)
        settled_at = data.get("settled_at")
        return Reservation(
            client_order_id=client_order_id,
            symbol=data["symbol"],
            side=side,
            qty=qty,
            cash=_from_units(int(data["cash_u"]), CASH_SCALE),
            price=Decimal(data["price"]),
            created_at=float(data["created_at"]),
            settled_at=None if settled_at in (None, "") else float(settled_at),
        )
    except (ValueError, TypeError, KeyError, InvalidOperation) as exc:
        raise LedgerError(f"ledger entry {client_order_id} is unreadable ({type(exc).__name__}): "
                          f"{str(raw)[:100]!r}") from None
