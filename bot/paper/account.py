"""Account surface beyond orders: configurations, portfolio history and activities (FILL).

Everything here reads the exchange through its public methods only (account(), list_orders(),
prices): the order book stays the exchange's business. Fills are taken from the orders
(filled_qty, filled_avg_price, filled_at): one FILL activity per order that traded, carrying
its cumulative quantity and average price (an order filled in several steps shows as one
activity at its last fill time). The portfolio history is replayed from those fills over the
walk's recorded minute bars, so its last point is the account's equity now.
"""
from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from bot.paper import PaperConfig
from bot.paper.assets import AssetTable
from bot.paper.exchange import CODE_INVALID, BrokerError, Exchange, OrderQuery
from bot.paper.prices import CENT, Bar, PriceBook

# PATCH may change these; their values are what the paper account does (cash, long only)
DEFAULT_CONFIGURATIONS: dict[str, Any] = {
    "dtbp_check": "entry", "trade_confirm_email": "all", "suspend_trade": False, "no_shorting": True,
    "fractional_trading": True, "max_margin_multiplier": "1", "max_options_trading_level": 0,
    "pdt_check": "entry", "ptp_no_exception_entry": False, "disable_overnight_trading": False,
}
CONFIG_CHOICES: dict[str, tuple[Any, ...]] = {
    "dtbp_check": ("both", "entry", "exit"), "pdt_check": ("both", "entry", "exit"),
    "trade_confirm_email": ("all", "none"), "max_margin_multiplier": ("1", "2", "4"),
    "max_options_trading_level": (0, 1, 2, 3),
}
PORTFOLIO_TIMEFRAMES = {"1Min": 1, "5Min": 5, "15Min": 15, "1H": 60, "1D": 1440}
PERIOD_UNITS = {"D": 1, "W": 7, "M": 30, "A": 365}
MAX_POINTS = 10_000


@dataclass(frozen=True)
class Fill:
    order_id: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    at: datetime
    status: str
    leaves_qty: Decimal

    @property
    def cash_change(self) -> Decimal:
        amount = (self.qty * self.price).quantize(CENT, ROUND_HALF_UP)
        return -amount if self.side == "buy" else amount

    @property
    def activity_id(self) -> str:
        # Alpaca's form: the transaction time to the millisecond, then an id
        return f"{self.at.strftime('%Y%m%d%H%M%S')}{self.at.microsecond // 1000:03d}::{self.order_id}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.activity_id, "activity_type": "FILL", "transaction_time": _iso(self.at),
                "type": "fill" if self.status == "filled" else "partial_fill", "price": str(self.price),
                "qty": str(self.qty), "side": self.side, "symbol": self.symbol, "leaves_qty": str(self.leaves_qty),
                "order_id": self.order_id, "cum_qty": str(self.qty), "order_status": self.status}


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    from bot.alpaca.models import ts

    value = ts(text)
    assert value is not None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def fills(exchange: Exchange) -> list[Fill]:
    """Every order that traded, oldest fill first."""
    out = []
    for order in exchange.list_orders(OrderQuery(status="all", limit=1 << 62, direction="asc")):
        qty = Decimal(order["filled_qty"] or "0")
        if qty <= 0 or not order.get("filled_at"):
            continue
        ordered = Decimal(order["qty"]) if order.get("qty") else qty
        leaves = max(Decimal(0), ordered - qty) if order["status"] == "partially_filled" else Decimal(0)
        out.append(Fill(order["id"], order["symbol"], order["side"], qty, Decimal(order["filled_avg_price"]),
                        _parse_time(order["filled_at"]), order["status"], leaves))
    out.sort(key=lambda f: f.at)
    return out


# --- portfolio history ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PortfolioQuery:
    start: datetime
    end: datetime
    minutes: int
    timeframe: str


def _period(text: str) -> timedelta:
    unit = text[-1:].upper()
    if unit not in PERIOD_UNITS or not text[:-1].isdigit() or int(text[:-1]) < 1:
        raise BrokerError(422, f"invalid period: {text!r}", CODE_INVALID)
    return timedelta(days=int(text[:-1]) * PERIOD_UNITS[unit])


def portfolio_query(params: dict[str, str], now: datetime, created: datetime) -> PortfolioQuery:
    period = _period(params["period"]) if params.get("period") else None
    end = _parse_time(params["end"]) if params.get("end") else now
    start = _parse_time(params["start"]) if params.get("start") else end - (period or timedelta(days=30))
    if period is not None and params.get("start") and not params.get("end"):
        end = start + period
    span = end - start
    default = "1Min" if span < timedelta(days=7) else "15Min" if span < timedelta(days=30) else "1D"
    timeframe = params.get("timeframe") or default
    if timeframe not in PORTFOLIO_TIMEFRAMES:
        raise BrokerError(422, f"invalid timeframe: {timeframe!r}, expected one of "
                               f"{', '.join(PORTFOLIO_TIMEFRAMES)}", CODE_INVALID)
    # data exists from the account's creation on (as at Alpaca); the minute it was created is the first point
    return PortfolioQuery(max(start, created.replace(second=0, microsecond=0)), min(end, now),
                          PORTFOLIO_TIMEFRAMES[timeframe], timeframe)


def _points(query: PortfolioQuery) -> list[datetime]:
    step = timedelta(minutes=query.minutes)
    epoch = int(query.start.timestamp()) // 60
    at = datetime.fromtimestamp((epoch - epoch % query.minutes) * 60, timezone.utc)
    points: list[datetime] = []
    while at <= query.end and len(points) < MAX_POINTS:
        points.append(at)
        at += step
    return points


