"""The simulated exchange and account behind the paper broker: orders, fills, cash, positions.

Pure Python, no HTTP: the app turns requests into calls here and BrokerError into Alpaca's
error bodies. Every public method takes the one lock, so the HTTP thread and a test thread
may call it concurrently. Order life is evaluated lazily: each call first "ticks" the book
(releases queued orders at the open, executes orders whose fill delay passed, expires day
orders after their session), so what a client reads is always consistent with `now`.

Execution model (simplified, see the module's notes in the report):
- market buy at the ask, market sell at the bid; a limit order executes when marketable,
  at the quote (price improvement), else rests as `new`;
- IOC executes at most the quote's displayed size (ask_size/bid_size) and cancels the rest;
  day/gtc orders execute in full when they execute;
- nothing executes while the market is closed (orders wait as `accepted`);
- cash account (multiplier 1), long only: no shorting, no margin.
"""
from __future__ import annotations

import logging
import random
import re
import secrets
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from bot.paper import PaperConfig
from bot.paper.clock import MarketClock
from bot.paper.events import EVENT_OF_STATUS, EventHub, TradeEvent
from bot.paper.prices import CENT, Pin, PriceBook, Quote, rfc3339, tick_size

log = logging.getLogger(__name__)

TERMINAL = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})
ALL_TIF = ("day", "gtc", "opg", "cls", "ioc", "fok")
SUPPORTED_TIF = ("day", "gtc", "ioc")
ALL_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
SUPPORTED_TYPES = ("market", "limit")
POSITION_INTENTS = ("buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close")
MAX_CLIENT_ORDER_ID = 128
MAX_DECIMALS = 9
QTY_STEP = Decimal(1).scaleb(-MAX_DECIMALS)
SYMBOL_RE = re.compile(r"^[A-Z]{1,5}$")
ASSET_NAMESPACE = uuid.UUID("6f1d7c3e-3b0a-4c4e-9a51-7a0b5e0c2a11")

# Alpaca's error codes
CODE_BAD_BODY = 40010000
CODE_INVALID = 40010001
CODE_UNAUTHORIZED = 40110000
CODE_FORBIDDEN = 40310000
CODE_NOT_FOUND = 40410000
CODE_UNPROCESSABLE = 42210000


class BrokerError(Exception):
    """An Alpaca error answer: HTTP status, 8-digit code, message, and any extra body keys."""

    def __init__(self, status: int, message: str, code: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {} if self.code is None else {"code": self.code}
        body["message"] = self.message
        body.update(self.extra)
        return body


def invalid(message: str) -> BrokerError:
    return BrokerError(422, message, CODE_INVALID)


def fmt(value: Decimal | None, places: int | None = None) -> str | None:
    """Decimal -> Alpaca's decimal string ("100", "0.5", "123.45"); None stays None."""
    if value is None:
        return None
    if places is not None:
        value = value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def asset_id(symbol: str) -> str:
    return str(uuid.uuid5(ASSET_NAMESPACE, symbol))


def check_symbol(raw: Any) -> str | None:
    """Upper-cased symbol if it looks like a US equity ticker (1-5 letters), else None."""
    if not isinstance(raw, str):
        return None
    symbol = raw.strip().upper()
    return symbol if SYMBOL_RE.match(symbol) else None


def decimals_of(value: Decimal) -> int:
    return max(0, -value.normalize().as_tuple().exponent)  # type: ignore[operator]


def _decimal_field(body: Mapping[str, Any], name: str) -> Decimal | None:
    raw = body.get(name)
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float, Decimal)):
        raise invalid(f"invalid {name}: {raw!r} is not a number")
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise invalid(f"invalid {name}: {raw!r} is not a number") from None
    if not value.is_finite():
        raise invalid(f"invalid {name}: {raw!r} is not a finite number")
    return value


def _bool_field(body: Mapping[str, Any], name: str) -> bool:
    raw = body.get(name, False)
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise invalid(f"invalid {name}: {raw!r} is not a boolean")


def _choice(body: Mapping[str, Any], name: str, allowed: Iterable[str]) -> str:
    raw = body.get(name)
    if raw is None or raw == "":
        raise invalid(f"{name} is required")
    if not isinstance(raw, str) or raw not in allowed:
        raise invalid(f"invalid {name}: {raw!r}")
    return raw


