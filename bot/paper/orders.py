"""Order requests of the paper broker: Alpaca's error bodies and the validation of POST /v2/orders
and PATCH /v2/orders/{id} bodies (what Alpaca refuses before it looks at the account).

Checks that need the market (stop_price against the current price, bracket exit levels against the
base price) are `check_prices`, called by the exchange with the quote in hand.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from bot.paper.prices import tick_size

TERMINAL = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})
ALL_TIF = ("day", "gtc", "opg", "cls", "ioc", "fok")
AUCTION_TIF = ("opg", "cls")  # market/limit on open/close: they execute once, in the auction
ALL_TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")
STOP_TYPES = ("stop", "stop_limit", "trailing_stop")  # rest until the last trade crosses stop_price
LIMIT_TYPES = ("limit", "stop_limit")
ORDER_CLASSES = ("simple", "bracket", "oco", "oto")
POSITION_INTENTS = ("buy_to_open", "buy_to_close", "sell_to_open", "sell_to_close")
MAX_CLIENT_ORDER_ID = 128
MAX_DECIMALS = 9
QTY_STEP = Decimal(1).scaleb(-MAX_DECIMALS)
# 1-5 letters, or a share class after a dot (BRK.B, BF.B)
SYMBOL_RE = re.compile(r"^[A-Z]{1,5}(\.[A-Z]{1,2})?$")
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


def unprocessable(message: str) -> BrokerError:
    return BrokerError(422, message, CODE_UNPROCESSABLE)


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
    """Upper-cased symbol if it looks like a US equity ticker (1-5 letters, maybe a .class), else None."""
    if not isinstance(raw, str):
        return None
    symbol = raw.strip().upper()
    return symbol if SYMBOL_RE.match(symbol) else None


def decimals_of(value: Decimal) -> int:
    return max(0, -value.normalize().as_tuple().exponent)  # type: ignore[operator]


def to_tick(price: Decimal) -> Decimal:
    """A computed price (a trailing stop) on the tick grid Alpaca prices on."""
    return price.quantize(tick_size(price), ROUND_HALF_UP)


def _decimal_field(body: Mapping[str, Any], name: str, label: str | None = None) -> Decimal | None:
    label = label or name
    raw = body.get(name)
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float, Decimal)):
        raise invalid(f"invalid {label}: {raw!r} is not a number")
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise invalid(f"invalid {label}: {raw!r} is not a number") from None
    if not value.is_finite():
        raise invalid(f"invalid {label}: {raw!r} is not a finite number")
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


def _price(value: Decimal | None, label: str) -> Decimal | None:
    """A positive price on the tick grid ($0.01 from $1 up, $0.0001 below)."""
    if value is None:
        return None
    if value <= 0:
        raise invalid(f"{label} must be > 0")
    if decimals_of(value) > decimals_of(tick_size(value)):
        raise unprocessable("sub-penny increment does not fulfill minimum pricing criteria")
    return value


@dataclass(frozen=True)
class StopLoss:
    stop_price: Decimal
    limit_price: Decimal | None = None  # set: the stop-loss leg is a stop_limit


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
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    order_class: str = "simple"
    take_profit: Decimal | None = None  # take_profit.limit_price
    stop_loss: StopLoss | None = None

    @property
    def fractional(self) -> bool:
        return self.notional is not None or (self.qty is not None and self.qty % 1 != 0)

    @property
    def exit_side(self) -> str:
        """The side of the take-profit/stop-loss orders: an OCO is itself the exit, the other
        classes exit the position their entry opens."""
        if self.order_class == "oco":
            return self.side
        return "sell" if self.side == "buy" else "buy"


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
    tif = _choice(body, "time_in_force", ALL_TIF)
    order_class = body.get("order_class") or "simple"
    if order_class not in ORDER_CLASSES:
        raise invalid(f"invalid order_class: {order_class!r}")
    qty, notional = _decimal_field(body, "qty"), _decimal_field(body, "notional")
    _check_amounts(qty, notional, order_type)
    if (notional is not None or (qty is not None and qty % 1 != 0)) and tif != "day":
        raise unprocessable("fractional orders must be DAY orders")
    take_profit, stop_loss = _parse_exits(body, order_class)
    limit_price = _decimal_field(body, "limit_price")
    if order_class == "oco":
        limit_price = _oco_limit(order_type, limit_price, take_profit)
    limit_price = _check_limit_price(limit_price, order_type)
    stop_price = _check_stop_price(_decimal_field(body, "stop_price"), order_type)
    trail_price, trail_percent = _check_trail(body, order_type, tif)
    if tif in AUCTION_TIF and order_type not in ("market", "limit"):
        raise invalid(f"{tif} orders must be market or limit orders")
    extended_hours = _bool_field(body, "extended_hours")
    _check_extended_hours(extended_hours, order_type, tif, order_class)
    intent = body.get("position_intent")
    if intent not in (None, "") and intent not in POSITION_INTENTS:
        raise invalid(f"invalid position_intent: {intent!r}")
    ticket = Ticket(symbol, side, order_type, tif, qty, notional, limit_price, extended_hours,
                    _check_client_order_id(body.get("client_order_id")), intent or None,
                    stop_price, trail_price, trail_percent, order_class, take_profit, stop_loss)
    _check_class(ticket)
    return ticket


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
    if order_type not in LIMIT_TYPES:
        if limit_price is not None:
            raise invalid("limit_price is only allowed for limit orders")
        return None
    if limit_price is None:
        raise invalid(f"limit_price is required for {order_type} orders")
    return _price(limit_price, "limit_price")


def _check_stop_price(stop_price: Decimal | None, order_type: str) -> Decimal | None:
    if order_type not in ("stop", "stop_limit"):
        if stop_price is not None:
            raise invalid("stop_price is only allowed for stop and stop_limit orders")
        return None
    if stop_price is None:
        raise invalid(f"stop_price is required for {order_type} orders")
    return _price(stop_price, "stop_price")


def _check_trail(body: Mapping[str, Any], order_type: str, tif: str) -> tuple[Decimal | None, Decimal | None]:
    trail_price = _decimal_field(body, "trail_price")
    trail_percent = _decimal_field(body, "trail_percent")
    if order_type != "trailing_stop":
        if trail_price is not None or trail_percent is not None:
            raise invalid("trail_price and trail_percent are only allowed for trailing_stop orders")
        return None, None
    if trail_price is not None and trail_percent is not None:
        raise invalid("trail_price and trail_percent cannot both be specified")
    if trail_price is None and trail_percent is None:
        raise invalid("trail_price or trail_percent is required for trailing_stop orders")
    if tif not in ("day", "gtc"):
        raise invalid("trailing_stop orders must be DAY or GTC orders")
    if trail_percent is not None and not 0 < trail_percent < 100:
        raise invalid("trail_percent must be > 0 and < 100")
    return _price(trail_price, "trail_price"), trail_percent


def _check_extended_hours(extended_hours: bool, order_type: str, tif: str, order_class: str) -> None:
    if not extended_hours:
        return
    if order_type != "limit":
        raise invalid('only type="limit" is allowed for extended hours orders')
    if tif not in ("day", "gtc"):
        raise invalid("extended hours orders must be DAY or GTC orders")
    if order_class != "simple":
        raise invalid("extended hours orders must be simple orders")


def _parse_exits(body: Mapping[str, Any], order_class: str) -> tuple[Decimal | None, StopLoss | None]:
    """take_profit {limit_price} and stop_loss {stop_price, limit_price?}; simple orders ignore them
    (Alpaca does too: only the advanced classes read the legs)."""
    if order_class == "simple":
        return None, None
    take_profit = stop_loss = None
    raw_tp, raw_sl = body.get("take_profit"), body.get("stop_loss")
    if raw_tp is not None:
        if not isinstance(raw_tp, Mapping):
            raise invalid("take_profit must be an object")
        take_profit = _price(_decimal_field(raw_tp, "limit_price", "take_profit.limit_price"),
                             "take_profit.limit_price")
        if take_profit is None:
            raise invalid("take_profit.limit_price is required")
    if raw_sl is not None:
        if not isinstance(raw_sl, Mapping):
            raise invalid("stop_loss must be an object")
        stop = _price(_decimal_field(raw_sl, "stop_price", "stop_loss.stop_price"), "stop_loss.stop_price")
        if stop is None:
            raise invalid("stop_loss.stop_price is required")
        limit = _price(_decimal_field(raw_sl, "limit_price", "stop_loss.limit_price"), "stop_loss.limit_price")
        stop_loss = StopLoss(stop, limit)
    return take_profit, stop_loss


def _oco_limit(order_type: str, limit_price: Decimal | None, take_profit: Decimal | None) -> Decimal | None:
    # an OCO order is its take-profit limit plus a stop-loss leg: the two prices name one thing
    if order_type != "limit":
        raise invalid("oco orders must be limit orders")
    if limit_price is not None and take_profit is not None and limit_price != take_profit:
        raise invalid("limit_price must equal take_profit.limit_price for oco orders")
    return take_profit if take_profit is not None else limit_price


def _check_class(ticket: Ticket) -> None:
    order_class = ticket.order_class
    if order_class == "simple":
        return
    if ticket.fractional:
        raise unprocessable("fractional orders must be simple orders")
    if ticket.time_in_force not in ("day", "gtc"):
        raise invalid(f"{order_class} orders must be DAY or GTC orders")
    has_tp, has_sl = ticket.take_profit is not None, ticket.stop_loss is not None
    if order_class in ("bracket", "oco") and not (has_tp and has_sl):
        raise invalid(f"take_profit and stop_loss are required for {order_class} orders")
    if order_class == "oto" and has_tp == has_sl:
        raise invalid("oto orders require exactly one of take_profit or stop_loss")


def check_prices(ticket: Ticket, current: Decimal) -> None:
    """The rules that need the market: a stop must be on the far side of the current price (else it
    would trigger at once), and exits must be on the profitable/protective side of the base price
    (the entry's limit or stop price, else the current price), by at least a cent."""
    if ticket.type in ("stop", "stop_limit") and ticket.order_class != "oco":
        assert ticket.stop_price is not None
        check_stop_side(ticket.side, ticket.stop_price, current)
    if ticket.order_class == "simple":
        return
    base = current if ticket.order_class == "oco" else \
        ticket.limit_price or ticket.stop_price or current
    sell_exits = ticket.exit_side == "sell"
    cent = Decimal("0.01")
    if ticket.take_profit is not None:
        if sell_exits and ticket.take_profit < base + cent:
            raise unprocessable(f"take_profit.limit_price must be >= base_price + 0.01 (base_price: {fmt(base)})")
        if not sell_exits and ticket.take_profit > base - cent:
            raise unprocessable(f"take_profit.limit_price must be <= base_price - 0.01 (base_price: {fmt(base)})")
    if ticket.stop_loss is not None:
        stop = ticket.stop_loss.stop_price
        if sell_exits and stop > base - cent:
            raise unprocessable(f"stop_loss.stop_price must be <= base_price - 0.01 (base_price: {fmt(base)})")
        if not sell_exits and stop < base + cent:
            raise unprocessable(f"stop_loss.stop_price must be >= base_price + 0.01 (base_price: {fmt(base)})")


def check_stop_side(side: str, stop_price: Decimal, current: Decimal) -> None:
    if side == "buy" and stop_price <= current:
        raise unprocessable(f"stop_price must be > current price for buy stop orders (current price: {fmt(current)})")
    if side == "sell" and stop_price >= current:
        raise unprocessable(f"stop_price must be < current price for sell stop orders (current price: {fmt(current)})")


def _check_client_order_id(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise invalid("client_order_id must be a string")
    if len(raw) > MAX_CLIENT_ORDER_ID:
        raise invalid(f"client_order_id must be no more than {MAX_CLIENT_ORDER_ID} characters")
    return raw


REPLACE_FIELDS = ("qty", "limit_price", "stop_price", "trail", "time_in_force", "client_order_id")


def replacement_body(original: Mapping[str, Any], body: Any, trail_field: str | None) -> dict[str, Any]:
    """The POST body the replacing order would have had: the original's request with the PATCH's
    fields laid over it; parse_ticket then applies every submit rule to it. `trail` lands on
    whichever of trail_price/trail_percent the original uses."""
    if not isinstance(body, Mapping):
        raise BrokerError(400, "request body format is invalid", CODE_BAD_BODY)
    unknown = sorted(set(body) - set(REPLACE_FIELDS) - {"notional"})
    if unknown:
        raise invalid(f"cannot replace {', '.join(unknown)}")
    if body.get("notional") not in (None, ""):
        raise invalid("notional can only be replaced on IPO orders")
    merged = dict(original)
    merged["client_order_id"] = None  # the replacing order gets a new id unless one is given
    for name in REPLACE_FIELDS:
        value = body.get(name)
        if value in (None, ""):
            continue
        if name == "trail":
            if trail_field is None:
                raise invalid("trail is only allowed for trailing_stop orders")
            name = trail_field
        elif name == "limit_price" and merged.get("type") not in LIMIT_TYPES:
            raise invalid("limit_price is only allowed for limit and stop_limit orders")
        elif name == "stop_price" and merged.get("type") not in ("stop", "stop_limit"):
            raise invalid("stop_price is only allowed for stop and stop_limit orders")
        merged[name] = value
    return merged