class _Prices:
    """Last price of a symbol at a past instant: the close of the minute bar in force then."""

    def __init__(self, prices: PriceBook, now: datetime) -> None:
        self.prices, self.now = prices, now
        self._bars: dict[str, tuple[list[datetime], list[Bar]]] = {}

    def at(self, symbol: str, when: datetime, fallback: Decimal) -> Decimal:
        if symbol not in self._bars:
            bars = self.prices.read(symbol, self.now, lambda w: [*w.minute_bars, w.minute_bar])
            self._bars[symbol] = ([b.t for b in bars], bars)
        starts, bars = self._bars[symbol]
        index = bisect.bisect_right(starts, when) - 1
        return bars[index].c if index >= 0 else fallback


def portfolio_history(exchange: Exchange, params: dict[str, str]) -> dict[str, Any]:
    account = exchange.account()
    now = exchange.clock.now()
    created = _parse_time(account["created_at"])
    query = portfolio_query(params, now, created)
    trades = fills(exchange)
    base = Decimal(account["cash"]) - sum((f.cash_change for f in trades), Decimal(0))
    prices = _Prices(exchange.prices, now)
    equity: list[float] = []
    timestamps: list[int] = []
    for point in _points(query):
        # value at the end of the point's interval (now for the last one), as of the fills up to then
        until = min(point + timedelta(minutes=query.minutes), now)
        equity.append(float(_equity_at(trades, base, prices, until)))
        timestamps.append(int(point.timestamp()))
    pnl = [round(e - float(base), 2) for e in equity]
    return {"timestamp": timestamps, "equity": equity, "profit_loss": pnl,
            "profit_loss_pct": [round(p / float(base), 6) if base else 0.0 for p in pnl],
            "base_value": float(base), "base_value_asof": created.date().isoformat(),
            "timeframe": query.timeframe, "cashflow": {}}


def _equity_at(trades: list[Fill], base: Decimal, prices: _Prices, when: datetime) -> Decimal:
    cash = base
    holdings: dict[str, tuple[Decimal, Decimal]] = {}  # symbol -> (qty, last fill price)
    for fill in trades:
        if fill.at > when:
            break
        cash += fill.cash_change
        qty, _ = holdings.get(fill.symbol, (Decimal(0), fill.price))
        qty += fill.qty if fill.side == "buy" else -fill.qty
        holdings[fill.symbol] = (qty, fill.price)
    value = sum((qty * prices.at(s, when, last) for s, (qty, last) in holdings.items()), Decimal(0))
    return (cash + value).quantize(CENT, ROUND_HALF_UP)


# --- activities ---------------------------------------------------------------------------------
def activities(exchange: Exchange, params: dict[str, str], activity_type: str | None = None) -> list[dict[str, Any]]:
    types = {activity_type} if activity_type else \
        {t.strip().upper() for t in params.get("activity_types", "").split(",") if t.strip()}
    if params.get("category") == "non_trade_activity" or (types and "FILL" not in types):
        return []  # the paper account has no dividends, fees or transfers
    chosen = fills(exchange)
    if params.get("after"):
        chosen = [f for f in chosen if f.at > _parse_time(params["after"])]
    if params.get("until"):
        chosen = [f for f in chosen if f.at < _parse_time(params["until"])]
    if params.get("date"):
        day = _parse_time(params["date"]).date()
        chosen = [f for f in chosen if f.at.date() == day]
    descending = params.get("direction", "desc") != "asc"
    if descending:
        chosen.reverse()
    if params.get("page_token"):
        ids = [f.activity_id for f in chosen]
        chosen = chosen[ids.index(params["page_token"]) + 1:] if params["page_token"] in ids else []
    return [f.to_json() for f in chosen[:_page_size(params.get("page_size"))]]


def _page_size(text: str | None) -> int:
    try:
        size = int(text) if text else 100
    except ValueError:
        raise BrokerError(422, f"invalid page_size: {text!r}", CODE_INVALID) from None
    if not 1 <= size <= 100:
        raise BrokerError(422, "page_size must be between 1 and 100", CODE_INVALID)
    return size


# --- per-broker state ------------------------------------------------------------------------------
@dataclass
class PaperExtras:
    """What the non-order routes keep between requests: configurations and the asset table."""

    configurations: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CONFIGURATIONS))
    _assets: AssetTable | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def assets(self, config: PaperConfig) -> AssetTable:
        with self._lock:  # built on first use: the CSV is read once per broker
            if self._assets is None:
                self._assets = AssetTable.build(config.assets_csv, config.symbols)
            return self._assets

    def reset(self) -> None:
        self.configurations = dict(DEFAULT_CONFIGURATIONS)

    def update_configurations(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BrokerError(400, "request body format is invalid", 40010000)
        for key, value in body.items():
            _check_configuration(key, value)
        self.configurations.update(body)
        return dict(self.configurations)


def _check_configuration(key: str, value: Any) -> None:
    if key not in DEFAULT_CONFIGURATIONS:
        raise BrokerError(422, f"unknown configuration: {key}", CODE_INVALID)
    if key in CONFIG_CHOICES:
        if value not in CONFIG_CHOICES[key] or isinstance(value, bool):
            raise BrokerError(422, f"invalid {key}: {value!r}", CODE_INVALID)
    elif not isinstance(value, bool):
        raise BrokerError(422, f"{key} must be true or false", CODE_INVALID)
