"""The journal as the operator sees it: the last orders, newest first."""
from __future__ import annotations

import redis

from bot.codec import display, display_fields
from bot.keys import Keys

LAST_ORDERS = 5


def orders_after(r: redis.Redis, keys: Keys, after: str, n: int = 100) -> list[dict[str, str]]:
    """Journal entries written after the entry ``after``, oldest first."""
    return [{"id": display(entry_id), **display_fields(fields or {})}
            for entry_id, fields in r.xrange(keys.orders, min=f"({after}", count=n) or []]


def last_orders(r: redis.Redis, keys: Keys, n: int = LAST_ORDERS) -> list[dict[str, str]]:
    """The newest ``n`` journal entries, newest first, each with its stream ``id``."""
    return [{"id": display(entry_id), **display_fields(fields or {})}
            for entry_id, fields in r.xrevrange(keys.orders, count=n) or []]
