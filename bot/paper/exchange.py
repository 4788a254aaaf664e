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
- stop/stop_limit/trailing_stop trigger on the last trade (sampled at each tick), then act as
  market/limit orders; bracket/oto legs are `held` until the entry fills, a fill of one bracket/oco
  exit cancels the other; fok fills all at once or cancels; opg/cls execute once at the first tick
  at/after the open/close (at once in the always-open mode), the rest is canceled;
- cash account (multiplier 1), long only: no shorting, no margin.
"""
from __future__ import annotations

import logging
import random
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from bot.paper import PaperConfig
from bot.paper.assets import AssetTable
from bot.paper.clock import NEW_YORK, MarketClock
from bot.paper.events import EVENT_OF_STATUS, EventHub, TradeEvent
from bot.paper.orders import (
    AUCTION_TIF,
    CODE_BAD_BODY,
    CODE_FORBIDDEN,
    CODE_INVALID,
    CODE_NOT_FOUND,
    CODE_UNAUTHORIZED,
    CODE_UNPROCESSABLE,
    QTY_STEP,
    STOP_TYPES,
    TERMINAL,
    BrokerError,
    Ticket,
    asset_id,
    check_prices,
    check_stop_side,
    check_symbol,
    decimals_of,
    fmt,
    invalid,
    parse_ticket,
    replacement_body,
    to_tick,
    unprocessable,
)
from bot.paper.prices import CENT, Pin, PriceBook, Quote, rfc3339, tick_size

# re-exported: app.py and tests import these from here
__all__ = ["CODE_BAD_BODY", "CODE_FORBIDDEN", "CODE_INVALID", "CODE_NOT_FOUND", "CODE_UNAUTHORIZED",
           "CODE_UNPROCESSABLE", "BrokerError", "Exchange", "OrderQuery", "PaperOrder", "Ticket", "parse_ticket"]

log = logging.getLogger(__name__)

GTC_LIFETIME = timedelta(days=90)  # Alpaca cancels GTC orders 90 days after they were placed

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
    expires_at: datetime | None  # when the book expires it: day orders at their session's close
    shown_expiry: datetime  # the JSON's expires_at (never null): also shown where nothing expires
    hold_price: Decimal  # buys: price the buying-power hold is valued at
    sell_hold_qty: Decimal  # sells: shares held for the order
    seq: int
    status: str = "accepted"
    stop_price: Decimal | None = None  # trailing stops: recomputed from hwm as the price moves
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    hwm: Decimal | None = None  # trailing stops: best price seen (sells the highest, buys the lowest)
    triggered: bool = False  # a stop order whose stop was crossed: now a market or limit order
    auction_at: datetime | None = None  # opg/cls: the open/close it executes at, once
    order_class: str = ""  # "" for simple, as Alpaca shows it
    parent_id: str | None = None  # a leg: its bracket/oco/oto parent
    leg_ids: list[str] = field(default_factory=list)
    holds: bool = True  # False for the stop-loss leg: it shares the take-profit's shares/cash hold
    replaced_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
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
        """Buying power this open buy order reserves (a held leg reserves nothing yet)."""
        if self.side != "buy" or not self.is_open or not self.holds or self.status == "held":
            return Decimal(0)
        if self.notional is not None:
            return Decimal(0) if self.filled_qty else self.notional
        assert self.qty is not None
        return (self.qty - self.filled_qty) * self.hold_price

    def sell_hold(self) -> Decimal:
        if self.side != "sell" or not self.is_open or not self.holds or self.status == "held":
            return Decimal(0)
        return max(Decimal(0), self.sell_hold_qty - self.filled_qty)

    def touch(self, now: datetime, status: str | None = None) -> None:
        # the exchange calls _Book.touch, which also keeps the book's open_orders in step
        if status is not None:
            self.status = status
        self.updated_at = now

    def request_body(self) -> dict[str, Any]:
        """The POST body that would place this order again (as a simple order): a replace starts
        from it."""
        return {"symbol": self.symbol, "side": self.side, "type": self.type, "time_in_force": self.time_in_force,
                "qty": fmt(self.qty), "notional": fmt(self.notional), "limit_price": fmt(self.limit_price),
                "stop_price": fmt(self.stop_price) if self.type != "trailing_stop" else None,
                "trail_price": fmt(self.trail_price), "trail_percent": fmt(self.trail_percent),
                "extended_hours": self.extended_hours, "position_intent": self.position_intent}

    def to_json(self, legs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
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
            "replaced_at": t(self.replaced_at),
            "replaced_by": self.replaced_by,
            "replaces": self.replaces,
            "asset_id": asset_id(self.symbol),
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": fmt(self.notional),
            "qty": fmt(self.qty),
            "filled_qty": fmt(self.filled_qty),
            "filled_avg_price": fmt(self.filled_avg_price),
            "order_class": self.order_class,
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "position_intent": self.position_intent,
            "time_in_force": self.time_in_force,
            "limit_price": fmt(self.limit_price),
            "stop_price": fmt(self.stop_price),
            "status": self.status,
            "extended_hours": self.extended_hours,
            "legs": legs,
            "trail_percent": fmt(self.trail_percent),
            "trail_price": fmt(self.trail_price),
            "hwm": fmt(self.hwm),
            "subtag": None,
            "source": None,
            "expires_at": t(self.shown_expiry),
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
    after_order_id: str | None = None  # cursors: submitted after/before that order (exclusive)
    before_order_id: str | None = None
    nested: bool = False  # legs rolled up under their parent's "legs", not listed on their own


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

    def __init__(self, config: PaperConfig, clock: MarketClock | None = None,
                 prices: Callable[[], PriceBook] | None = None) -> None:
        self.config = config
        self.clock = clock or MarketClock("open" if config.always_open else "real", config.now)
        # the price source of each book: the seeded walk, or a replay's recorded ticks (bot.paper.replay)
        self._price_source = prices
        self.seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
        self.assets = AssetTable.build(config.assets_csv, config.symbols)
        self.fill_delay = config.fill_delay
        self._lock = threading.RLock()
        self._book = self._new_book(config.cash)
        self.events = EventHub()  # every order change, as the trade_updates stream reports it

    def _new_book(self, cash: Decimal) -> _Book:
        now = self.clock.now()
        prices = self._price_source() if self._price_source else PriceBook(
            self.seed, start=now, step_seconds=self.config.step_seconds, volatility=self.config.volatility)
        for symbol in self.config.symbols:
            if check_symbol(symbol) and prices.has(symbol):
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
        """POST /v2/orders. Returns the Order JSON (200; an advanced order with its legs) or raises
        BrokerError."""
        ticket = parse_ticket(body)
        self._check_asset(ticket.symbol)
        with self._lock:
            now = self._sync()
            book = self._book
            self._check_new_client_id(ticket.client_order_id)
            check_prices(ticket, self._last_price(ticket.symbol, now))
            self._check_auction_window(ticket, now)
            hold_price, sell_hold_qty = self._check_funds(ticket, self.prices.quote(ticket.symbol, now))
            order = self._new_order(ticket, now, hold_price, sell_hold_qty)
            book.add(order)
            self._add_legs(order, ticket, now)
            self._publish(order, now)
            log.debug("order %s %s %s %s", order.id, order.side, order.symbol, order.client_order_id)
            self._work(order, now, self.clock.is_open(now))
            return self._json(order, nested=bool(order.leg_ids))

    def _check_asset(self, symbol: str) -> None:
        """Only listed, tradable assets take orders (the asset table: the defaults, the
        --assets-csv rows and the configured symbols), as at Alpaca; QQQQQ is no asset."""
        try:
            asset = self.assets.find(symbol)
        except BrokerError:
            raise BrokerError(422, f'asset "{symbol}" not found', CODE_INVALID) from None
        if not asset.tradable or asset.status != "active":
            raise BrokerError(422, f"asset {symbol} is not tradable", CODE_INVALID)

    def get_order(self, order_id: str, nested: bool = False) -> dict[str, Any]:
        with self._lock:
            self._sync()
            return self._json(self._order(order_id), nested)

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
            cursor = self._cursor(query)
            picked = [o for o in self._book.orders.values() if self._matches(o, query)]
            if query.nested:  # legs show under their parent only
                picked = [o for o in picked if o.parent_id is None]
            if cursor is not None:
                after = query.after_order_id is not None
                picked = [o for o in picked if ((o.created_at, o.seq) > cursor) == after and
                          (o.created_at, o.seq) != cursor]
            picked.sort(key=lambda o: (o.created_at, o.seq), reverse=query.direction == "desc")
            return [self._json(o, query.nested) for o in picked[: query.limit]]

    def cancel(self, order_id: str) -> None:
        """DELETE /v2/orders/{id}: cancels at once (204), a parent with its legs; 422 when no
        longer cancelable."""
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
                if order.is_open:  # a leg may have gone with its parent already
                    self._cancel(order, now)
                results.append({"id": order.id, "status": 200, "body": order.to_json()})
            return results

    def replace(self, order_id: str, body: Any) -> dict[str, Any]:
        """PATCH /v2/orders/{id}: a new order takes the open one's place (old: "replaced", with
        replaced_by; new: replaces). 422 for closed, not yet live, or notional orders."""
        with self._lock:
            now = self._sync()
            old = self._order(order_id)
            self._check_replaceable(old)
            ticket = parse_ticket(self._replacement_request(old, body))
            if old.qty is not None and old.qty % 1 != 0 and ticket.qty != old.qty:
                raise unprocessable("qty of fractional orders cannot be changed")
            self._check_new_client_id(ticket.client_order_id)
            if ticket.type in ("stop", "stop_limit") and not old.triggered:
                assert ticket.stop_price is not None
                check_stop_side(ticket.side, ticket.stop_price, self._last_price(ticket.symbol, now))
            if old.parent_id is not None or old.status == "held":
                hold_price, sell_hold_qty = self._leg_holds(ticket)  # exits of a position: no account check
            else:
                hold_price, sell_hold_qty = self._check_funds(ticket, self.prices.quote(ticket.symbol, now), old)
            new = self._new_order(ticket, now, hold_price, sell_hold_qty)
            self._carry_over(old, new, now)
            self._book.add(new)
            old.replaced_at, old.replaced_by, new.replaces = now, new.id, old.id
            self._touch(old, now, "replaced")
            if new.status != "held":
                self._publish(new, now)
            self._work(new, now, self.clock.is_open(now))
            return self._json(new, nested=bool(new.leg_ids))

    def close_all_positions(self, cancel_orders: bool = False) -> list[dict[str, Any]]:
        """DELETE /v2/positions: a market sell per position (cancel_orders: every open order is
        canceled first, which frees the shares they held); 207 body, one entry per symbol."""
        with self._lock:
            if cancel_orders:
                self.cancel_all()
            self._sync()
            results = []
            for symbol in sorted(self._book.holdings):  # a copy: a fill may remove the holding
                try:
                    status, body = 200, self.close_position(symbol)
                except BrokerError as error:
                    status, body = error.status, error.body()
                results.append({"symbol": symbol, "status": status, "body": body})
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
        """Snapshot JSON per listed symbol (unknown ones are simply absent, as at Alpaca)."""
        with self._lock:
            now = self._sync()
            out: dict[str, dict[str, Any]] = {}
            for raw in symbols:
                symbol = check_symbol(raw)
                if symbol is not None and symbol not in out and self.assets.has(symbol) and self.prices.has(symbol):
                    out[symbol] = self.prices.walk(symbol, now).snapshot_json()
            return out

    def quote(self, symbol: str) -> Quote:
        with self._lock:
            return self.prices.quote(symbol, self._sync())

    def expire_day_orders(self) -> int:
        """Expire every open day order now: a replay's market time has passed a session close (its
        clock never expires them by wall time). How many expired."""
        with self._lock:
            now = self.clock.now()
            expired = 0
            for order in list(self._book.open_orders.values()):
                if order.is_open and order.status != "held" and order.time_in_force == "day":
                    order.expired_at = now
                    self._touch(order, now, "expired")
                    self._close_legs(order, now)
                    expired += 1
            return expired

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
                if order.status == "held":
                    continue  # a leg waiting for its parent: the parent's fill wakes it
                seconds = (order.live_at - now).total_seconds()
                seconds = resting if seconds <= 0 else min(seconds, resting)
                if order.auction_at is not None:
                    seconds = min(seconds, max(0.0, (order.auction_at - now).total_seconds()))
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
        if not order.is_open or order.status == "held":
            return
        if order.auction_at is not None:
            if now >= order.auction_at:
                self._auction(order, now)
            return
        if order.expires_at is not None and now >= order.expires_at:
            order.expired_at = now
            self._touch(order, now, "expired")
            self._close_legs(order, now)
            return
        if not open_now:
            return
        if order.status == "accepted":
            self._touch(order, now, "new")
        if now >= order.live_at:
            self._execute(order, now)

    def _auction(self, order: PaperOrder, now: datetime) -> None:
        """An opg/cls order executes once, in full or not at all, at the quote when the book is first
        worked at or after its open/close (the paper exchange has no auction price); any rest is
        canceled, as Alpaca cancels what the auction did not fill."""
        if order.status == "accepted":
            self._touch(order, now, "new")
        self._execute(order, now)
        if order.is_open:
            self._cancel(order, now)

    def _execute(self, order: PaperOrder, now: datetime) -> None:
        if order.type in STOP_TYPES and not order.triggered:
            if not self._stop_crossed(order, now):
                return
            order.triggered = True  # from here a stop is a market order, a stop_limit a limit order
            log.debug("stop %s triggered at %s", order.id, order.stop_price)
        quote = self.prices.quote(order.symbol, now)
        buy = order.side == "buy"
        price = quote.ask if buy else quote.bid
        immediate = order.time_in_force in ("ioc", "fok")
        if order.limit_price is not None:
            marketable = price <= order.limit_price if buy else price >= order.limit_price
            if not marketable:
                if immediate:
                    self._cancel(order, now)
                return
        wanted = order.remaining_qty(price)
        qty = wanted
        if immediate:
            qty = min(qty, Decimal(quote.ask_size if buy else quote.bid_size))
        if buy:
            qty = min(qty, self._affordable(order, price))
        else:
            holding = self._book.holdings.get(order.symbol)
            qty = min(qty, holding.qty if holding else Decimal(0))
        if order.time_in_force == "fok" and qty < wanted:
            self._cancel(order, now)  # fill or kill: the whole qty at once, or nothing
            return
        if qty > 0:
            self._fill(order, qty, price, now)
        if qty < wanted and order.is_open:
            # IOC rest, or a fill cut short by cash/shares: the remainder is canceled
            self._cancel(order, now)

    def _stop_crossed(self, order: PaperOrder, now: datetime) -> bool:
        """Stops trigger on the last trade (as Alpaca's do): a buy at or above its stop, a sell at
        or below. A trailing stop first follows the price."""
        last = self._last_price(order.symbol, now)
        if order.type == "trailing_stop":
            self._trail(order, last)
        assert order.stop_price is not None
        return last >= order.stop_price if order.side == "buy" else last <= order.stop_price

    @staticmethod
    def _trail(order: PaperOrder, last: Decimal) -> None:
        """Alpaca's trailing stop: hwm is the highest (a buy: lowest) price since submission, the
        stop trails it by trail_price dollars or trail_percent percent. Seen at each tick, so a
        swing between two ticks is missed (the walk is sampled, not streamed)."""
        buy = order.side == "buy"
        if order.hwm is None or (last < order.hwm if buy else last > order.hwm):
            order.hwm = last
        if order.trail_price is not None:
            offset = order.trail_price
        else:
            assert order.trail_percent is not None
            offset = order.hwm * order.trail_percent / 100
        order.stop_price = to_tick(order.hwm + offset if buy else order.hwm - offset)

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
        if done and order.parent_id is None and order.order_class in ("bracket", "oto"):
            self._activate_legs(order, now)
        self._one_cancels_other(order, now)

    def _cancel(self, order: PaperOrder, now: datetime) -> None:
        order.canceled_at = now
        self._touch(order, now, "canceled")
        self._close_legs(order, now)

    # --- order classes: bracket, oco, oto --------------------------------------------------------
    def _legs(self, order: PaperOrder) -> list[PaperOrder]:
        return [self._book.orders[leg_id] for leg_id in order.leg_ids]

    def _add_legs(self, parent: PaperOrder, ticket: Ticket, now: datetime) -> None:
        """The exits of an advanced order, as orders of their own. Bracket/oto legs are "held" until
        the entry fills; an OCO's stop leg works beside the OCO's own limit from the start."""
        if ticket.order_class == "simple":
            return
        exit_side = ticket.exit_side
        base = replace(ticket, side=exit_side, type="limit", limit_price=None, stop_price=None, trail_price=None,
                       trail_percent=None, order_class="simple", take_profit=None, stop_loss=None,
                       client_order_id=None, position_intent=f"{exit_side}_to_close")
        legs = []
        if ticket.take_profit is not None and ticket.order_class != "oco":
            legs.append((replace(base, limit_price=ticket.take_profit), True))
        if ticket.stop_loss is not None:
            stop = ticket.stop_loss
            # the stop-loss shares the take-profit's hold: only one of them can ever fill
            legs.append((replace(base, type="stop" if stop.limit_price is None else "stop_limit",
                                 stop_price=stop.stop_price, limit_price=stop.limit_price),
                         ticket.order_class == "oto"))
        for leg_ticket, holds in legs:
            leg = self._new_order(leg_ticket, now, *self._leg_holds(leg_ticket))
            leg.order_class, leg.parent_id, leg.holds = parent.order_class, parent.id, holds
            if ticket.order_class != "oco":
                leg.status = "held"
            self._book.add(leg)
            parent.leg_ids.append(leg.id)

    @staticmethod
    def _leg_holds(ticket: Ticket) -> tuple[Decimal, Decimal]:
        price = ticket.limit_price or ticket.stop_price or Decimal(0)
        return price, ticket.qty if ticket.side == "sell" and ticket.qty is not None else Decimal(0)

    def _activate_legs(self, parent: PaperOrder, now: datetime) -> None:
        for leg in self._legs(parent):
            if leg.status == "held":
                leg.live_at = now
                self._touch(leg, now, "new")

    def _one_cancels_other(self, order: PaperOrder, now: datetime) -> None:
        """A fill of one exit of a bracket/oco cancels the other exit (a bracket's entry is no exit)."""
        if order.order_class not in ("bracket", "oco") or (order.parent_id is None and order.order_class == "bracket"):
            return
        root = self._book.orders[order.parent_id] if order.parent_id else order
        exits = self._legs(root) + ([root] if root.order_class == "oco" else [])
        for other in exits:
            if other is not order and other.is_open:
                other.canceled_at = now
                self._touch(other, now, "canceled")

    def _close_legs(self, order: PaperOrder, now: datetime) -> None:
        """A parent that ends without filling (canceled, expired) takes its open legs with it."""
        for leg in self._legs(order):
            if leg.is_open:
                self._cancel(leg, now)

    # --- replace ---------------------------------------------------------------------------------
    @staticmethod
    def _check_replaceable(order: PaperOrder) -> None:
        if not order.is_open:
            raise unprocessable(f'order is already in "{order.status}" state')
        if order.status in ("accepted", "pending_new", "pending_cancel", "pending_replace"):
            raise unprocessable(f'order is not replaceable in "{order.status}" state')
        if order.notional is not None:
            raise unprocessable("notional orders cannot be replaced")

    @staticmethod
    def _replacement_request(old: PaperOrder, body: Any) -> dict[str, Any]:
        trail_field = None
        if old.type == "trailing_stop":
            trail_field = "trail_price" if old.trail_price is not None else "trail_percent"
        merged = replacement_body(old.request_body(), body, trail_field)
        if old.filled_qty and merged["qty"] == fmt(old.qty):
            merged["qty"] = fmt(old.remaining_qty(Decimal(1)))  # by default the new order works the rest
        return merged

    def _carry_over(self, old: PaperOrder, new: PaperOrder, now: datetime) -> None:
        """What the replacing order inherits: its place in a bracket/oco/oto, a held leg's waiting,
        a triggered stop's trigger, a trailing stop's hwm."""
        new.order_class, new.parent_id, new.holds = old.order_class, old.parent_id, old.holds
        new.triggered = old.triggered
        if old.status == "held":
            new.status = "held"
        new.leg_ids = old.leg_ids
        for leg in self._legs(new):
            leg.parent_id = new.id
        if old.parent_id is not None:
            parent = self._book.orders[old.parent_id]
            parent.leg_ids = [new.id if i == old.id else i for i in parent.leg_ids]
        if new.type == "trailing_stop" and old.hwm is not None:
            new.hwm = old.hwm
            self._trail(new, self._last_price(new.symbol, now))

    # closed orders hold nothing (buy_hold/sell_hold are 0 for them): only open ones are summed
    def _buy_holds(self) -> Decimal:
        return sum((o.buy_hold() for o in self._book.open_orders.values()), Decimal(0))

    def _sell_holds(self, symbol: str) -> Decimal:
        return sum((o.sell_hold() for o in self._book.open_orders.values() if o.symbol == symbol), Decimal(0))

    def _check_funds(self, ticket: Ticket, quote: Quote, released: PaperOrder | None = None) -> tuple[Decimal, Decimal]:
        """403s for buying power / shares, counting the holds of every open order but `released`
        (the order a replace retires); returns (hold price, sell hold qty)."""
        if ticket.side == "buy":
            price = ticket.limit_price or ticket.stop_price or quote.ask
            cost = ticket.notional if ticket.notional is not None else ticket.qty * price  # type: ignore[operator]
            if ticket.fractional and cost < 1:
                raise BrokerError(403, "cost basis must be >= 1", CODE_FORBIDDEN)
            buying_power = self._book.cash - self._buy_holds() + (released.buy_hold() if released else 0)
            if cost > buying_power:
                raise BrokerError(403, "insufficient buying power", CODE_FORBIDDEN,
                                  buying_power=fmt(max(buying_power, Decimal(0)), 2), cost_basis=fmt(cost, 2))
            return price, Decimal(0)
        requested = ticket.qty if ticket.qty is not None else \
            (ticket.notional / quote.bid).quantize(QTY_STEP, ROUND_DOWN)  # type: ignore[operator]
        holding = self._book.holdings.get(ticket.symbol)
        existing = holding.qty if holding else Decimal(0)
        held = self._sell_holds(ticket.symbol) - (released.sell_hold() if released else 0)
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
        expires_at, shown_expiry = self._expiry(ticket.time_in_force, now)
        order = PaperOrder(
            id=order_id, client_order_id=client_order_id, symbol=ticket.symbol, side=ticket.side,
            type=ticket.type, time_in_force=ticket.time_in_force, qty=ticket.qty, notional=ticket.notional,
            limit_price=ticket.limit_price, extended_hours=ticket.extended_hours,
            position_intent=ticket.position_intent or ("buy_to_open" if ticket.side == "buy" else "sell_to_close"),
            created_at=now, live_at=now + timedelta(seconds=self.fill_delay), expires_at=expires_at,
            shown_expiry=shown_expiry, hold_price=hold_price, sell_hold_qty=sell_hold_qty,
            seq=len(self._book.orders), updated_at=now, stop_price=ticket.stop_price,
            trail_price=ticket.trail_price, trail_percent=ticket.trail_percent,
            order_class="" if ticket.order_class == "simple" else ticket.order_class)
        if ticket.time_in_force in AUCTION_TIF:
            order.auction_at = shown_expiry
        if ticket.type == "trailing_stop":
            self._trail(order, self._last_price(ticket.symbol, now))  # Alpaca shows hwm and stop_price at once
        return order

    def _expiry(self, tif: str, now: datetime) -> tuple[datetime | None, datetime]:
        """(when the book expires the order, the expires_at it shows). day/ioc/fok: the close of the
        session they work in, which the always-open mode shows but never enforces; gtc: 90 days
        out; opg/cls: the auction they execute in (the always-open mode has none: at once)."""
        state = self.clock.state(now)
        if tif == "gtc":
            return now + GTC_LIFETIME, now + GTC_LIFETIME
        if tif in AUCTION_TIF:
            if self.clock.always_open:
                return None, now
            return None, state.next_open if tif == "opg" else state.next_close
        return self.clock.day_order_expiry(now), state.next_close

    def _check_auction_window(self, ticket: Ticket, now: datetime) -> None:
        """Alpaca refuses opg between 9:28 and 19:00 ET and cls between 15:50 and 19:00 ET (the
        auctions' cut-offs); only the real clock has those hours."""
        if ticket.time_in_force not in AUCTION_TIF or self.clock.mode != "real":
            return
        local = now.astimezone(NEW_YORK).time()
        cutoff = time(9, 28) if ticket.time_in_force == "opg" else time(15, 50)
        if cutoff <= local < time(19, 0):
            raise unprocessable(f"{ticket.time_in_force} orders are not accepted between "
                                f"{cutoff.strftime('%H:%M')} and 19:00 ET")

    def _check_new_client_id(self, client_order_id: str | None) -> None:
        if client_order_id is not None and client_order_id in self._book.by_client_id:
            raise invalid("client_order_id must be unique")

    def _json(self, order: PaperOrder, nested: bool = False) -> dict[str, Any]:
        legs = [leg.to_json() for leg in self._legs(order)] if nested and order.leg_ids else None
        return order.to_json(legs)

    def _cursor(self, query: OrderQuery) -> tuple[datetime, int] | None:
        """The (created_at, seq) position of after_order_id/before_order_id, if either is given."""
        cursor_id = query.after_order_id or query.before_order_id
        if cursor_id is None:
            return None
        if query.after_order_id and query.before_order_id:
            raise invalid("after_order_id and before_order_id cannot both be specified")
        if query.after is not None or query.until is not None:
            raise invalid("after_order_id and before_order_id cannot be combined with after or until")
        order = self._book.orders.get(cursor_id)
        if order is None:
            raise invalid(f"order {cursor_id} not found")
        return order.created_at, order.seq

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
