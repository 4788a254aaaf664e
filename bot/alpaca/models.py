"""Typed records of Alpaca's REST objects. Money and quantities are Decimal; parsing is
tolerant: unknown keys are ignored, missing optional ones become None."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

# Terminal order states (spec: "no further updates"); anything else, known or not, is followed.
TERMINAL_STATUSES = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})


def dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    return Decimal(str(value))


def ts(value: Any) -> datetime | None:
    """RFC 3339 with up to 9 fractional digits and Z or an offset."""
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        # only the LEADING digits are the fraction: "+00:00" after them must survive as the offset
        digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        tz = rest[len(digits):]
        text = f"{head}.{digits[:6].ljust(6, '0')}{tz}"
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class Account:
    id: str
    status: str
    currency: str
    cash: Decimal
    buying_power: Decimal
    equity: Decimal
    trading_blocked: bool = False
    account_blocked: bool = False
    last_equity: Decimal | None = None  # equity at the previous trading day's close
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Account:
        return cls(
            id=str(d.get("id", "")),
            status=str(d.get("status", "")),
            currency=str(d.get("currency", "USD")),
            cash=dec(d.get("cash")) or Decimal(0),
            buying_power=dec(d.get("buying_power")) or Decimal(0),
            equity=dec(d.get("equity")) or Decimal(0),
            trading_blocked=bool(d.get("trading_blocked", False)),
            account_blocked=bool(d.get("account_blocked", False)),
            last_equity=dec(d.get("last_equity")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class Position:
    symbol: str
    qty: Decimal
    qty_available: Decimal
    avg_entry_price: Decimal
    market_value: Decimal | None
    side: str = "long"
    current_price: Decimal | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Position:
        qty = dec(d.get("qty")) or Decimal(0)
        available = dec(d.get("qty_available"))  # absent (or empty): all of the position is available
        return cls(
            symbol=str(d["symbol"]),
            qty=qty,
            qty_available=qty if available is None else available,
            avg_entry_price=dec(d.get("avg_entry_price")) or Decimal(0),
            market_value=dec(d.get("market_value")),
            side=str(d.get("side", "long")),
            current_price=dec(d.get("current_price")),
        )


@dataclass(frozen=True)
class Order:
    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    status: str
    qty: Decimal | None
    notional: Decimal | None
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    limit_price: Decimal | None = None
    created_at: datetime | None = None
    submitted_at: datetime | None = None
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    stop_price: Decimal | None = None
    updated_at: datetime | None = None
    expired_at: datetime | None = None
    failed_at: datetime | None = None
    extended_hours: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def done_for_today(self) -> bool:
        """Final for an order that lives one session: ``done_for_day`` and ``calculated`` mean nothing
        more executes today, and a day or IOC order has no tomorrow (a GTC order does: not final)."""
        return self.is_terminal or (self.status in ("done_for_day", "calculated")
                                    and self.time_in_force in ("day", "ioc", "fok", "opg", "cls"))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Order:
        return cls(
            id=str(d["id"]),
            client_order_id=str(d.get("client_order_id") or ""),
            symbol=str(d.get("symbol") or ""),
            side=str(d.get("side") or ""),
            type=str(d.get("type") or d.get("order_type") or ""),
            time_in_force=str(d.get("time_in_force") or ""),
            status=str(d.get("status") or ""),
            qty=dec(d.get("qty")),
            notional=dec(d.get("notional")),
            filled_qty=dec(d.get("filled_qty")) or Decimal(0),
            filled_avg_price=dec(d.get("filled_avg_price")),
            limit_price=dec(d.get("limit_price")),
            created_at=ts(d.get("created_at")),
            submitted_at=ts(d.get("submitted_at")),
            filled_at=ts(d.get("filled_at")),
            canceled_at=ts(d.get("canceled_at")),
            raw=dict(d),
            stop_price=dec(d.get("stop_price")),
            updated_at=ts(d.get("updated_at")),
            expired_at=ts(d.get("expired_at")),
            failed_at=ts(d.get("failed_at")),
            extended_hours=bool(d.get("extended_hours") or False),
        )


@dataclass(frozen=True)
class Clock:
    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Clock:
        return cls(timestamp=ts(d["timestamp"]), is_open=bool(d["is_open"]),  # type: ignore[arg-type]
                   next_open=ts(d["next_open"]), next_close=ts(d["next_close"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Asset:
    id: str
    symbol: str
    status: str
    tradable: bool
    fractionable: bool
    shortable: bool = False
    exchange: str = ""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Asset:
        return cls(id=str(d.get("id", "")), symbol=str(d["symbol"]), status=str(d.get("status", "")),
                   tradable=bool(d.get("tradable", False)), fractionable=bool(d.get("fractionable", False)),
                   shortable=bool(d.get("shortable", False)), exchange=str(d.get("exchange", "")))


@dataclass(frozen=True)
class Snapshot:
    """Latest quote and trade of one symbol (from /v2/stocks/snapshots)."""

    symbol: str
    bid: Decimal | None
    ask: Decimal | None
    bid_size: Decimal | None
    ask_size: Decimal | None
    last: Decimal | None
    quote_time: datetime | None
    trade_time: datetime | None = None

    @classmethod
    def from_json(cls, symbol: str, d: Mapping[str, Any]) -> Snapshot:
        quote = d.get("latestQuote") or {}
        trade = d.get("latestTrade") or {}
        return cls(
            symbol=symbol,
            bid=_price(quote.get("bp")),
            ask=_price(quote.get("ap")),
            bid_size=dec(quote.get("bs")),
            ask_size=dec(quote.get("as")),
            last=_price(trade.get("p")),
            quote_time=ts(quote.get("t")),
            trade_time=ts(trade.get("t")),
        )


def _price(value: Any) -> Decimal | None:
    # a price of 0 means "no active bid/ask" at Alpaca: treat as missing, never as zero
    price = dec(value)
    return price if price is not None and price > 0 else None


@dataclass(frozen=True)
class OrderRequest:
    """What the worker asks for; the client turns it into Alpaca's JSON body (decimals as strings)."""

    symbol: str
    side: str  # buy | sell
    client_order_id: str
    qty: Decimal | None = None
    notional: Decimal | None = None
    type: str = "market"  # market | limit
    time_in_force: str = "ioc"
    limit_price: Decimal | None = None
    extended_hours: bool = False
    # protective legs: both make a bracket, one an OTO (Alpaca's order classes)
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None

    @property
    def order_class(self) -> str | None:
        if self.stop_loss is not None and self.take_profit is not None:
            return "bracket"
        return "oto" if self.stop_loss is not None or self.take_profit is not None else None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "symbol": self.symbol,
            "side": self.side,
            "type": self.type,
            "time_in_force": self.time_in_force,
            "client_order_id": self.client_order_id,
        }
        if self.qty is not None:
            body["qty"] = format(self.qty, "f")
        if self.notional is not None:
            body["notional"] = format(self.notional, "f")
        if self.limit_price is not None:
            body["limit_price"] = format(self.limit_price, "f")
        if self.extended_hours:
            body["extended_hours"] = True
        if self.order_class is not None:
            body["order_class"] = self.order_class
        if self.take_profit is not None:
            body["take_profit"] = {"limit_price": format(self.take_profit, "f")}
        if self.stop_loss is not None:
            body["stop_loss"] = {"stop_price": format(self.stop_loss, "f")}
        return body