@dataclass(frozen=True)
class Ticket:
    """A validated order request, before account checks."""

    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal | None
    notional: Decimal | None
    limit_price: Decimal | None
    extended_hours: bool
    client_order_id: str | None
    position_intent: str | None

    @property
    def fractional(self) -> bool:
        return self.notional is not None or (self.qty is not None and self.qty % 1 != 0)


def parse_ticket(body: Any) -> Ticket:
    """Validate a POST /v2/orders body the way Alpaca does; raises BrokerError (422/400)."""
    if not isinstance(body, Mapping):
        raise BrokerError(400, "request body format is invalid", CODE_BAD_BODY)
    raw_symbol = body.get("symbol")
    if raw_symbol is None or raw_symbol == "":
        raise invalid("symbol is required")
    symbol = check_symbol(raw_symbol)
    if symbol is None:
        raise invalid(f'asset "{raw_symbol}" not found')
    side = _choice(body, "side", ("buy", "sell"))
    order_type = _choice(body, "type", ALL_TYPES)
    if order_type not in SUPPORTED_TYPES:
        raise invalid(f'order type "{order_type}" is not supported by the paper broker (market, limit)')
    tif = _choice(body, "time_in_force", ALL_TIF)
    qty, notional = _decimal_field(body, "qty"), _decimal_field(body, "notional")
    _check_amounts(qty, notional, order_type)
    ticket_fractional = notional is not None or (qty is not None and qty % 1 != 0)
    if ticket_fractional and tif != "day":
        raise BrokerError(422, "fractional orders must be DAY orders", CODE_UNPROCESSABLE)
    if tif not in SUPPORTED_TIF:
        raise invalid(f'time_in_force "{tif}" is not supported by the paper broker (day, gtc, ioc)')
    limit_price = _check_limit_price(_decimal_field(body, "limit_price"), order_type)
    extended_hours = _bool_field(body, "extended_hours")
    if extended_hours and order_type != "limit":
        raise invalid('only type="limit" is allowed for extended hours orders')
    if extended_hours and tif not in ("day", "gtc"):
        raise invalid("extended hours orders must be DAY or GTC orders")
    order_class = body.get("order_class")
    if order_class not in (None, "", "simple"):
        raise invalid(f'order_class "{order_class}" is not supported by the paper broker (simple only)')
    intent = body.get("position_intent")
    if intent not in (None, "") and intent not in POSITION_INTENTS:
        raise invalid(f"invalid position_intent: {intent!r}")
    return Ticket(symbol, side, order_type, tif, qty, notional, limit_price, extended_hours,
                  _check_client_order_id(body.get("client_order_id")), intent or None)


def _check_amounts(qty: Decimal | None, notional: Decimal | None, order_type: str) -> None:
    if qty is not None and notional is not None:
        raise invalid("qty and notional cannot both be specified")
    if qty is None and notional is None:
        raise invalid("qty or notional is required")
    for name, value in (("qty", qty), ("notional", notional)):
        if value is None:
            continue
        if value <= 0:
            raise invalid(f"{name} must be > 0")
        if decimals_of(value) > MAX_DECIMALS:
            raise invalid(f"{name} must have at most {MAX_DECIMALS} decimal places")
    if notional is not None and order_type != "market":
        raise invalid("notional orders must be market orders in the paper broker")


def _check_limit_price(limit_price: Decimal | None, order_type: str) -> Decimal | None:
    if order_type != "limit":
        if limit_price is not None:
            raise invalid("limit_price is only allowed for limit orders")
        return None
    if limit_price is None:
        raise invalid("limit_price is required for limit orders")
    if limit_price <= 0:
        raise invalid("limit_price must be > 0")
    if decimals_of(limit_price) > decimals_of(tick_size(limit_price)):
        raise BrokerError(422, "sub-penny increment does not fulfill minimum pricing criteria", CODE_UNPROCESSABLE)
    return limit_price


