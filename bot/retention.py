"""Retention of the journal and the dead-letter queue: trimmed by age and length, never by surprise.

The journal is what reconciliation compares the broker's positions with, so the fills of the entries
a trim removes are folded into the reconciliation baseline (``baseline:{symbol}`` in
``tradebot:reconcile``) in the same transaction: drift stays what it was. Source streams and
``tradebot:signals`` are trimmed by the router (``bot.streams.trim_acknowledged``), behind what every
group acknowledged.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import redis

from bot import codec, lua
from bot.codec import decimal_text
from bot.keys import Keys
from bot.streams import TRIM_CHUNK, delete_below, format_id, next_id, parse_id

log = logging.getLogger(__name__)

JOURNAL_CHUNK = 2000  # journal entries folded and trimmed per transaction
JOURNAL_CHUNKS = 10  # transactions per trim call at most: 20,000 entries a round
BASELINE = "baseline:"
TRIMMED_TO = "journal_trimmed_to"  # the journal's first kept id after the last trim (status, audits)


def trim_journal(r: redis.Redis, keys: Keys, max_age: float, maxlen: int, *, now: float | None = None,
                 chunks: int = JOURNAL_CHUNKS) -> int:
    """Remove journal entries older than ``max_age`` or beyond the newest ``maxlen``, folding their
    fills into the reconciliation baseline; how many went. At most ``chunks`` x JOURNAL_CHUNK a
    call, one transaction per chunk (the router's loop pauses for one chunk at a time)."""
    cutoff = _cutoff(r, keys.orders, max_age, maxlen, time.time() if now is None else now)
    removed = 0
    for _ in range(chunks if cutoff is not None else 0):
        went = _trim_journal_chunk(r, keys, str(cutoff))
        removed += went
        if went < JOURNAL_CHUNK:
            break
    if removed:
        log.info("journal: trimmed %d entries (older than %.0fs or beyond %d), fills folded into the baseline",
                 removed, max_age, maxlen)
    return removed


def _trim_journal_chunk(r: redis.Redis, keys: Keys, cutoff: str) -> int:
    removed = 0

    def fold_and_trim(pipe: redis.client.Pipeline) -> None:
        nonlocal removed
        rows = pipe.xrange(keys.orders, min="-", max=f"({cutoff}", count=JOURNAL_CHUNK) or []
        removed = len(rows)
        if not rows:
            return
        last = format_id(next_id(parse_id(codec.text(rows[-1][0]))))
        fills = _signed_fills(fields or {} for _id, fields in rows)
        baseline = {symbol: _decimal(pipe.hget(keys.reconcile, BASELINE + symbol)) for symbol in fills}
        pipe.multi()
        for symbol, qty in fills.items():
            pipe.hset(keys.reconcile, BASELINE + symbol, decimal_text(baseline[symbol] + qty))
        # written on every trim: a second trimmer that read the same rows sees the hash change and retries
        pipe.hset(keys.reconcile, TRIMMED_TO, last)
        # by id, not XTRIM MINID: see bot.streams.delete_below
        pipe.xdel(keys.orders, *(codec.text(entry_id) for entry_id, _fields in rows))

    r.transaction(fold_and_trim, keys.reconcile)
    return removed


def trim_dlq(r: redis.Redis, keys: Keys, max_age: float, maxlen: int, *, now: float | None = None) -> int:
    """Remove dead letters older than ``max_age`` or beyond the newest ``maxlen``; how many went."""
    cutoff = _cutoff(r, keys.dlq, max_age, maxlen, time.time() if now is None else now)
    if cutoff is None:
        return 0
    removed = delete_below(r, keys.dlq, cutoff)
    if removed:
        log.warning("dlq: trimmed %d dead letters (older than %.0fs or beyond %d)", removed, max_age, maxlen)
    return removed


def _cutoff(r: redis.Redis, stream: str, max_age: float, maxlen: int, now: float) -> str | None:
    """The lowest id to keep by either bound, None when neither removes anything."""
    bounds = []
    if max_age > 0:
        bounds.append((max(int((now - max_age) * 1000), 0), 0))
    if maxlen > 0:
        first_kept = lua.run(r, "stream_first_kept", [stream], [int(maxlen), TRIM_CHUNK])
        if first_kept:
            bounds.append(parse_id(codec.text(first_kept)))
    if not bounds or max(bounds) <= (0, 1):
        return None
    return format_id(max(bounds))


def _signed_fills(rows: Iterable[Mapping[Any, Any]]) -> dict[str, Decimal]:
    """Per ticker, bought minus sold, from raw journal entries (only the three fields it needs)."""
    fills: dict[str, Decimal] = {}
    for fields in rows:
        text = {codec.text(k): v for k, v in fields.items() if codec.text(k) in ("ticker", "side", "filled_qty")}
        qty = _decimal(text.get("filled_qty"))
        if qty:
            ticker = codec.text(text.get("ticker", ""))
            sign = 1 if codec.text(text.get("side", "")) == "buy" else -1
            fills[ticker] = fills.get(ticker, Decimal(0)) + sign * qty
    return fills


def _decimal(raw: Any) -> Decimal:
    try:
        return Decimal(codec.text(raw)) if raw not in (None, "", b"") else Decimal(0)
    except InvalidOperation:
        return Decimal(0)
