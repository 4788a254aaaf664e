"""The journal as the operator sees it: the last orders, newest first."""
from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import fields
from datetime import datetime, timezone

import redis

from bot.codec import display, display_fields
from bot.journal import JournalEntry
from bot.keys import Keys
from bot.ops.errors import OpsInputError

LAST_ORDERS = 5


def orders_after(r: redis.Redis, keys: Keys, after: str, n: int = 100) -> list[dict[str, str]]:
    """Journal entries written after the entry ``after``, oldest first."""
    return [{"id": display(entry_id), **display_fields(fields or {})}
            for entry_id, fields in r.xrange(keys.orders, min=f"({after}", count=n) or []]


def last_orders(r: redis.Redis, keys: Keys, n: int = LAST_ORDERS) -> list[dict[str, str]]:
    """The newest ``n`` journal entries, newest first, each with its stream ``id``."""
    return [{"id": display(entry_id), **display_fields(fields or {})}
            for entry_id, fields in r.xrevrange(keys.orders, count=n) or []]


FORMATS = ("table", "json", "csv", "jsonl")
# the export's columns: the journal entry id, then every journal field in its documented order
COLUMNS = ("id", *(f.name for f in fields(JournalEntry) if f.name != "journal_id"))
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: an ISO time (``2026-12-01``, ``2026-12-01T14:00:00Z``), Unix seconds, or a span
    back from now (``90s``, ``30m``, ``12h``, ``7d``). OpsInputError otherwise."""
    now = time.time() if now is None else now
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise OpsInputError(f"--since {text!r}: give an ISO time (2026-12-01T14:00:00Z), Unix seconds, "
                            "or a span like 30m, 12h, 7d") from None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def orders_since(r: redis.Redis, keys: Keys, since: float, page: int = 1000) -> Iterator[dict[str, str]]:
    """Every journal entry written at or after ``since`` (Unix seconds), oldest first."""
    low = f"{max(0, int(since * 1000))}-0"
    while True:
        rows = r.xrange(keys.orders, min=low, count=page) or []
        for entry_id, row in rows:
            yield {"id": display(entry_id), **display_fields(row or {})}
        if len(rows) < page:
            return
        low = f"({display(rows[-1][0])}"


def export_orders(entries: Iterable[dict[str, str]], fmt: str) -> str:
    """The entries as ``json`` (one array), ``jsonl`` (a line each) or ``csv`` (COLUMNS, header first)."""
    rows = list(entries)
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "jsonl":
        return "\n".join(json.dumps(row) for row in rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")
