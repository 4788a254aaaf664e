"""`tradebot flatten` and `tradebot cancel-all`: control signals through the fleet, one per ticker,
each journaled exactly once like any signal, allowed in every trading state.

A flatten order sells every share available, at most the max order notional worth: a larger
position is closed over several rounds, each a signal of its own, until the position is gone, a
round sells nothing, or the rounds run out. Never more than the shares available: the ledger's
reservation sees every sell in flight.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

import redis

from bot.codec import display
from bot.journal import JournalEntry
from bot.keys import Keys
from bot.market import MarketCache
from bot.ops.errors import OpsError
from bot.signals import CANCEL_ALL, FLATTEN

POLL = 0.1


@dataclass
class ExitReport:
    """What the control signals of one ticker did."""

    ticker: str
    entries: list[JournalEntry] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)  # DLQ reasons
    left: Decimal | None = None  # shares still held when it ended (flatten), None when unknown

    @property
    def sold(self) -> Decimal:
        return sum((e.filled_qty or Decimal(0) for e in self.entries), Decimal(0))

    def describe(self, action: str) -> str:
        if self.dead:
            return f"{self.ticker}: dead-lettered: {self.dead[-1]}"
        if action == CANCEL_ALL:
            return f"{self.ticker}: " + "; ".join(e.reason for e in self.entries)
        orders = sum(1 for e in self.entries if e.order_id)
        last = self.entries[-1] if self.entries else None
        text = f"{self.ticker}: sold {self.sold} in {orders} order(s)"
        if self.left == 0:
            return text + ", flat"
        if last is not None and not last.filled_qty:
            text += f"; last: {last.outcome} ({last.reason or last.status})"
        return text + (f"; {self.left} still held" if self.left is not None else "")


def send(r: redis.Redis, keys: Keys, action: str, ticker: str) -> str:
    """One control signal on the control stream; its entry id."""
    return display(r.xadd(keys.control, {"action": action, "ticker": ticker}))


def await_recorded(r: redis.Redis, keys: Keys, source_ids: Iterable[str], timeout: float,
                   clock: Callable[[], float] = time.monotonic) -> dict[str, JournalEntry | str]:
    """Wait for each control signal's journal entry (or DLQ reason: a str) by its done marker.
    OpsError naming what is missing when ``timeout`` passes first (is the fleet running?)."""
    wanted, found = list(source_ids), {}
    deadline = clock() + timeout
    while True:
        for source_id in [s for s in wanted if s not in found]:
            marker = r.get(keys.done(keys.control, source_id))
            if marker is not None:
                found[source_id] = _recorded(r, keys, display(marker))
        if len(found) == len(wanted):
            return found
        if clock() >= deadline:
            missing = [s for s in wanted if s not in found]
            raise OpsError(f"no journal entry for control signal(s) {', '.join(missing)} after {timeout:.0f}s: "
                           "is the fleet (router and workers) running? They stay queued and run when it is")
        time.sleep(POLL)


def _recorded(r: redis.Redis, keys: Keys, marker: str) -> JournalEntry | str:
    if marker.startswith("dlq:"):
        rows = r.xrange(keys.dlq, min=marker[4:], max=marker[4:])
        return display((rows[0][1] or {}).get("reason", "dead-lettered")) if rows else "dead-lettered"
    rows = r.xrange(keys.orders, min=marker, max=marker)
    if not rows:
        return "journaled (the entry was trimmed since)"
    return JournalEntry.from_fields(rows[0][1] or {}, journal_id=marker)


def cancel_all(r: redis.Redis, keys: Keys, tickers: Iterable[str], *, timeout: float) -> list[ExitReport]:
    sent = {send(r, keys, CANCEL_ALL, t): t for t in tickers}
    reports = {t: ExitReport(t) for t in sent.values()}
    for source_id, result in await_recorded(r, keys, sent, timeout).items():
        _add(reports[sent[source_id]], result)
    return list(reports.values())


def flatten(r: redis.Redis, keys: Keys, tickers: Iterable[str], *, timeout: float, rounds: int = 20,
            max_price_age: float = 5.0) -> list[ExitReport]:
    """Flatten each ticker: a round of control signals, then another for every ticker that sold and
    still holds shares once the cache shows the fills."""
    reports = {t: ExitReport(t) for t in tickers}
    todo = list(reports)
    cache = MarketCache(r, keys, max_price_age)
    for _ in range(rounds):
        if not todo:
            break
        sent = {send(r, keys, FLATTEN, t): t for t in todo}
        started = time.time()
        for source_id, result in await_recorded(r, keys, sent, timeout).items():
            _add(reports[sent[source_id]], result)
        _await_positions_after(r, keys, cache, started, timeout)
        held = _held(r, keys, cache)
        next_round = []
        for ticker in todo:
            report = reports[ticker]
            report.left = held.get(ticker, Decimal(0))
            last = report.entries[-1] if report.entries else None
            if report.left > 0 and last is not None and last.filled_qty and not report.dead:
                next_round.append(ticker)  # progress, not done: the order notional capped it
        todo = next_round
    return list(reports.values())


def _add(report: ExitReport, result: JournalEntry | str) -> None:
    if isinstance(result, str):
        report.dead.append(result)
    else:
        report.entries.append(result)


def _await_positions_after(r: redis.Redis, keys: Keys, cache: MarketCache, since: float, timeout: float) -> None:
    """Until the poller's positions were read after ``since`` (asking it for a refresh)."""
    deadline = time.monotonic() + timeout
    cache.request_refresh()
    while time.monotonic() < deadline:
        as_of = r.hget(keys.positions, "_as_of")
        if as_of is not None and float(as_of) > since:
            return
        time.sleep(POLL)


def _held(r: redis.Redis, keys: Keys, cache: MarketCache) -> dict[str, Decimal]:
    held = {}
    for name in r.hkeys(keys.positions):
        symbol = display(name)
        if symbol.startswith("_"):
            continue
        position = cache.position(symbol)
        if position is not None:
            held[symbol] = position.qty
    return held
