"""The replay's report: what the fleet did with the recording, from its journal, its DLQ and the
broker's orders (the fills are the broker's), in market time. A plain JSON-ready dict, so that
``--json`` files of two replays compare key by key (``compare``)."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bot.alpaca.models import Order
from bot.codec import decimal_text
from bot.journal import JournalEntry
from bot.pnl import SymbolPnl
from bot.recording import RecordedPrice, Recording
from bot.replay.driver import ReplayRun

CENT = Decimal("0.01")
RATE_BUDGET = 200  # Alpaca's requests per minute per account
STAGES = {  # stage -> (from, to) journal times
    "route": ("source_at", "routed_at"),
    "claim": ("routed_at", "claimed_at"),
    "pre-trade": ("claimed_at", "submitted_at"),
    "broker": ("submitted_at", "final_at"),
    "total": ("source_at", "final_at"),
}


@dataclass(frozen=True)
class Fill:
    market_at: float
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    client_order_id: str


def broker_fills(orders: Iterable[Order], run: ReplayRun) -> list[Fill]:
    """Every executed order as one fill at its average price, at the market instant of its fill."""
    fills = []
    for order in orders:
        if order.filled_qty and order.filled_avg_price is not None:
            wall = (order.filled_at or order.updated_at or order.created_at)
            at = run.market_of(wall.timestamp()) if wall else run.market_start
            fills.append(Fill(at, order.symbol, order.side, order.filled_qty, order.filled_avg_price,
                              order.client_order_id))
    return sorted(fills, key=lambda f: f.market_at)


def reason_kind(reason: str, ticker: str = "") -> str:
    """A skip or DLQ reason without its particulars (ticker, numbers, what follows the first colon
    of a long one), so reasons count by kind."""
    text = reason.replace(ticker, "SYM") if ticker else reason
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    head = re.sub(r"\s*\([^)]*$", "", text.partition(": ")[0])  # and an aside the cut left open
    return (head if len(text) > 60 else text)[:80] or "(none)"


def build(run: ReplayRun, recording: Recording, journal: Sequence[JournalEntry], dead: Sequence[Mapping[str, str]],
          orders: Sequence[Order], broker_stats: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    by_source = {(e.source_stream, e.source_id): e for e in journal}
    dead_by_source = {(d.get("source_stream", ""), d.get("source_id", "")): d for d in dead}
    fills = broker_fills(orders, run)
    cash = Decimal(str(meta.get("cash", "100000")))
    curve = equity_curve(recording.prices, fills, cash)
    return {
        "replay": {**meta, "market_start": run.market_start, "market_end": run.market_end,
                   "wall_seconds": round(run.ended_wall - run.started_wall, 2)},
        "signals": _signals(run, by_source, dead_by_source),
        "orders": _orders(journal, orders),
        "skips": dict(Counter(reason_kind(e.reason, e.ticker) for e in journal if e.outcome == "skipped")
                      .most_common()),
        "dlq": dict(Counter(reason_kind(d.get("reason", "")) for d in dead).most_common()),
        "pnl": _pnl(fills, recording.prices, curve, cash),
        "equity": [[t, float(e)] for t, e, _x in curve],
        "exposure": {"max_gross": float(max((x for _t, _e, x in curve), default=Decimal(0))),
                     "curve": [[t, float(x)] for t, _e, x in curve]},
        "latency_ms": _latency(journal),
        "requests": _requests(run, broker_stats, sum(1 for e in journal if e.order_id)),
        "controls": {"state_changes": [{"market_at": s.market_at, "state": s.state, "reason": s.reason}
                                       for s in run.states],
                     "breaker_skips": sum(1 for e in journal if "breaker" in e.reason),
                     "halted_skips": sum(1 for e in journal if e.outcome == "skipped" and
                                         ("halted" in e.reason or "reduce-only" in e.reason))},
        "decisions": _decisions(run, by_source, dead_by_source),
    }


def _signals(run: ReplayRun, journal: Mapping[tuple[str, str], JournalEntry],
             dead: Mapping[tuple[str, str], Mapping[str, str]]) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    for signal in run.signals:
        entry = journal.get((signal.stream, signal.source_id))
        outcomes[entry.outcome if entry else "dead-lettered" if (signal.stream, signal.source_id) in dead
                 else "missing"] += 1
    return {"total": len(run.signals), "journaled": sum(v for k, v in outcomes.items() if k not in
                                                          ("dead-lettered", "missing")),
            "dead_lettered": outcomes.get("dead-lettered", 0), "missing": outcomes.get("missing", 0),
            "outcomes": dict(sorted(outcomes.items()))}


def _orders(journal: Sequence[JournalEntry], orders: Sequence[Order]) -> dict[str, Any]:
    bought = sum((o.filled_qty for o in orders if o.side == "buy"), Decimal(0))
    sold = sum((o.filled_qty for o in orders if o.side == "sell"), Decimal(0))
    return {"placed": sum(1 for e in journal if e.order_id), "at_broker": len(orders),
            "filled": sum(1 for o in orders if o.filled_qty), "shares_bought": decimal_text(bought),
            "shares_sold": decimal_text(sold),
            "by_status": dict(sorted(Counter(o.status for o in orders).items()))}


def equity_curve(prices: Sequence[RecordedPrice], fills: Sequence[Fill],
                 cash: Decimal) -> list[tuple[float, Decimal, Decimal]]:
    """(market instant, equity, gross exposure) at every recorded price instant: cash after the fills
    up to then, plus the shares held at the last recorded price."""
    marks: dict[str, Decimal] = {}
    held: dict[str, Decimal] = {}
    points: list[tuple[float, Decimal, Decimal]] = []
    pending = list(fills)
    ordered = sorted(prices, key=lambda p: p.at)
    for n, price in enumerate(ordered):
        marks[price.symbol] = mark_of(price)
        while pending and pending[0].market_at <= price.at:
            fill = pending.pop(0)
            signed = fill.qty if fill.side == "buy" else -fill.qty
            held[fill.symbol] = held.get(fill.symbol, Decimal(0)) + signed
            cash -= signed * fill.price
        if n + 1 < len(ordered) and ordered[n + 1].at == price.at:
            continue  # one point per instant, once every symbol of it is marked
        value = sum((q * marks.get(s, Decimal(0)) for s, q in held.items()), Decimal(0))
        gross = sum((abs(q) * marks.get(s, Decimal(0)) for s, q in held.items()), Decimal(0))
        points.append((price.at, (cash + value).quantize(CENT), gross.quantize(CENT)))
    return points


def mark_of(price: RecordedPrice) -> Decimal:
    """What a recorded price values shares at: the mid of bid and ask, else the last trade (as P&L does)."""
    if price.bid is not None and price.ask is not None:
        return (price.bid + price.ask) / 2
    return next(p for p in (price.last, price.bid, price.ask) if p is not None)


def _pnl(fills: Sequence[Fill], prices: Sequence[RecordedPrice], curve: Sequence[tuple[float, Decimal, Decimal]],
         cash: Decimal) -> dict[str, Any]:
    books: dict[str, SymbolPnl] = {}
    for fill in fills:
        books.setdefault(fill.symbol, SymbolPnl(fill.symbol)).apply(fill.side, fill.qty, fill.price)
    last: dict[str, RecordedPrice] = {}
    for price in sorted(prices, key=lambda p: p.at):
        last[price.symbol] = price
    for symbol, book in books.items():
        book.mark = mark_of(last[symbol]) if symbol in last else None
    realized = sum((b.realized for b in books.values()), Decimal(0))
    unrealized = sum((b.unrealized for b in books.values()), Decimal(0))
    peak, drawdown = cash, Decimal(0)
    for _t, equity, _x in curve:
        peak = max(peak, equity)
        drawdown = max(drawdown, peak - equity)
    return {"realized": decimal_text(realized.quantize(CENT)), "unrealized": decimal_text(unrealized.quantize(CENT)),
            "total": decimal_text((realized + unrealized).quantize(CENT)),
            "start_equity": decimal_text(cash.quantize(CENT)),
            "final_equity": decimal_text(curve[-1][1] if curve else cash.quantize(CENT)),
            "max_drawdown": decimal_text(drawdown.quantize(CENT)),
            "symbols": [b.to_dict() for _s, b in sorted(books.items())]}


def _latency(journal: Sequence[JournalEntry]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for stage, (start, end) in STAGES.items():
        spans = sorted((getattr(e, end) - getattr(e, start)) * 1000 for e in journal
                       if getattr(e, start) is not None and getattr(e, end) is not None)
        if spans:
            out[stage] = {"n": len(spans), "p50": round(_quantile(spans, 0.5), 3),
                          "p99": round(_quantile(spans, 0.99), 3), "max": round(spans[-1], 3)}
    return out


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _requests(run: ReplayRun, stats: Mapping[str, Any], placed: int) -> dict[str, Any]:
    per_minute: Counter[int] = Counter()
    for signal in run.signals:
        per_minute[int(signal.market_at // 60)] += signal.order_requests
    order_requests = sum(s.order_requests for s in run.signals)
    wall_minutes = max((run.ended_wall - run.started_wall) / 60, 1 / 60)
    return {"total": int(stats.get("requests", 0)), "by_group": dict(stats.get("by_group", {})),
            "order_requests": order_requests,
            "order_requests_per_signal": round(order_requests / len(run.signals), 3) if run.signals else 0.0,
            "order_requests_per_order": round(order_requests / placed, 3) if placed else 0.0,
            "peak_order_requests_per_market_minute": max(per_minute.values(), default=0),
            "budget_per_minute": RATE_BUDGET,
            "all_requests_per_wall_minute": round(int(stats.get("requests", 0)) / wall_minutes, 1)}


def _decisions(run: ReplayRun, journal: Mapping[tuple[str, str], JournalEntry],
               dead: Mapping[tuple[str, str], Mapping[str, str]]) -> list[dict[str, Any]]:
    """Per recorded signal, what became of it: what two replays of one recording must agree on."""
    out = []
    for signal in run.signals:
        entry = journal.get((signal.stream, signal.source_id))
        row: dict[str, Any] = {"index": signal.index, "market_at": signal.market_at,
                               "ticker": signal.fields.get("ticker", "")}
        if entry is None:
            letter = dead.get((signal.stream, signal.source_id))
            row.update(outcome="dead-lettered" if letter else "missing",
                       reason=letter.get("reason", "") if letter else "")
        else:
            row.update(side=entry.side, outcome=entry.outcome, qty=decimal_text(entry.qty),
                       filled_qty=decimal_text(entry.filled_qty), filled_avg_price=decimal_text(entry.filled_avg_price),
                       status=entry.status, reason=reason_kind(entry.reason, entry.ticker) if entry.reason else "")
        out.append(row)
    return out


# --------------------------------------------------------------------------- comparing two reports

COMPARED = (
    ("signals", "signals", "total"), ("journaled", "signals", "journaled"),
    ("dead-lettered", "signals", "dead_lettered"), ("orders placed", "orders", "placed"),
    ("orders filled", "orders", "filled"), ("shares bought", "orders", "shares_bought"),
    ("shares sold", "orders", "shares_sold"), ("realized P&L", "pnl", "realized"),
    ("unrealized P&L", "pnl", "unrealized"), ("total P&L", "pnl", "total"),
    ("final equity", "pnl", "final_equity"), ("max drawdown", "pnl", "max_drawdown"),
    ("max gross exposure", "exposure", "max_gross"),
    ("order requests per signal", "requests", "order_requests_per_signal"),
    ("order requests per order", "requests", "order_requests_per_order"),
    ("peak order requests / market min", "requests", "peak_order_requests_per_market_minute"),
)


def compare(this: Mapping[str, Any], other: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, this replay's, the other's) for the figures two replays are judged by."""
    rows = []
    for label, section, key in COMPARED:
        rows.append((label, str(this.get(section, {}).get(key, "")), str(other.get(section, {}).get(key, ""))))
    skips = sorted({*this.get("skips", {}), *other.get("skips", {})})
    for kind in skips:
        rows.append((f"skipped: {kind}", str(this.get("skips", {}).get(kind, 0)),
                     str(other.get("skips", {}).get(kind, 0))))
    mine, theirs = this.get("decisions", []), other.get("decisions", [])
    differing = sum(1 for a, b in zip(mine, theirs, strict=False) if a != b) + abs(len(mine) - len(theirs))
    rows.append(("signals decided differently", str(differing), ""))
    return rows
