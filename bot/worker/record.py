"""Record: the ledger settled or released, ONE journal entry with the XACK and, after a fill, the
poller's refresh ask and the symbol's cooldown: all in one script (``journal_record.lua``), one round
trip (or one DLQ entry).

Inside the script the settle still comes first: Lua does not roll back, so a journal entry (whose
done marker stops every replay) never stands beside an unsettled reservation.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import redis

from bot import lua
from bot.alpaca.models import Order
from bot.codec import decimal_text, text, text_or_none
from bot.journal import JournalEntry
from bot.keys import Keys
from bot.ledger import Ledger
from bot.market import REFRESH_ASKS_KEPT, MarketCache
from bot.streams import DONE_TTL_SECONDS, dead_letter, is_stream_id
from bot.worker.records import (
    DEAD,
    DUPLICATE,
    JOURNALED,
    DeadLetter,
    Duplicate,
    Final,
    Job,
    Placed,
    Rejected,
    Skip,
)

log = logging.getLogger(__name__)

NO_LEDGER: tuple[str, ...] = ("", "", "", "", "", "", "")  # journal_record.lua's ARGV[6..12]: leave the ledger


class Recorder:
    def __init__(self, *, r: redis.Redis, rb: redis.Redis, keys: Keys, consumer: str, ledger: Ledger,
                 market: MarketCache, order_timeout: float, clock: Callable[[], float],
                 marker_ttl: int = DONE_TTL_SECONDS, cooldown: float | None = None) -> None:
        self.r, self.rb, self.keys, self.consumer = r, rb, keys, consumer
        self.stream, self.group = keys.signals, keys.workers_group
        self.ledger, self.market = ledger, market
        self.order_timeout = order_timeout
        self.clock = clock
        self.marker_ttl = marker_ttl
        self.cooldown = cooldown  # seconds a symbol takes no new order after a fill (TRADEBOT_COOLDOWN)
        self.outcomes: dict[str, int] = {}  # journal outcome -> entries written by this worker
        self._record = lua.script(r, "journal_record")

    def final(self, job: Job, placed: Placed, final: Final) -> str:
        """A final order: settle what filled (or release the reservation), journal it, and after a fill
        ask for a refresh and start the symbol's cooldown: one script."""
        order = final.order
        outcome, reason = outcome_of(order, final.canceled_by_us, self.order_timeout)
        if final.canceled_by_us and final.stopping and outcome == "canceled":
            reason = "canceled unfilled: the worker was stopping"
        filled = order.filled_qty > 0
        ledger = self._release(job.coid)
        if filled:
            settle = self.ledger.settle_args(job.coid, order.filled_qty, order.filled_avg_price)
            if settle is None:  # no reservation, and without a fill price nothing to settle it from
                self.ledger.settled(job.coid, "missing", order.filled_qty)
                ledger = NO_LEDGER
            else:
                ledger = ("settle", *settle)
        cooldown = ""
        if filled and self.cooldown and job.signal.control is None:
            cooldown = order.symbol or job.signal.ticker
        return self._journal(job, outcome, reason=reason, order=order, qty=placed.qty,
                             submitted_at=placed.submitted_at, final_at=final.final_at, adopted=placed.adopted,
                             legs=legs_of(order, job.signal), ledger=ledger, refresh=filled, cooldown=cooldown)

    def skipped(self, job: Job, skip: Skip) -> str:
        """No order: a reservation of an earlier delivery (crash before the submit) goes too."""
        return self._journal(job, "skipped", reason=skip.reason, qty=skip.qty, ledger=self._release(job.coid))

    def canceled_all(self, job: Job, reason: str) -> str:
        """A cancel-all control signal: one journal entry saying what it canceled."""
        return self._journal(job, "canceled", reason=reason)

    def rejected(self, job: Job, rejected: Rejected) -> str:
        return self._journal(job, "rejected", reason=rejected.reason, qty=rejected.qty,
                             submitted_at=rejected.submitted_at, ledger=self._release(job.coid))

    @staticmethod
    def _release(coid: str) -> tuple[str, ...]:
        return ("release", coid, "", "0", "", "", "")

    def duplicate(self, duplicate: Duplicate) -> str:
        self.rb.xack(self.stream, self.group, duplicate.entry_id)
        log.info("worker %s: %s %s already journaled; acked %s", self.consumer, duplicate.source_stream,
                 duplicate.source_id, duplicate.entry_id)
        return DUPLICATE

    def dead_letter(self, dead: DeadLetter) -> str:
        if dead.release is not None:
            self.ledger.release(dead.release)
        delivery, signal = dead.delivery, dead.signal
        source_stream, source_id = ((signal.source_stream, signal.source_id) if signal is not None
                                    else _origin(delivery.fields, self.stream, delivery.entry_id))
        written = dead_letter(self.rb, self.keys, ack_stream=self.stream, group=self.group,
                              entry_id=delivery.entry_id, source_stream=source_stream, source_id=source_id,
                              reason=dead.reason, deliveries=delivery.deliveries, raw_fields=delivery.fields,
                              consumer=self.consumer, ttl=self.marker_ttl, pending_only=True)
        if not written:
            log.info("worker %s: %s %s already recorded; acked %s", self.consumer, source_stream, source_id,
                     delivery.entry_id)
            return DUPLICATE
        log.warning("worker %s: dead-lettered %s (%s %s): %s", self.consumer, delivery.entry_id, source_stream,
                    source_id, dead.reason)
        return DEAD

    def _journal(self, job: Job, outcome: str, *, reason: str = "", order: Order | None = None,
                 qty: Decimal | None = None, submitted_at: float | None = None, final_at: float | None = None,
                 adopted: bool = False, legs: str = "", ledger: tuple[str, ...] = NO_LEDGER, refresh: bool = False,
                 cooldown: str = "") -> str:
        """Journal the outcome (once per signal, with the XACK), after the ``ledger`` step (ARGV 6-12 of
        journal_record.lua), and then the refresh ask and the ``cooldown`` of that symbol when asked."""
        signal = job.signal
        entry = JournalEntry(
            source_stream=signal.source_stream, source_id=signal.source_id, ticker=signal.ticker,
            side=signal.side, outcome=outcome, reason=reason,
            client_order_id=job.coid if order is not None or outcome == "rejected" else "",
            order_id=order.id if order is not None else "",
            status=order.status if order is not None else "",
            qty=order.qty if order is not None and order.qty is not None else qty,
            filled_qty=order.filled_qty if order is not None else None,
            filled_avg_price=order.filled_avg_price if order is not None else None,
            source_at=signal.source_at, routed_at=signal.routed_at, claimed_at=job.claimed_at,
            submitted_at=submitted_at, final_at=final_at if final_at is not None else self.clock(),
            consumer=self.consumer, deliveries=job.deliveries, adopted=adopted, legs=legs)
        keys = self.keys
        marker = keys.done(signal.source_stream, signal.source_id)
        args: list[Any] = [self.group, job.entry_id, int(self.marker_ttl), "", "1", *ledger,
                           self.market.refresh_ask() if refresh else "", REFRESH_ASKS_KEPT,
                           repr(self.clock()) if cooldown else "", max(1, int((self.cooldown or 0) * 1000))]
        for name, value in entry.to_fields().items():
            args += [name, value]
        written, value, settled = lua.call(
            self.r, self._record, [marker, keys.orders, self.stream, keys.ledger, keys.refresh_request,
                                   keys.cooldown(cooldown or signal.ticker)], args)
        if ledger[0] == "settle":
            self.ledger.settled(job.coid, text(settled), entry.filled_qty or Decimal(0))
        if not int(written):
            log.info("worker %s: signal %s %s already recorded (%s); acked %s only", self.consumer,
                     signal.source_stream, signal.source_id, text(value), job.entry_id)
            return DUPLICATE
        entry.journal_id = text(value)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        level = logging.WARNING if outcome == "rejected" else logging.INFO
        order_text = f" (order {order.id}, {decimal_text(order.filled_qty)} filled)" if order is not None else ""
        log.log(level, "worker %s: %s %s %s: %s%s%s", self.consumer, signal.side, signal.ticker, signal.source_id,
                outcome, f" ({reason})" if reason else "", order_text)
        return JOURNALED


