"""The Signal record and the validation of raw source-stream entries.

Source streams are written by anyone (a webhook, a script, the generator), so ``parse_raw``
treats every entry as untrusted bytes: each way an entry can be wrong gets its own precise
``SignalError.reason``, which the router puts in the DLQ next to the original fields.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation, localcontext

from bot import codec
from bot.errors import TradebotError
from bot.streams import is_stream_id

MAX_FIELDS = 16
MAX_VALUE_BYTES = 64
MAX_NAME_BYTES = 64
MAX_QTY = Decimal("1000000")
MAX_QTY_DECIMALS = 9
MAX_PRICE = Decimal("1000000000")
PRICE_FIELDS = ("notional", "limit_price", "stop_loss", "take_profit")
# the fields a source entry may carry (others are ignored); docs/architecture.md "Redis keys"
SOURCE_FIELDS = ("ticker", "direction", "qty", "client_order_id", "target_weight", *PRICE_FIELDS, "strategy")
_STRATEGY_NAME = re.compile(r"[a-z0-9._-]{1,64}")
MAX_ID_AHEAD = 5.0  # seconds an entry id may be ahead of the router's clock (host clock skew)

SIDES = ("buy", "sell")
FLATTEN, CANCEL_ALL = "flatten", "cancel-all"  # control signals (bot.keys.Keys.control)
CONTROLS = (FLATTEN, CANCEL_ALL)
_DIRECTIONS = {"b": "buy", "buy": "buy", "s": "sell", "sell": "sell"}
# plain decimal notation only: no exponents, underscores, signs other than a leading +/-,
# NaN or Infinity (all of which Decimal() would accept)
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


class SignalError(TradebotError, ValueError):
    """A signal that cannot be used; ``.reason`` says precisely why (it goes to the DLQ)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# client_order_id: Alpaca allows 128 characters today, its older docs said 48: stay within 48.
COID_PREFIX = "tb-"
MAX_COID_LEN = 48
_COID_SAFE = re.compile(r"[A-Za-z0-9._:-]+")


def client_order_id(source_stream: str, source_id: str) -> str:
    """The order's client_order_id, derived only from the signal's origin, so every delivery of the
    signal, to any worker, names the same order.

    ``tb-<source stream>-<source entry id>`` (e.g. ``tb-nvda-1719410000000-0``) when that is at
    most 48 characters of ``[A-Za-z0-9._:-]``; otherwise ``tb-`` + the first 40 hex digits of
    SHA-256 of ``<stream>\\n<id>`` (43 characters, no dash after the prefix: the forms never collide).
    """
    plain = f"{COID_PREFIX}{source_stream}-{source_id}"
    if len(plain) <= MAX_COID_LEN and _COID_SAFE.fullmatch(source_stream):
        return plain
    digest = hashlib.sha256(f"{source_stream}\n{source_id}".encode("utf-8", "surrogatepass")).hexdigest()
    return COID_PREFIX + digest[:40]


def is_our_coid(text: str) -> bool:
    """Whether ``text`` has the form of an id ``client_order_id`` makes."""
    return text.startswith(COID_PREFIX) and len(text) <= MAX_COID_LEN and bool(_COID_SAFE.fullmatch(text))


