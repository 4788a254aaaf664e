"""Reconciliation: the broker's orders and positions against the journal, the ledger and the cache.

The broker is the source of truth. An order under one of our client_order_ids with no journal entry
(its journal entry lost with Redis's last second, a POST whose outcome was unknown landed after
the signal was dead-lettered) is *adopted*: journaled with ``adopted=1``, out of the DLQ if it was
there. An order without our prefix is *external* (placed by hand, another program) and kept in
``tradebot:external``. Positions are compared with what the books explain: the baseline (the
account's positions before the fleet, 0 unless set) + journaled fills + external fills; a
difference is *drift*. Reservations of orders long final or never placed are *released*.
Only orders final for ``settle`` seconds are judged: a worker may be about to journal a younger one.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import redis

from bot import lua
from bot.alpaca.models import Order
from bot.codec import decimal_text, text
from bot.errors import TradebotError
from bot.journal import JournalEntry, journal_entries
from bot.keys import Keys
from bot.ledger import Ledger
from bot.market import write_account, write_positions
from bot.retention import TRIMMED_TO
from bot.signals import COID_PREFIX, client_order_id
from bot.streams import DONE_TTL_SECONDS
from bot.worker.record import outcome_of

log = logging.getLogger(__name__)


class ReconcileError(TradebotError, RuntimeError):
    """Reconciliation could not get a consistent view of the books (the message says why)."""


@dataclass(frozen=True)
class ReconcileConfig:
    settle: float = 30.0  # an order final this long is judged (a worker journals it well before)
    lookback: float = 86400.0  # the first reconciliation reads orders submitted this long ago
    stale_reservation: float = 600.0  # an unsettled reservation this old with no open order is released


@dataclass
class Drift:
    symbol: str
    broker: str  # the broker's position
    expected: str  # baseline + journaled + external fills
    journaled: str
    external: str
    baseline: str


@dataclass
class ReconcileReport:
    at: float
    since: float
    applied: bool
    orders_read: int = 0
    adopted: list[dict[str, str]] = field(default_factory=list)
    external: list[dict[str, str]] = field(default_factory=list)
    position_drift: list[dict[str, str]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    unadoptable: list[str] = field(default_factory=list)  # ours, but the id names no signal we could mark
    errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.adopted or self.position_drift or self.unadoptable)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reconciler:
    def __init__(self, r: redis.Redis, keys: Keys, client: Any, config: ReconcileConfig | None = None, *,
                 now: Any = time.time) -> None:
        self.r, self.keys, self.client = r, keys, client
        self.config = config or ReconcileConfig()
        self.now = now
        self.ledger = Ledger(r, keys)

    def run(self, *, apply: bool, since: float | None = None) -> ReconcileReport:
        now = self.now()
        since = since if since is not None else self._since(now)
        report = ReconcileReport(at=now, since=since, applied=apply)
        orders = list(self.client.orders_since(datetime.fromtimestamp(since, timezone.utc), status="all"))
        report.orders_read = len(orders)
        journaled, fills = self._journal()
        settled_before = now - self.config.settle
        for order in orders:
            if not _settled(order, settled_before):
                continue
            if not order.client_order_id.startswith(COID_PREFIX):
                report.external.append(_external(order))
            elif order.client_order_id not in journaled:
                self._adopt(order, report, apply)
        external_fills = self._external_fills(report.external, apply)
        adopted_fills = {} if apply else _signed_fills(report.adopted)
        journaled, fills, baseline = self._books()  # after any adoption, and as of one journal trim
        positions = self.client.list_positions()
        report.position_drift = [asdict(d) for d in self._drift(positions, fills, adopted_fills, external_fills,
                                                                baseline)]
        report.released = self._stale_reservations(orders, journaled, now, apply)
        if apply:
            write_positions(self.r, self.keys, positions, now)
            write_account(self.r, self.keys, self.client.get_account(), now)
            self._store(report, orders, now)
        for drift in report.position_drift:
            log.warning("reconcile: %s position drift: broker %s, the books explain %s", drift["symbol"],
                        drift["broker"], drift["expected"])
        return report

    # ------------------------------------------------------------------ the parts

    def _since(self, now: float) -> float:
        stored = self.r.hget(self.keys.reconcile, "next_since")
        try:
            return float(stored) if stored else now - self.config.lookback
        except ValueError:
            return now - self.config.lookback

    def _journal(self) -> tuple[set[str], dict[str, Decimal]]:
        """The client_order_ids the journal names, and the signed fills per symbol it records."""
        coids: set[str] = set()
        fills: dict[str, Decimal] = {}
        for _id, entry in journal_entries(self.r, self.keys):
            if entry.client_order_id:
                coids.add(entry.client_order_id)
            if entry.filled_qty:
                sign = 1 if entry.side == "buy" else -1
                fills[entry.ticker] = fills.get(entry.ticker, Decimal(0)) + sign * entry.filled_qty
        return coids, fills

    def _adopt(self, order: Order, report: ReconcileReport, apply: bool) -> None:
        origin = signal_of(order.client_order_id)
        if origin is None:
            report.unadoptable.append(order.client_order_id)
            return
        source_stream, source_id = origin
        outcome, reason = outcome_of(order)
        entry = JournalEntry(
            source_stream=source_stream, source_id=source_id, ticker=order.symbol, side=order.side, outcome=outcome,
            reason=("adopted by reconciliation" + (f": {reason}" if reason else "")),
            client_order_id=order.client_order_id, order_id=order.id, status=order.status, qty=order.qty,
            filled_qty=order.filled_qty, filled_avg_price=order.filled_avg_price,
            source_at=int(source_id.split("-")[0]) / 1000.0,
            submitted_at=_epoch(order.submitted_at or order.created_at), final_at=_epoch(order.updated_at),
            consumer="reconcile", adopted=True)
        shown = {"client_order_id": order.client_order_id, "order_id": order.id, "symbol": order.symbol,
                 "side": order.side, "status": order.status, "filled_qty": decimal_text(order.filled_qty)}
        if apply:
            args: list[Any] = [DONE_TTL_SECONDS]
            for name, value in entry.to_fields().items():
                args += [name, value]
            written, value, dead = lua.run(self.r, "journal_adopt",
                                           [self.keys.done(source_stream, source_id), self.keys.orders,
                                            self.keys.dlq], args)
            if not int(written):
                return  # journaled meanwhile (a worker was quicker)
            self.ledger.release(order.client_order_id)
            shown["journal_id"] = text(value)
            if text(dead):
                shown["removed_from_dlq"] = text(dead)
            log.warning("reconcile: adopted order %s (%s %s %s, %s): no journal entry had it", order.id,
                        order.side, order.symbol, order.client_order_id, order.status)
        report.adopted.append(shown)

    def _external_fills(self, found: list[dict[str, str]], apply: bool) -> dict[str, Decimal]:
        known: dict[str, dict[str, str]] = {}
        for order_id, raw in self.r.hgetall(self.keys.external).items():
            try:
                known[text(order_id)] = json.loads(raw)
            except ValueError:
                continue
        new = {row["order_id"]: row for row in found}
        if apply and new:
            self.r.hset(self.keys.external, mapping={oid: json.dumps(row) for oid, row in new.items()})
        return _signed_fills([*{**known, **new}.values()])

    def _drift(self, positions: Iterable[Any], fills: Mapping[str, Decimal], adopted: Mapping[str, Decimal],
               external: Mapping[str, Decimal], baseline: Mapping[str, Decimal]) -> list[Drift]:
        broker = {p.symbol: p.qty for p in positions}
        drifts = []
        for symbol in sorted({*broker, *fills, *adopted, *external, *baseline}):
            journaled = fills.get(symbol, Decimal(0)) + adopted.get(symbol, Decimal(0))
            expected = baseline.get(symbol, Decimal(0)) + journaled + external.get(symbol, Decimal(0))
            held = broker.get(symbol, Decimal(0))
            if held != expected:
                drifts.append(Drift(symbol, decimal_text(held), decimal_text(expected), decimal_text(journaled),
                                    decimal_text(external.get(symbol, Decimal(0))),
                                    decimal_text(baseline.get(symbol, Decimal(0)))))
        return drifts

    def _books(self) -> tuple[set[str], dict[str, Decimal], dict[str, Decimal]]:
        """The journal's client_order_ids and fills, and the baseline, as of one journal trim: a trim
        folds fills from the journal into the baseline, and reading one before it and the other after
        would count them twice or not at all (a false drift)."""
        for _ in range(5):
            before = self.r.hget(self.keys.reconcile, TRIMMED_TO)
            coids, fills = self._journal()
            baseline = self._baseline()
            if self.r.hget(self.keys.reconcile, TRIMMED_TO) == before:
                return coids, fills, baseline
        raise ReconcileError("the journal kept being trimmed while it was read: try again")

    def _baseline(self) -> dict[str, Decimal]:
        out = {}
        for name, value in self.r.hgetall(self.keys.reconcile).items():
            name = text(name)
            if name.startswith("baseline:"):
                out[name.split(":", 1)[1]] = Decimal(text(value))
        return out

    def set_baseline(self) -> dict[str, str]:
        """Take the broker's positions now, less what the books explain, as the account's positions
        from before the fleet (so that a fleet started on a non-empty account shows no drift)."""
        positions = self.client.list_positions()
        external = self._external_fills([], apply=False)
        baseline: dict[str, Decimal] = {}

        def write(pipe: Any) -> None:  # watched: a journal trim folding fills meanwhile makes it retry
            _coids, fills = self._journal()
            baseline.clear()
            baseline.update({p.symbol: p.qty - fills.get(p.symbol, Decimal(0)) - external.get(p.symbol, Decimal(0))
                             for p in positions})
            names = [n for n in pipe.hkeys(self.keys.reconcile) if text(n).startswith("baseline:")]
            pipe.multi()
            for name in names:
                pipe.hdel(self.keys.reconcile, name)
            for symbol, qty in baseline.items():
                if qty:
                    pipe.hset(self.keys.reconcile, f"baseline:{symbol}", decimal_text(qty))

        self.r.transaction(write, self.keys.reconcile)
        return {symbol: decimal_text(qty) for symbol, qty in baseline.items() if qty}

    def _stale_reservations(self, orders: list[Order], journaled: set[str], now: float, apply: bool) -> list[str]:
        open_ids = {o.client_order_id for o in orders if not o.is_terminal}
        stale = [res.client_order_id for res in self.ledger.reservations()
                 if not res.settled and now - res.created_at > self.config.stale_reservation
                 and res.client_order_id not in open_ids
                 and (res.client_order_id in journaled or not self._pending_somewhere(res.client_order_id))]
        if apply:
            for coid in stale:
                self.ledger.release(coid)
        return stale

    def _pending_somewhere(self, coid: str) -> bool:
        """A POST of it with an unknown outcome is still being resolved by a worker."""
        return bool(self.r.hexists(self.keys.unresolved, coid))

    def _store(self, report: ReconcileReport, orders: list[Order], now: float) -> None:
        # the next run starts at the oldest order not judged yet (open, or final too recently)
        unjudged = [_epoch(o.submitted_at or o.created_at) for o in orders if not _settled(o, now - self.config.settle)]
        next_since = min([t for t in unjudged if t is not None] or [now - self.config.settle - 60])
        summary = {"at": repr(now), "next_since": repr(next_since), "adopted": len(report.adopted),
                   "external": len(report.external), "drift": json.dumps(report.position_drift),
                   "released": len(report.released), "unadoptable": len(report.unadoptable)}
        self.r.hset(self.keys.reconcile, mapping={k: str(v) for k, v in summary.items()})
        self.r.set(self.keys.reconciled, repr(now))

    def forget_reconciled(self) -> None:
        self.r.delete(self.keys.reconciled)


def signal_of(coid: str) -> tuple[str, str] | None:
    """(source stream, source id) of a client_order_id made by ``client_order_id``; None for the
    hashed form (it names no stream) or anything else."""
    if not coid.startswith(COID_PREFIX):
        return None
    parts = coid[len(COID_PREFIX):].rsplit("-", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    stream, source_id = parts[0], f"{parts[1]}-{parts[2]}"
    return (stream, source_id) if client_order_id(stream, source_id) == coid else None


def _settled(order: Order, before: float) -> bool:
    updated = _epoch(order.updated_at) or _epoch(order.created_at) or 0.0
    return order.done_for_today and updated <= before


def _external(order: Order) -> dict[str, str]:
    return {"order_id": order.id, "client_order_id": order.client_order_id, "symbol": order.symbol,
            "side": order.side, "status": order.status, "filled_qty": decimal_text(order.filled_qty),
            "filled_avg_price": decimal_text(order.filled_avg_price) if order.filled_avg_price is not None else ""}


def _signed_fills(rows: Iterable[Mapping[str, str]]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for row in rows:
        qty = Decimal(row.get("filled_qty") or "0")
        if qty:
            sign = 1 if row.get("side") == "buy" else -1
            out[row["symbol"]] = out.get(row["symbol"], Decimal(0)) + sign * qty
    return out


def _epoch(at: datetime | None) -> float | None:
    return at.timestamp() if at is not None else None