DONE_FOR_DAY = frozenset({"done_for_day", "calculated"})  # nothing more executes today (Alpaca's words)


def outcome_of(order: Order, canceled_by_us: bool = False, order_timeout: float = 0.0) -> tuple[str, str]:
    """Journal outcome and reason of a final order."""
    status, filled = order.status, order.filled_qty
    if status == "filled" or (status in DONE_FOR_DAY and order.qty is not None and filled >= order.qty > 0):
        return "filled", ""
    if status in DONE_FOR_DAY:
        if filled > 0:
            wanted = f" of {decimal_text(order.qty)}" if order.qty is not None else ""
            return "partially_filled", f"filled {decimal_text(filled)}{wanted}, done for the day"
        return "expired", "done for the day with nothing filled"
    if status in ("canceled", "expired", "replaced") and filled > 0:
        wanted = f" of {decimal_text(order.qty)}" if order.qty is not None else ""
        return "partially_filled", f"filled {decimal_text(filled)}{wanted}, the rest {status}"
    if status == "canceled":
        if canceled_by_us:
            return "canceled", f"not filled within the {order_timeout:g}s order timeout; canceled"
        return "canceled", "canceled by the broker with nothing filled (no liquidity for the IOC order?)"
    if status == "expired":
        return "expired", "expired with nothing filled"
    if status == "replaced":
        return "canceled", f"replaced by order {order.raw.get('replaced_by') or '?'}"
    # Alpaca's order carries no rejection reason (the trade_updates event and the order have none):
    # say what is known rather than invent a field
    reason = str(order.raw.get("reject_reason") or order.raw.get("reason") or
                 "rejected by the broker after it accepted the order (Alpaca gives no reason on the order)")
    return "rejected", reason