@dataclass(frozen=True)
class Signal:
    """A validated signal as it travels on ``tradebot:signals``."""

    ticker: str
    side: str  # "buy" | "sell"
    qty: Decimal | None
    source_stream: str
    source_id: str
    routed_at: float  # unix seconds
    # a DLQ replay keeps the order id of the signal it replays: an order of the original that may
    # exist is then found (or refused as a duplicate), never placed a second time
    pinned_coid: str | None = None
    # set by the router when the entry id is ahead of its clock (inherited from an entry written
    # with an explicit future id): the signal's time is then its receipt, not its id
    received_at: float | None = None
    target_weight: Decimal | None = None  # the share of equity the signal wants in the ticker (0..1)
    # an operator's control signal: flatten (sell every share, even while halted) or cancel-all
    # (cancel the ticker's open orders; side "cancel")
    control: str | None = None
    notional: Decimal | None = None  # dollars instead of a qty (fixed strategy)
    limit_price: Decimal | None = None  # a limit order at this price instead of the configured type
    stop_loss: Decimal | None = None  # protective legs of a buy (a bracket order)
    take_profit: Decimal | None = None
    strategy: str | None = None  # a strategy by name for this signal only

    def __post_init__(self) -> None:
        object.__setattr__(self, "ticker", self.ticker.strip().upper())
        if not self.ticker:
            raise SignalError("ticker is empty")
        if self.control not in (None, *CONTROLS):
            raise SignalError(f"control {self.control!r} is not one of {', '.join(CONTROLS)}")
        wanted = ("cancel",) if self.control == CANCEL_ALL else ("sell",) if self.control == FLATTEN else SIDES
        if self.side not in wanted:
            raise SignalError(f"side {self.side!r} is not {'/'.join(wanted)}")
        if self.qty is not None:
            object.__setattr__(self, "qty", check_qty(self.qty))
        if not self.source_stream:
            raise SignalError("source_stream is empty")
        if not is_stream_id(self.source_id):
            raise SignalError(f"source_id {self.source_id!r} is not a stream id")
        if self.target_weight is not None:
            object.__setattr__(self, "target_weight", check_weight(self.target_weight))
        check_order_fields(self)
        if self.pinned_coid is not None and not is_our_coid(self.pinned_coid):
            raise SignalError(f"client_order_id {self.pinned_coid[:60]!r} is not one of this bot's order ids")

    @property
    def coid(self) -> str:
        """The client_order_id of this signal's order: the pinned one, else derived from its origin."""
        return self.pinned_coid or client_order_id(self.source_stream, self.source_id)

    @property
    def source_at(self) -> float:
        """When the signal entered its source stream: the millisecond part of its id, in seconds
        (the router's receipt when the id could not be trusted)."""
        if self.received_at is not None:
            return self.received_at
        return id_time(self.source_id)

    def to_fields(self) -> dict[str, str]:
        """Fields of the ``tradebot:signals`` entry (``qty`` omitted when not given)."""
        fields = {"ticker": self.ticker, "side": self.side}
        if self.qty is not None:
            fields["qty"] = format(self.qty, "f")
        fields.update(source_stream=self.source_stream, source_id=self.source_id, routed_at=repr(float(self.routed_at)))
        if self.pinned_coid is not None:
            fields["client_order_id"] = self.pinned_coid
        if self.received_at is not None:
            fields["received_at"] = repr(float(self.received_at))
        if self.target_weight is not None:
            fields["target_weight"] = format(self.target_weight, "f")
        if self.control is not None:
            fields["control"] = self.control
        for name in PRICE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                fields[name] = format(value, "f")
        if self.strategy is not None:
            fields["strategy"] = self.strategy
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str] | Mapping[bytes, bytes]) -> Signal:
        """Rebuild a Signal from a ``tradebot:signals`` entry (str or bytes fields); SignalError if bad."""
        text: dict[str, str] = {}
        for name, value in fields.items():
            try:
                text[codec.text(name)] = codec.text(value)
            except UnicodeDecodeError:
                raise SignalError(f"field {name!r} is not UTF-8") from None
        for required in ("ticker", "side", "source_stream", "source_id", "routed_at"):
            if required not in text:
                raise SignalError(f"missing field {required!r}")
        try:
            routed_at = float(text["routed_at"])
        except ValueError:
            raise SignalError(f"routed_at {text['routed_at']!r} is not a number") from None
        qty = parse_qty(text["qty"]) if "qty" in text else None
        try:
            received_at = float(text["received_at"]) if "received_at" in text else None
        except ValueError:
            raise SignalError(f"received_at {text['received_at']!r} is not a number") from None
        target_weight = parse_weight(text["target_weight"]) if "target_weight" in text else None
        prices = {name: parse_price(name, text[name]) for name in PRICE_FIELDS if name in text}
        return cls(text["ticker"], text["side"], qty, text["source_stream"], text["source_id"], routed_at,
                   text.get("client_order_id") or None, received_at, target_weight, text.get("control") or None,
                   notional=prices.get("notional"), limit_price=prices.get("limit_price"),
                   stop_loss=prices.get("stop_loss"), take_profit=prices.get("take_profit"),
                   strategy=text.get("strategy") or None)


