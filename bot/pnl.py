"""Profit and loss from the journal: average-cost basis per symbol from the journaled fills,
realized on sells, unrealized marked at the cached price; and the equity curve the poller records.

Average cost: a buy adds its shares at its fill price to the basis; a sell realizes
(fill price - average cost) x shares and leaves the average unchanged. Fees are not modelled
(Alpaca charges no commission on US equities); orders placed outside the fleet are not in the
journal (reconciliation reports them as external).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis

from bot.codec import decimal_text, text
from bot.journal import JournalEntry, journal_entries
from bot.keys import Keys

EQUITY_KEEP = 7 * 86400.0  # seconds of equity points kept
EQUITY_EVERY = 10.0  # at most one equity point this often


@dataclass
class SymbolPnl:
    symbol: str
    qty: Decimal = Decimal(0)
    avg_cost: Decimal = Decimal(0)
    realized: Decimal = Decimal(0)
    mark: Decimal | None = None  # the cached price the open shares are valued at
    fills: int = 0

    @property
    def unrealized(self) -> Decimal:
        return (self.mark - self.avg_cost) * self.qty if self.mark is not None and self.qty else Decimal(0)

    def apply(self, side: str, qty: Decimal, price: Decimal) -> None:
        self.fills += 1
        if side == "buy":
            cost = self.avg_cost * self.qty + price * qty
            self.qty += qty
            self.avg_cost = cost / self.qty if self.qty else Decimal(0)
            return
        sold = min(qty, self.qty)  # a sell beyond the journaled shares (bought outside) realizes nothing
        self.realized += (price - self.avg_cost) * sold
        self.qty -= sold
        if not self.qty:
            self.avg_cost = Decimal(0)

    def to_dict(self) -> dict[str, str]:
        cents = Decimal("0.01")
        return {"symbol": self.symbol, "qty": decimal_text(self.qty),
                "avg_cost": decimal_text(self.avg_cost.quantize(Decimal("0.0001"))),
                "mark": decimal_text(self.mark), "realized": decimal_text(self.realized.quantize(cents)),
                "unrealized": decimal_text(self.unrealized.quantize(cents)),
                "total": decimal_text((self.realized + self.unrealized).quantize(cents)), "fills": str(self.fills)}


@dataclass
class PnlReport:
    symbols: list[SymbolPnl]

    @property
    def realized(self) -> Decimal:
        return sum((s.realized for s in self.symbols), Decimal(0))

    @property
    def unrealized(self) -> Decimal:
        return sum((s.unrealized for s in self.symbols), Decimal(0))

    def to_dict(self) -> dict[str, Any]:
        cents = Decimal("0.01")
        return {"symbols": [s.to_dict() for s in self.symbols],
                "realized": decimal_text(self.realized.quantize(cents)),
                "unrealized": decimal_text(self.unrealized.quantize(cents)),
                "total": decimal_text((self.realized + self.unrealized).quantize(cents))}


def pnl_of(entries: Iterable[JournalEntry], marks: Mapping[str, Decimal]) -> PnlReport:
    """P&L of journal ``entries`` (oldest first), open shares marked at ``marks``."""
    books: dict[str, SymbolPnl] = {}
    for entry in entries:
        if not entry.filled_qty or entry.filled_avg_price is None:
            continue
        book = books.setdefault(entry.ticker, SymbolPnl(entry.ticker))
        book.apply(entry.side, entry.filled_qty, entry.filled_avg_price)
    for symbol, book in books.items():
        book.mark = marks.get(symbol)
    return PnlReport(sorted(books.values(), key=lambda s: s.symbol))


def journal_pnl(r: redis.Redis, keys: Keys) -> PnlReport:
    """P&L over the whole journal, marked at the market cache's prices (mid of bid/ask, else last)."""
    entries = [entry for _id, entry in journal_entries(r, keys)]
    symbols = {e.ticker for e in entries}
    return pnl_of(entries, {s: m for s in symbols if (m := mark(r, keys, s)) is not None})


def mark(r: redis.Redis, keys: Keys, symbol: str) -> Decimal | None:
    raw = {text(k): text(v) for k, v in (r.hgetall(keys.prices(symbol)) or {}).items()}
    try:
        bid, ask = Decimal(raw.get("bid") or "0"), Decimal(raw.get("ask") or "0")
        if bid > 0 and ask > 0:
            return (bid + ask) / 2
        last = Decimal(raw.get("last") or "0")
        return last if last > 0 else None
    except ArithmeticError:
        return None


# ---------------------------------------------------------------------- the equity curve

def record_equity(r: redis.Redis, keys: Keys, equity: Decimal | None, cash: Decimal | None,
                  now: float | None = None, keep: float = EQUITY_KEEP) -> None:
    """One point of the equity curve (the poller's, at its account cadence), trimmed by age."""
    if equity is None:
        return
    now = time.time() if now is None else now
    r.xadd(keys.equity, {"equity": decimal_text(equity), "cash": decimal_text(cash), "at": repr(now)},
           minid=f"{int((now - keep) * 1000)}-0", approximate=True)


def equity_curve(r: redis.Redis, keys: Keys, since: float | None = None, limit: int = 5000) -> list[dict[str, str]]:
    low = "-" if since is None else f"{int(since * 1000)}-0"
    return [{text(k): text(v) for k, v in (fields or {}).items()}
            for _id, fields in (r.xrange(keys.equity, min=low, count=limit) or [])]


