"""The journal (``tradebot:orders``): one entry per handled signal, written exactly once.

``record_outcome`` appends the entry, sets the signal's done marker and XACKs the consumed entry in
one Lua script, so a signal redelivered to a second worker (XAUTOCLAIM) can never be journaled twice.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

import redis

from bot import codec
from bot.keys import Keys
from bot.streams import DONE_TTL_SECONDS, record_once

log = logging.getLogger(__name__)

OUTCOMES = ("filled", "partially_filled", "canceled", "expired", "rejected", "skipped")
_DECIMALS = ("qty", "filled_qty", "filled_avg_price")
_TIMES = ("source_at", "routed_at", "claimed_at", "submitted_at", "final_at")
_TEXTS = ("reason", "client_order_id", "order_id", "status", "consumer")
# A stream entry's fields as a decoded client (str), a bytes client, or redis-py's typing gives them.
RawFields = Mapping[str, str] | Mapping[bytes, bytes] | Mapping[bytes | str, bytes | str]


@dataclass
class JournalEntry:
    """One journal entry. Every field is always written; an unknown value is the empty string."""

    source_stream: str
    source_id: str
    ticker: str
    side: str  # "buy" | "sell"
    outcome: str  # one of OUTCOMES
    reason: str = ""  # why, when not filled
    client_order_id: str = ""
    order_id: str = ""
    status: str = ""  # the broker's final order status
    qty: Decimal | None = None
    filled_qty: Decimal | None = None
    filled_avg_price: Decimal | None = None
    source_at: float | None = None  # unix seconds
    routed_at: float | None = None
    claimed_at: float | None = None
    submitted_at: float | None = None
    final_at: float | None = None
    consumer: str = ""  # the worker that handled it
    deliveries: int | None = None
    # found at the broker (a lookup, an event, a reconciliation) rather than placed by this delivery
    adopted: bool = False
    legs: str = ""  # protective legs of a bracket/OTO entry: JSON [{type, price, order_id, status}]
    journal_id: str | None = field(default=None, compare=False)  # set when read back; never written

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"journal outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")

    def to_fields(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in fields(self):
            if f.name == "journal_id":
                continue
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = ""
            elif isinstance(value, bool):
                out[f.name] = "1" if value else "0"
            elif f.name in _DECIMALS:
                # str() first: Decimal(0.1) would carry the float's binary noise into the journal
                out[f.name] = format(value if isinstance(value, Decimal) else Decimal(str(value)), "f")
            elif f.name in _TIMES:
                out[f.name] = repr(float(value))
            else:
                out[f.name] = str(value)
        return out

    @classmethod
    def from_fields(cls, raw: RawFields, journal_id: str | None = None) -> JournalEntry:
        """Parse a journal entry (str or bytes fields); unknown fields are ignored, absent ones empty."""
        text = {codec.text(k): codec.text(v) for k, v in raw.items()}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            value = text.get(f.name, "")
            if f.name == "journal_id":
                continue
            if f.name in _DECIMALS:
                kwargs[f.name] = codec.optional_decimal(f"journal field {f.name}", value)
            elif f.name in _TIMES:
                kwargs[f.name] = codec.optional_float(f"journal field {f.name}", value)
            elif f.name == "deliveries":
                kwargs[f.name] = int(value) if value else None
            elif f.name == "adopted":
                kwargs[f.name] = value == "1"
            else:
                kwargs[f.name] = value
        return cls(**kwargs, journal_id=journal_id)


def record_outcome(r: redis.Redis, keys: Keys, entry: JournalEntry, *, ack_stream: str, group: str,
                   entry_id: str, maxlen: int | None = None, ttl: int = DONE_TTL_SECONDS,
                   pending_only: bool = False) -> bool:
    """Journal ``entry`` and XACK ``entry_id`` of ``ack_stream`` atomically, once per signal
    (``pending_only``: and only while ``entry_id`` is still pending in ``group``).

    If ``keys.done(source_stream, source_id)`` exists (journaled or dead-lettered already) only
    the XACK happens and the answer is False.  Otherwise the entry is added to ``keys.orders``
    (``MAXLEN ~ maxlen`` when given), the marker is set to the journal id for ``ttl`` seconds,
    and the answer is True.
    """
    written, value = record_once(
        r, marker=keys.done(entry.source_stream, entry.source_id), stream=keys.orders, fields=entry.to_fields(),
        ack_stream=ack_stream, group=group, entry_id=entry_id, maxlen=maxlen, ttl=ttl, pending_only=pending_only)
    if written:
        entry.journal_id = value
        log.debug("journaled %s %s -> %s (%s)", entry.source_stream, entry.source_id, entry.outcome, value)
    else:
        log.info("signal %s %s already recorded (%s); acked %s %s only",
                 entry.source_stream, entry.source_id, value, ack_stream, entry_id)
    return written


def read_journal(r: redis.Redis, keys: Keys, last: int = 100) -> list[JournalEntry]:
    """The newest ``last`` journal entries, oldest first."""
    rows = r.xrevrange(keys.orders, count=last) or []
    return [JournalEntry.from_fields(fields or {}, journal_id=codec.text(entry_id))
            for entry_id, fields in reversed(rows)]


def count(r: redis.Redis, keys: Keys) -> int:
    return int(r.xlen(keys.orders))


def journal_entries(r: redis.Redis, keys: Keys, after: str = "-",
                    page: int = 1000) -> Iterator[tuple[str, JournalEntry]]:
    """Every journal entry after the entry id ``after`` ("-": from the first), oldest first, with its id;
    read a page at a time."""
    low = after if after == "-" else f"({after}"
    while True:
        rows = r.xrange(keys.orders, min=low, count=page) or []
        for entry_id, raw in rows:
            yield codec.text(entry_id), JournalEntry.from_fields(raw or {}, journal_id=codec.text(entry_id))
        if len(rows) < page:
            return
        low = f"({codec.text(rows[-1][0])}"