def _check_client_order_id(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise invalid("client_order_id must be a string")
    if len(raw) > MAX_CLIENT_ORDER_ID:
        raise invalid(f"client_order_id must be no more than {MAX_CLIENT_ORDER_ID} characters")
    return raw


@dataclass
class PaperOrder:
    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal | None
    notional: Decimal | None
    limit_price: Decimal | None
    extended_hours: bool
    position_intent: str
    created_at: datetime
    live_at: datetime  # earliest first execution: created_at + fill delay
    expires_at: datetime | None  # day orders: close of the session they work in
    hold_price: Decimal  # buys: price the buying-power hold is valued at
    sell_hold_qty: Decimal  # sells: shares held for the order
    seq: int
    status: str = "accepted"
    updated_at: datetime | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    expired_at: datetime | None = None
    filled_qty: Decimal = Decimal(0)
    filled_cost: Decimal = Decimal(0)  # sum of qty * price over fills, exact

    @property
    def is_open(self) -> bool:
        return self.status not in TERMINAL

    @property
    def whole_shares(self) -> bool:
        return self.notional is None and self.qty is not None and self.qty % 1 == 0

    @property
    def filled_avg_price(self) -> Decimal | None:
        if not self.filled_qty:
            return None
        return (self.filled_cost / self.filled_qty).quantize(Decimal("0.000001"), ROUND_HALF_UP)

    def remaining_qty(self, price: Decimal) -> Decimal:
        """Shares still to execute; a notional order converts its dollars at `price`."""
        if self.notional is not None:
            if self.filled_qty:
                return Decimal(0)  # a notional order executes in one fill
            return (self.notional / price).quantize(QTY_STEP, ROUND_DOWN)
        assert self.qty is not None
        return self.qty - self.filled_qty

    def buy_hold(self) -> Decimal:
        """Buying power this open buy order reserves."""
        if self.side != "buy" or not self.is_open:
            return Decimal(0)
        if self.notional is not None:
            return Decimal(0) if self.filled_qty else self.notional
        assert self.qty is not None
        return (self.qty - self.filled_qty) * self.hold_price

    def sell_hold(self) -> Decimal:
        if self.side != "sell" or not self.is_open:
            return Decimal(0)
        return max(Decimal(0), self.sell_hold_qty - self.filled_qty)

    def touch(self, now: datetime, status: str | None = None) -> None:
        # the exchange calls _Book.touch, which also keeps the book's open_orders in step
        if status is not None:
            self.status = status
        self.updated_at = now

    def to_json(self) -> dict[str, Any]:
        def t(at: datetime | None) -> str | None:
            return rfc3339(at) if at is not None else None

        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": t(self.created_at),
            "updated_at": t(self.updated_at or self.created_at),
            "submitted_at": t(self.created_at),
            "filled_at": t(self.filled_at),
            "expired_at": t(self.expired_at),
            "canceled_at": t(self.canceled_at),
            "failed_at": None,
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": asset_id(self.symbol),
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": fmt(self.notional),
            "qty": fmt(self.qty),
            "filled_qty": fmt(self.filled_qty),
            "filled_avg_price": fmt(self.filled_avg_price),
            "order_class": "",
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "position_intent": self.position_intent,
            "time_in_force": self.time_in_force,
            "limit_price": fmt(self.limit_price),
            "stop_price": None,
            "status": self.status,
            "extended_hours": self.extended_hours,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
            "expires_at": t(self.expires_at),
        }


@dataclass
class Holding:
    symbol: str
    qty: Decimal = Decimal(0)
    cost_basis: Decimal = Decimal(0)  # exact sum paid for the shares still held

    @property
    def avg_entry_price(self) -> Decimal:
        return self.cost_basis / self.qty if self.qty else Decimal(0)


@dataclass
class OrderQuery:
    status: str = "open"  # open | closed | all
    limit: int = 50
    after: datetime | None = None
    until: datetime | None = None
    direction: str = "desc"
    symbols: tuple[str, ...] = ()
    side: str | None = None


@dataclass
class _Book:
    """The mutable state a reset throws away."""

    prices: PriceBook
    cash: Decimal
    last_equity: Decimal
    created_at: datetime
    account_id: str
    ids: random.Random
    holdings: dict[str, Holding] = field(default_factory=dict)
    orders: dict[str, PaperOrder] = field(default_factory=dict)
    by_client_id: dict[str, str] = field(default_factory=dict)  # burnt forever, even after cancel
    # The non-terminal orders, oldest first (insertion order = seq order). Every request ticks the
    # book and counts holds; walking only these keeps a request's cost independent of how many
    # orders the book has ever seen (closed orders neither execute nor hold anything).
    open_orders: dict[str, PaperOrder] = field(default_factory=dict)

    def add(self, order: PaperOrder) -> None:
        self.orders[order.id] = order
        self.by_client_id[order.client_order_id] = order.id
        if order.is_open:
            self.open_orders[order.id] = order

    def touch(self, order: PaperOrder, now: datetime, status: str | None = None) -> None:
        """The one way an order's status changes: a terminal status also leaves `open_orders`."""
        order.touch(now, status)
        if not order.is_open:
            self.open_orders.pop(order.id, None)