def parse_raw(
    fields: Mapping[bytes, bytes],
    *,
    source_stream: str,
    source_id: str,
    symbols: tuple[str, ...],
    routed_at: float,
) -> Signal:
    """Validate and normalise one raw source entry (``ticker``, ``direction``, optional ``qty``)."""
    if len(fields) > MAX_FIELDS:
        raise SignalError(f"entry has {len(fields)} fields (max {MAX_FIELDS})")
    values: dict[str, str] = {}
    for raw_name, raw_value in fields.items():
        name_bytes, value_bytes = _bytes(raw_name), _bytes(raw_value)
        if len(name_bytes) > MAX_NAME_BYTES:
            raise SignalError(f"field name {_show(name_bytes)} is {len(name_bytes)} bytes (max {MAX_NAME_BYTES})")
        if len(value_bytes) > MAX_VALUE_BYTES:
            raise SignalError(f"field {_show(name_bytes)} is {len(value_bytes)} bytes (max {MAX_VALUE_BYTES})")
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            continue  # cannot be one of ours; kept verbatim in the DLQ/raw fields if the entry is bad
        if name not in SOURCE_FIELDS:
            continue  # extra fields are allowed and ignored
        try:
            values[name] = value_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise SignalError(f"field {name!r} is not UTF-8") from None

    ticker = _required(values, "ticker").strip().upper()
    if not ticker:
        raise SignalError("field 'ticker' is empty")
    if ticker not in symbols:
        raise SignalError(f"unknown ticker {ticker!r} (configured: {','.join(symbols)})")
    direction = _required(values, "direction").strip()
    side = _DIRECTIONS.get(direction.lower())
    if side is None:
        raise SignalError(f"direction {direction!r} is not b/s/buy/sell")
    qty = parse_qty(values["qty"]) if "qty" in values else None
    target_weight = parse_weight(values["target_weight"]) if "target_weight" in values else None
    prices = {name: parse_price(name, values[name]) for name in PRICE_FIELDS if name in values}
    strategy = values["strategy"].strip() if "strategy" in values else None
    return Signal(ticker, side, qty, source_stream, source_id, routed_at, values.get("client_order_id") or None,
                  received_at=_received_at(source_id, routed_at), target_weight=target_weight, strategy=strategy,
                  notional=prices.get("notional"), limit_price=prices.get("limit_price"),
                  stop_loss=prices.get("stop_loss"), take_profit=prices.get("take_profit"))


def parse_price(name: str, text: str) -> Decimal:
    """A positive dollar amount in plain decimal notation (``notional``, ``limit_price``...)."""
    stripped = text.strip()
    if not _PLAIN_NUMBER.fullmatch(stripped):
        raise SignalError(f"{name} {text!r} must be a positive number")
    return Decimal(stripped)


def check_order_fields(signal: Signal) -> None:
    """The optional order fields of a signal, alone and together; SignalError naming the bad one."""
    for name in PRICE_FIELDS:
        value = getattr(signal, name)
        if value is None:
            continue
        if not isinstance(value, Decimal) or not value.is_finite() or value <= 0 or value > MAX_PRICE:
            raise SignalError(f"{name} {value} must be a positive number up to {MAX_PRICE}")
        decimals = -value.normalize().as_tuple().exponent  # type: ignore[operator]
        most = 2 if name == "notional" or value >= 1 else 4
        if decimals > most:
            raise SignalError(f"{name} {value} has more than {most} decimals (Alpaca's price increments)")
    if signal.qty is not None and signal.notional is not None:
        raise SignalError("give qty or notional, not both")
    if signal.strategy is not None and not _STRATEGY_NAME.fullmatch(signal.strategy):
        raise SignalError(f"strategy {signal.strategy[:70]!r} is not a strategy name ([a-z0-9._-], up to 64)")
    if (signal.stop_loss is not None or signal.take_profit is not None) and signal.side != "buy":
        raise SignalError("stop_loss and take_profit go with a buy (they protect the position it opens)")
    entry = signal.limit_price
    low, high = signal.stop_loss, signal.take_profit
    if low is not None and high is not None and low >= high:
        raise SignalError(f"stop_loss {low} must be below take_profit {high}")
    if entry is not None and ((low is not None and low >= entry) or (high is not None and high <= entry)):
        raise SignalError(f"limit_price {entry} must lie between stop_loss and take_profit")


def parse_weight(text: str) -> Decimal:
    """A target share of equity, 0 to 1 in plain decimal notation; SignalError otherwise."""
    stripped = text.strip()
    if not _PLAIN_NUMBER.fullmatch(stripped):
        raise SignalError(f"target_weight {text!r} must be a number from 0 to 1")
    return check_weight(Decimal(stripped), shown=text)