def _origin(fields: Mapping[Any, Any], stream: str, entry_id: str) -> tuple[str, str]:
    """The signal's source for an unparseable entry: its own fields when they look right, else the
    signals entry itself (so the done marker still guards the entry)."""
    by_name = {text_or_none(name): value for name, value in fields.items()}
    source_stream = text_or_none(by_name.get("source_stream", b"")) or ""
    source_id = text_or_none(by_name.get("source_id", b"")) or ""
    if source_stream and len(source_stream) <= 256 and is_stream_id(source_id):
        return source_stream, source_id
    return stream, entry_id


def legs_of(order: Order, signal: Any) -> str:
    """The protective legs of a bracket/OTO entry as JSON, for the journal: what the broker shows
    (type, price, order id, status) when its answer carries them, else what the signal asked for."""
    legs = order.raw.get("legs") if isinstance(order.raw, Mapping) else None
    if isinstance(legs, list) and legs:
        shown = [{"type": str(leg.get("type", "")), "limit_price": leg.get("limit_price"),
                  "stop_price": leg.get("stop_price"), "order_id": str(leg.get("id", "")),
                  "status": str(leg.get("status", ""))} for leg in legs if isinstance(leg, Mapping)]
        return json.dumps(shown)
    asked = []
    if getattr(signal, "take_profit", None) is not None:
        asked.append({"type": "take_profit", "limit_price": decimal_text(signal.take_profit)})
    if getattr(signal, "stop_loss", None) is not None:
        asked.append({"type": "stop_loss", "stop_price": decimal_text(signal.stop_loss)})
    return json.dumps(asked) if asked else ""