class Exchange:
    """One paper account on a simulated exchange. Thread-safe."""

    def __init__(self, config: PaperConfig, clock: MarketClock | None = None) -> None:
        self.config = config
        self.clock = clock or MarketClock("open" if config.always_open else "real", config.now)
        self.seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
        self.fill_delay = config.fill_delay
        self._lock = threading.RLock()
        self._book = self._new_book(config.cash)
        self.events = EventHub()  # every order change, as the trade_updates stream reports it

    def _new_book(self, cash: Decimal) -> _Book:
        now = self.clock.now()
        prices = PriceBook(self.seed, start=now, step_seconds=self.config.step_seconds,
                           volatility=self.config.volatility)
        for symbol in self.config.symbols:
            if check_symbol(symbol):
                prices.walk(symbol, now)
        ids = random.Random(f"{self.seed}:ids")
        account_id = str(uuid.UUID(int=ids.getrandbits(128), version=4))
        return _Book(prices=prices, cash=cash, last_equity=cash, created_at=now, account_id=account_id, ids=ids)

    # --- administration -------------------------------------------------------------------
    def reset(self, cash: Decimal | None = None) -> None:
        """Forget every order, position and pin; cash back to the start (or `cash`); the walk
        restarts from step 0 with the same seed; the clock mode goes back to the configured one."""
        with self._lock:
            self.clock.mode = "open" if self.config.always_open else "real"
            self.fill_delay = self.config.fill_delay
            self._book = self._new_book(self.config.cash if cash is None else Decimal(str(cash)))

    @property
    def prices(self) -> PriceBook:
        return self._book.prices

    def set_price(self, symbol: str, price: Any, *, spread: Any = None, bid_size: Any = None,
                  ask_size: Any = None) -> dict[str, Any]:
        """Pin `symbol`'s quote around `price` (None unpins); returns the quote now in force."""
        with self._lock:
            checked = check_symbol(symbol)
            if checked is None:
                raise BrokerError(400, f"not a symbol: {symbol!r}")
            now = self.clock.now()
            pin = None if price is None else Pin(
                price=_positive(price, "price"),
                spread=None if spread is None else _positive(spread, "spread", allow_zero=True),
                bid_size=None if bid_size is None else _size(bid_size, "bid_size"),
                ask_size=None if ask_size is None else _size(ask_size, "ask_size"))
            if pin is not None and decimals_of(pin.price) > decimals_of(tick_size(pin.price)):
                raise BrokerError(400, "price has a sub-penny increment")
            quote = self.prices.pin(checked, pin, now)
            self._tick(now)  # resting orders react to the new price at once
            return {"symbol": checked, "pinned": pin is not None, "quote": quote.to_json()}

    def order_counts(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for order in self._book.orders.values():
                counts[order.status] = counts.get(order.status, 0) + 1
            return counts

    # --- account and positions -------------------------------------------------------------
    def account(self) -> dict[str, Any]:
        with self._lock:
            now = self._sync()
            book = self._book
            long_value = sum((h.qty * self._last_price(h.symbol, now) for h in book.holdings.values()), Decimal(0))
            equity = book.cash + long_value
            buying_power = max(Decimal(0), book.cash - self._buy_holds())
            money = lambda d: fmt(d, 2)  # noqa: E731
            return {
                "id": book.account_id,
                "account_number": f"PA{book.account_id.replace('-', '')[:10].upper()}",
                "status": "ACTIVE",
                "crypto_status": "INACTIVE",
                "currency": "USD",
                "buying_power": money(buying_power),
                "regt_buying_power": money(buying_power),
                "non_marginable_buying_power": money(buying_power),
                "effective_buying_power": money(buying_power),
                "options_buying_power": money(buying_power),
                "cash": money(book.cash),
                "accrued_fees": "0",
                "portfolio_value": money(equity),
                "equity": money(equity),
                "last_equity": money(book.last_equity),
                "long_market_value": money(long_value),
                "short_market_value": "0",
                "position_market_value": money(long_value),
                "initial_margin": money(long_value),
                "maintenance_margin": money(long_value),
                "last_maintenance_margin": "0",
                "sma": "0",
                "multiplier": "1",
                "trading_blocked": False,
                "transfers_blocked": False,
                "account_blocked": False,
                "trade_suspended_by_user": False,
                "shorting_enabled": False,
                "options_approved_level": 0,
                "options_trading_level": 0,
                "created_at": rfc3339(book.created_at),
                "balance_asof": now.date().isoformat(),
            }

    def positions(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self._sync()
            return [self._position_json(h, now) for _, h in sorted(self._book.holdings.items())]

    def position(self, symbol_or_id: str) -> dict[str, Any]:
        with self._lock:
            now = self._sync()
            holding = self._find_holding(symbol_or_id)
            if holding is None:
                raise BrokerError(404, "position does not exist", CODE_NOT_FOUND)
            return self._position_json(holding, now)

    def close_position(self, symbol_or_id: str, qty: Any = None, percentage: Any = None) -> dict[str, Any]:
        """DELETE /v2/positions/{symbol}: a market sell (day) of all, `qty` or `percentage` %."""
        with self._lock:
            self._sync()
            holding = self._find_holding(symbol_or_id)
            if holding is None:
                raise BrokerError(404, "position does not exist", CODE_NOT_FOUND)
            amount = holding.qty
            if qty not in (None, "") and percentage not in (None, ""):
                raise invalid("qty and percentage cannot both be specified")
            if qty not in (None, ""):
                amount = _positive(qty, "qty", error=invalid)
            elif percentage not in (None, ""):
                share = _positive(percentage, "percentage", error=invalid)
                if share > 100:
                    raise invalid("percentage must be <= 100")
                amount = (holding.qty * share / 100).quantize(QTY_STEP, ROUND_DOWN)
            body = {"symbol": holding.symbol, "side": "sell", "type": "market", "time_in_force": "day",
                    "qty": fmt(amount), "position_intent": "sell_to_close"}
            return self.submit(body)

    # --- orders ----------------------------------------------------------------------------
    def submit(self, body: Any) -> dict[str, Any]:
        """POST /v2/orders. Returns the Order JSON (200) or raises BrokerError."""
        ticket = parse_ticket(body)
        with self._lock:
            now = self._sync()
            book = self._book
            if ticket.client_order_id is not None and ticket.client_order_id in book.by_client_id:
                raise invalid("client_order_id must be unique")
            quote = self.prices.quote(ticket.symbol, now)
            hold_price, sell_hold_qty = self._check_funds(ticket, quote)
            order = self._new_order(ticket, now, hold_price, sell_hold_qty)
            book.add(order)
            self._publish(order, now)
            log.debug("order %s %s %s %s", order.id, order.side, order.symbol, order.client_order_id)
            self._work(order, now, self.clock.is_open(now))
            return order.to_json()

    def get_order(self, order_id: str) -> dict[str, Any]:
        with self._lock:
            self._sync()
            return self._order(order_id).to_json()

    def get_order_by_client_id(self, client_order_id: str) -> dict[str, Any]:
        with self._lock:
            self._sync()
            order_id = self._book.by_client_id.get(client_order_id)
            if order_id is None:
                raise BrokerError(404, "order not found", CODE_NOT_FOUND)
            return self._book.orders[order_id].to_json()

    def list_orders(self, query: OrderQuery) -> list[dict[str, Any]]:
        with self._lock:
            self._sync()
            picked = [o for o in self._book.orders.values() if self._matches(o, query)]
            picked.sort(key=lambda o: (o.created_at, o.seq), reverse=query.direction == "desc")
            return [o.to_json() for o in picked[: query.limit]]

    def cancel(self, order_id: str) -> None:
        """DELETE /v2/orders/{id}: cancels at once (204); 422 when no longer cancelable."""
        with self._lock:
            now = self._sync()
            order = self._order(order_id)
            if not order.is_open:
                raise BrokerError(422, f'order is already in "{order.status}" state', CODE_UNPROCESSABLE)
            self._cancel(order, now)

    def cancel_all(self) -> list[dict[str, Any]]:
        """DELETE /v2/orders: 207 body, one entry per open order."""
        with self._lock:
            now = self._sync()
            results = []
            for order in list(self._book.open_orders.values()):  # oldest first, like by seq
                self._cancel(order, now)
                results.append({"id": order.id, "status": 200, "body": order.to_json()})
            return results

    # --- assets, clock, market data ------------------------------------------------------------
    def asset(self, symbol_or_id: str) -> dict[str, Any]:
        symbol = check_symbol(symbol_or_id)
        if symbol is None:
            raise BrokerError(404, f"asset not found for {symbol_or_id}", CODE_NOT_FOUND)
        return {
            "id": asset_id(symbol), "class": "us_equity", "exchange": "NASDAQ", "symbol": symbol,
            "name": f"{symbol} (paper broker)", "status": "active", "tradable": True, "marginable": True,
            "maintenance_margin_requirement": 100, "margin_requirement_long": "100",
            "margin_requirement_short": "100", "shortable": False, "easy_to_borrow": False,
            "fractionable": True, "attributes": ["fractional_eh_enabled"],
        }

    def clock_json(self) -> dict[str, Any]:
        with self._lock:
            now = self._sync()
            return self.clock.state(now).to_json()

    def market_data(self, symbols: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Snapshot JSON per valid symbol (invalid ones are simply absent, as at Alpaca)."""
        with self._lock:
            now = self._sync()
            out: dict[str, dict[str, Any]] = {}
            for raw in symbols:
                symbol = check_symbol(raw)
                if symbol is not None and symbol not in out:
                    out[symbol] = self.prices.walk(symbol, now).snapshot_json()
            return out

    def quote(self, symbol: str) -> Quote:
        with self._lock:
            return self.prices.quote(symbol, self._sync())

    def tick(self) -> None:
        """Work the book now (the stream's ticker: fills and expiries happen without a request)."""
        with self._lock:
            self._sync()

    def next_due(self, resting: float = 0.25) -> float | None:
        """Seconds until an open order next needs working: the end of its fill delay, its expiry,
        or for an order already live (a resting limit) ``resting`` seconds, when its price may
        have moved. None when no order is open."""
        with self._lock:
            now = self.clock.now()
            due: float | None = None
            for order in self._book.open_orders.values():
                seconds = (order.live_at - now).total_seconds()
                seconds = resting if seconds <= 0 else min(seconds, resting)
                if order.expires_at is not None:
                    seconds = min(seconds, max(0.0, (order.expires_at - now).total_seconds()))
                due = seconds if due is None else min(due, seconds)
            return due

    # --- internals ---------------------------------------------------------------------------
    def _touch(self, order: PaperOrder, now: datetime, status: str, execution: dict[str, str] | None = None) -> None:
        self._book.touch(order, now, status)
        self._publish(order, now, execution)

    def _publish(self, order: PaperOrder, now: datetime, execution: dict[str, str] | None = None) -> None:
        self.events.publish(TradeEvent(EVENT_OF_STATUS.get(order.status, order.status), order.to_json(),
                                       rfc3339(now), execution or {}))

    def _sync(self) -> datetime:
        now = self.clock.now()
        self._tick(now)
        return now

    def _tick(self, now: datetime) -> None:
        open_now = self.clock.is_open(now)
        for order in list(self._book.open_orders.values()):  # a copy: working an order may close it
            self._work(order, now, open_now)

    def _work(self, order: PaperOrder, now: datetime, open_now: bool) -> None:
        if not order.is_open:
            return
        if order.expires_at is not None and now >= order.expires_at:
            order.expired_at = now
            self._touch(order, now, "expired")
            return
        if not open_now:
            return
        if order.status == "accepted":
            self._touch(order, now, "new")
        if now >= order.live_at:
            self._execute(order, now)

    def _execute(self, order: PaperOrder, now: datetime) -> None:
        quote = self.prices.quote(order.symbol, now)
        buy = order.side == "buy"
        price = quote.ask if buy else quote.bid
        if order.type == "limit":
            assert order.limit_price is not None
            marketable = price <= order.limit_price if buy else price >= order.limit_price
            if not marketable:
                if order.time_in_force == "ioc":
                    self._cancel(order, now)
                return
        wanted = order.remaining_qty(price)
        qty = wanted
        if order.time_in_force == "ioc":
            qty = min(qty, Decimal(quote.ask_size if buy else quote.bid_size))
        if buy:
            qty = min(qty, self._affordable(order, price))
        else:
            holding = self._book.holdings.get(order.symbol)
            qty = min(qty, holding.qty if holding else Decimal(0))
        if qty > 0:
            self._fill(order, qty, price, now)
        if qty < wanted and order.is_open:
            # IOC rest, or a fill cut short by cash/shares: the remainder is canceled
            self._cancel(order, now)

    def _affordable(self, order: PaperOrder, price: Decimal) -> Decimal:
        free = self._book.cash - (self._buy_holds() - order.buy_hold())
        if free <= 0:
            return Decimal(0)
        step = Decimal(1) if order.whole_shares else QTY_STEP
        return (free / price).quantize(step, ROUND_DOWN)

    def _fill(self, order: PaperOrder, qty: Decimal, price: Decimal, now: datetime) -> None:
        book = self._book
        cost = qty * price
        cash_change = cost.quantize(CENT, ROUND_HALF_UP)
        holding = book.holdings.setdefault(order.symbol, Holding(order.symbol))
        if order.side == "buy":
            book.cash -= cash_change
            holding.qty += qty
            holding.cost_basis += cost
        else:
            book.cash += cash_change
            holding.cost_basis -= holding.avg_entry_price * qty
            holding.qty -= qty
        if holding.qty <= 0:
            del book.holdings[order.symbol]  # a flat position disappears
        order.filled_qty += qty
        order.filled_cost += cost
        order.filled_at = now
        done = order.notional is not None or order.filled_qty >= (order.qty or 0)
        execution = {"price": str(fmt(price)), "qty": str(fmt(qty)), "position_qty": str(fmt(holding.qty)),
                     "execution_id": str(uuid.uuid4())}
        self._touch(order, now, "filled" if done else "partially_filled", execution)
        log.debug("fill %s %s %s @ %s", order.id, order.side, qty, price)

    def _cancel(self, order: PaperOrder, now: datetime) -> None:
        order.canceled_at = now
        self._touch(order, now, "canceled")

    # closed orders hold nothing (buy_hold/sell_hold are 0 for them): only open ones are summed
    def _buy_holds(self) -> Decimal:
        return sum((o.buy_hold() for o in self._book.open_orders.values()), Decimal(0))

    def _sell_holds(self, symbol: str) -> Decimal:
        return sum((o.sell_hold() for o in self._book.open_orders.values() if o.symbol == symbol), Decimal(0))

    def _check_funds(self, ticket: Ticket, quote: Quote) -> tuple[Decimal, Decimal]:
        """403s for buying power / shares; returns (hold price, sell hold qty)."""
        if ticket.side == "buy":
            price = ticket.limit_price if ticket.limit_price is not None else quote.ask
            cost = ticket.notional if ticket.notional is not None else ticket.qty * price  # type: ignore[operator]
            if ticket.fractional and cost < 1:
                raise BrokerError(403, "cost basis must be >= 1", CODE_FORBIDDEN)
            buying_power = self._book.cash - self._buy_holds()
            if cost > buying_power:
                raise BrokerError(403, "insufficient buying power", CODE_FORBIDDEN,
                                  buying_power=fmt(max(buying_power, Decimal(0)), 2), cost_basis=fmt(cost, 2))
            return price, Decimal(0)
        requested = ticket.qty if ticket.qty is not None else \
            (ticket.notional / quote.bid).quantize(QTY_STEP, ROUND_DOWN)  # type: ignore[operator]
        holding = self._book.holdings.get(ticket.symbol)
        existing = holding.qty if holding else Decimal(0)
        held = self._sell_holds(ticket.symbol)
        available = existing - held
        if requested > available:
            raise BrokerError(
                403, f"insufficient qty available for order (requested: {fmt(requested)}, available: {fmt(available)})",
                CODE_FORBIDDEN, available=fmt(available), existing_qty=fmt(existing),
                held_for_orders=fmt(held), symbol=ticket.symbol)
        return quote.bid, requested

    def _new_order(self, ticket: Ticket, now: datetime, hold_price: Decimal, sell_hold_qty: Decimal) -> PaperOrder:
        ids = self._book.ids
        order_id = str(uuid.UUID(int=ids.getrandbits(128), version=4))
        client_order_id = ticket.client_order_id or str(uuid.UUID(int=ids.getrandbits(128), version=4))
        expires_at = self.clock.day_order_expiry(now) if ticket.time_in_force == "day" else None
        return PaperOrder(
            id=order_id, client_order_id=client_order_id, symbol=ticket.symbol, side=ticket.side,
            type=ticket.type, time_in_force=ticket.time_in_force, qty=ticket.qty, notional=ticket.notional,
            limit_price=ticket.limit_price, extended_hours=ticket.extended_hours,
            position_intent=ticket.position_intent or ("buy_to_open" if ticket.side == "buy" else "sell_to_close"),
            created_at=now, live_at=now + timedelta(seconds=self.fill_delay), expires_at=expires_at,
            hold_price=hold_price, sell_hold_qty=sell_hold_qty, seq=len(self._book.orders), updated_at=now)

    def _order(self, order_id: str) -> PaperOrder:
        try:
            uuid.UUID(order_id)
        except ValueError:
            raise invalid("order_id is not a valid UUID") from None
        order = self._book.orders.get(order_id)
        if order is None:
            raise BrokerError(404, "order not found", CODE_NOT_FOUND)
        return order

    def _matches(self, order: PaperOrder, q: OrderQuery) -> bool:
        if (q.status == "open" and not order.is_open) or (q.status == "closed" and order.is_open):
            return False
        if q.after is not None and not order.created_at > q.after:
            return False
        if q.until is not None and not order.created_at < q.until:
            return False
        if q.symbols and order.symbol not in q.symbols:
            return False
        return q.side is None or order.side == q.side

    def _find_holding(self, symbol_or_id: str) -> Holding | None:
        symbol = check_symbol(symbol_or_id)
        if symbol is not None:
            return self._book.holdings.get(symbol)
        for holding in self._book.holdings.values():
            if asset_id(holding.symbol) == symbol_or_id:
                return holding
        return None

    def _last_price(self, symbol: str, now: datetime) -> Decimal:
        return self.prices.walk(symbol, now).last_trade.price

    def _position_json(self, holding: Holding, now: datetime) -> dict[str, Any]:
        walk = self.prices.walk(holding.symbol, now)
        current = walk.last_trade.price
        lastday = walk.prev_daily.c
        market_value = holding.qty * current
        unrealized = market_value - holding.cost_basis
        intraday = (current - lastday) * holding.qty
        ratio = lambda num, den: fmt(num / den, 6) if den else "0"  # noqa: E731
        return {
            "asset_id": asset_id(holding.symbol),
            "symbol": holding.symbol,
            "exchange": "NASDAQ",
            "asset_class": "us_equity",
            "asset_marginable": True,
            "qty": fmt(holding.qty),
            "qty_available": fmt(holding.qty - self._sell_holds(holding.symbol)),
            "side": "long",
            "avg_entry_price": fmt(holding.avg_entry_price, 6),
            "market_value": fmt(market_value, 2),
            "cost_basis": fmt(holding.cost_basis, 2),
            "current_price": fmt(current),
            "lastday_price": fmt(lastday),
            "change_today": ratio(current - lastday, lastday),
            "unrealized_pl": fmt(unrealized, 2),
            "unrealized_plpc": ratio(unrealized, holding.cost_basis),
            "unrealized_intraday_pl": fmt(intraday, 2),
            "unrealized_intraday_plpc": ratio(intraday, lastday * holding.qty),
        }


def _positive(raw: Any, name: str, allow_zero: bool = False, error: Any = None) -> Decimal:
    make_error = error or (lambda message: BrokerError(400, message))
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise make_error(f"{name} must be a number, got {raw!r}") from None
    if not value.is_finite() or value < 0 or (value == 0 and not allow_zero) or isinstance(raw, bool):
        raise make_error(f"{name} must be a number > 0, got {raw!r}")
    return value


def _size(raw: Any, name: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise BrokerError(400, f"{name} must be an integer >= 0, got {raw!r}")
    return raw