def check_weight(weight: Decimal, shown: str | None = None) -> Decimal:
    if not isinstance(weight, Decimal) or not weight.is_finite() or not 0 <= weight <= 1:
        raise SignalError(f"target_weight {shown if shown is not None else str(weight)!r} must be a number "
                          "from 0 to 1")
    return weight.normalize() if weight else Decimal(0)


def parse_control(fields: Mapping[bytes, bytes], *, source_stream: str, source_id: str, symbols: tuple[str, ...],
                  routed_at: float) -> Signal:
    """An entry of the control stream: ``action`` flatten|cancel-all and ``ticker``; SignalError otherwise."""
    values = {codec.text_or_none(k): codec.text_or_none(v) for k, v in fields.items()}
    action = (values.get("action") or "").strip().lower()
    if action not in CONTROLS:
        raise SignalError(f"control action {action!r} is not one of {', '.join(CONTROLS)}")
    ticker = (values.get("ticker") or "").strip().upper()
    if ticker not in symbols:
        raise SignalError(f"unknown ticker {ticker!r} (configured: {','.join(symbols)})")
    return Signal(ticker, "cancel" if action == CANCEL_ALL else "sell", None, source_stream, source_id, routed_at,
                  received_at=_received_at(source_id, routed_at), control=action)


def id_time(entry_id: str) -> float:
    """The millisecond part of a stream id, in Unix seconds."""
    return int(entry_id.split("-", 1)[0]) / 1000.0


def _received_at(source_id: str, routed_at: float) -> float | None:
    """None when the entry id's time can be trusted; the receipt time when the id is ahead of the
    router's clock only because it follows an entry written with an explicit future id (Redis gives
    every later auto id that time, with a growing sequence). The explicit one itself (sequence 0)
    is refused: one bad writer would otherwise have every later signal skipped as 'in the future'."""
    ahead = id_time(source_id) - routed_at
    if ahead <= MAX_ID_AHEAD:
        return None
    if source_id.endswith("-0"):
        raise SignalError(f"entry id {source_id} is {ahead:.0f}s ahead of the router's clock (an XADD with an "
                          "explicit id?); later entries inherit its time and are timed by their receipt")
    return routed_at


def parse_qty(text: str) -> Decimal:
    """A positive, finite quantity in plain decimal notation; SignalError otherwise."""
    stripped = text.strip()
    if not _PLAIN_NUMBER.fullmatch(stripped):
        raise SignalError(f"qty {text!r} must be a positive number")
    try:
        qty = Decimal(stripped)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid numbers
        raise SignalError(f"qty {text!r} must be a positive number") from None
    return check_qty(qty, shown=text)


def check_qty(qty: Decimal, shown: str | None = None) -> Decimal:
    """``qty`` normalised (no trailing zeros, no exponent) if within limits; SignalError otherwise."""
    if not isinstance(qty, Decimal) or not qty.is_finite() or qty <= 0:
        raise SignalError(f"qty {shown if shown is not None else str(qty)!r} must be a positive number")
    shown = shown if shown is not None else format(qty, "f")
    if qty > MAX_QTY:
        raise SignalError(f"qty {shown!r} exceeds the maximum {MAX_QTY}")
    with localcontext(Context(prec=200)):  # the default 28 digits would round long inputs silently
        normal = qty.normalize()
    exponent = normal.as_tuple().exponent
    if not isinstance(exponent, int):  # pragma: no cover - 'n'/'N'/'F' only for NaN/Infinity, refused above
        raise SignalError(f"qty {shown!r} must be a positive number")
    if exponent < -MAX_QTY_DECIMALS:
        raise SignalError(f"qty {shown!r} has more than {MAX_QTY_DECIMALS} decimals")
    # no trailing zeros, never exponent notation (1E+2 -> 100)
    return normal if exponent <= 0 else normal.quantize(Decimal(1))


def _required(values: Mapping[str, str], name: str) -> str:
    if name not in values:
        raise SignalError(f"missing field {name!r}")
    return values[name]


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


def _show(name: bytes) -> str:
    """A field name fit for a reason: its text when UTF-8, else its bytes repr (truncated)."""
    decoded = codec.text_or_none(name)
    shown = repr(decoded) if decoded is not None else repr(name)
    return shown if len(shown) <= 80 else shown[:77] + "..."
