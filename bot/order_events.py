"""Broker order events in Redis: the ``tradebot:order_events`` stream, each order's latest state at
the broker (forward only), the doorbell a waiting worker blocks on, and the listener's health.

The listener writes (``record``); workers read (``state``, ``wait``, ``listener_health``). An event
is recorded in one script: a duplicate changes nothing, a late or out-of-order one adds its stream
entry but never moves an order's state backwards (bot/lua/order_event_record.lua).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from bot import lua
from bot.alpaca.models import TERMINAL_STATUSES, Order, ts
from bot.keys import Keys

# an order's life, for ties of updated_at and filled qty (the paper broker reports accepted -> new
# -> fill within one microsecond); finals rank above everything
RANK = {"pending_new": 1, "accepted": 1, "accepted_for_bidding": 1, "held": 1, "new": 2, "calculated": 3,
        "partially_filled": 3, "done_for_day": 4, "pending_cancel": 4, "pending_replace": 4, "stopped": 4,
        "suspended": 4}
FINAL_RANK = 9
KEEP_EVENTS = 7 * 86400.0  # seconds of events kept in the stream
STATE_TTL = 3 * 86400.0  # seconds an order's state outlives its last event
STALE_AFTER = 15.0  # a listener not heard from this long is not trusted to report fills


@dataclass(frozen=True)
class OrderEvent:
    """One order event, from the trade_updates stream or synthesised from a REST back-fill."""

    event: str
    order: Mapping[str, Any]
    timestamp: str
    source: str = "stream"  # stream | backfill
    price: str | None = None  # fills: this execution
    qty: str | None = None
    position_qty: str | None = None
    execution_id: str | None = None

    @classmethod
    def from_message(cls, data: Any) -> OrderEvent | None:
        """A ``trade_updates`` message's data, read leniently (unknown fields ignored); None when it
        names no order we could key it by."""
        if not isinstance(data, Mapping) or not isinstance(data.get("order"), Mapping):
            return None
        order = data["order"]
        if not order.get("id") or not order.get("client_order_id"):
            return None
        return cls(event=str(data.get("event") or order.get("status") or ""), order=dict(order),
                   timestamp=str(data.get("timestamp") or order.get("updated_at") or ""),
                   price=_text(data.get("price")), qty=_text(data.get("qty")),
                   position_qty=_text(data.get("position_qty")), execution_id=_text(data.get("execution_id")))

    @classmethod
    def backfill(cls, order: Mapping[str, Any]) -> OrderEvent:
        """An order as REST shows it now, recorded as an event of source ``backfill``."""
        return cls(event="backfill", order=dict(order), timestamp=str(order.get("updated_at") or ""),
                   source="backfill")

    @property
    def client_order_id(self) -> str:
        return str(self.order.get("client_order_id") or "")

    @property
    def status(self) -> str:
        return str(self.order.get("status") or "")

    @property
    def final(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def updated(self) -> float:
        """The order's updated_at as epoch seconds (its created_at, or 0, when absent)."""
        for name in ("updated_at", "created_at"):
            try:
                at = ts(self.order.get(name))
            except ValueError:
                at = None
            if at is not None:
                return at.timestamp()
        return 0.0

    @property
    def identity(self) -> str:
        """Same for every delivery of one event; differs between events (a duplicate is dropped)."""
        if self.source == "backfill":
            return f"backfill:{self.updated:.6f}:{self.status}:{self.order.get('filled_qty')}"
        return f"{self.event}:{self.timestamp}:{self.execution_id or ''}"

    def entry(self) -> dict[str, str]:
        """The ``tradebot:order_events`` entry."""
        o = self.order
        fields = {"event": self.event, "client_order_id": self.client_order_id, "order_id": str(o.get("id") or ""),
                  "symbol": str(o.get("symbol") or ""), "side": str(o.get("side") or ""), "status": self.status,
                  "filled_qty": str(o.get("filled_qty") or "0"),
                  "filled_avg_price": str(o.get("filled_avg_price") or ""),
                  "at": self.timestamp, "source": self.source}
        for name in ("price", "qty", "position_qty", "execution_id"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        return fields


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _filled(order: Mapping[str, Any]) -> float:
    try:
        value = float(order.get("filled_qty") or 0)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


def progress(order: Order) -> tuple[int, float, Any, int]:
    """How far an order has come: final first, then later update, more filled, further in life."""
    updated = order.updated_at.timestamp() if order.updated_at is not None else 0.0
    return (int(order.is_terminal), updated, order.filled_qty,
            FINAL_RANK if order.is_terminal else RANK.get(order.status, 0))


def fresher(known: Order, seen: Order | None) -> Order:
    """The more advanced of two views of one order (``seen`` from the events, ``known`` from REST)."""
    if seen is None or seen.id != known.id:
        return known
    return seen if progress(seen) > progress(known) else known


@dataclass(frozen=True)
class ListenerHealth:
    live: bool
    why: str  # what is wrong when not live; what it is when live


class OrderEvents:
    def __init__(self, r: redis.Redis, keys: Keys, *, keep_events: float = KEEP_EVENTS,
                 state_ttl: float = STATE_TTL, stale_after: float = STALE_AFTER,
                 now: Callable[[], float] = time.time) -> None:
        self.r, self.keys = r, keys
        self.keep_events, self.state_ttl, self.stale_after, self.now = keep_events, state_ttl, stale_after, now
        self._record = lua.script(r, "order_event_record")

    # ------------------------------------------------------------------ the listener writes

    def record(self, event: OrderEvent) -> tuple[bool, bool]:
        """(added to the stream, moved the order's state): duplicates add nothing; a back-fill that
        tells nothing new adds nothing either."""
        coid = event.client_order_id
        entry = [part for pair in event.entry().items() for part in pair]
        state = {"status": event.status, "event": event.event, "order_id": str(event.order.get("id") or ""),
                 "order": json.dumps(event.order, separators=(",", ":"), default=str), "at": event.timestamp}
        minid = f"{int((self.now() - self.keep_events) * 1000)}-0" if self.keep_events > 0 else ""
        rank = FINAL_RANK if event.final else RANK.get(event.status, 0)
        added, moved = self._record(
            keys=[self.keys.order_events, self.keys.order_state(coid), self.keys.order_wake(coid)],
            args=[event.identity, f"{event.updated:.6f}", int(event.final), repr(_filled(event.order)), rank, minid,
                  int(self.state_ttl * 1000), int(event.source == "stream"), len(entry), *entry,
                  *[part for pair in state.items() for part in pair]])
        return bool(added), bool(moved)

    def mark_listener(self, holder: str, state: str, *, heard: bool = False, **fields: Any) -> None:
        """The listener's own record: ``state`` (connecting, live, standby, down), when the stream
        was last heard from, and anything else worth showing (error, backfilled_at, ...)."""
        values: dict[str, Any] = {"holder": holder, "state": state, "updated_at": repr(self.now()), **fields}
        if heard:
            values["heard_at"] = repr(self.now())
        # kept after the listener is gone: heard_at says how stale it is, and where a back-fill starts
        self.r.hset(self.keys.listener, mapping={k: str(v) for k, v in values.items()})

    def last_heard(self) -> float | None:
        """When the active listener last heard from the stream (wall time), or None."""
        try:
            return float(self.r.hget(self.keys.listener, "heard_at") or "") or None
        except ValueError:
            return None

    # ------------------------------------------------------------------ unknown outcomes

    def mark_unknown(self, client_order_id: str) -> float:
        """A POST of this order ended without an answer: it may exist. Returns since when (the
        first such POST's time; a later one keeps it)."""
        now = self.now()
        self.r.hsetnx(self.keys.unresolved, client_order_id, repr(now))
        return self.unknown_since(client_order_id) or now

    def unknown_since(self, client_order_id: str) -> float | None:
        """When a POST of this order first ended with an unknown outcome; None when none did."""
        raw = self.r.hget(self.keys.unresolved, client_order_id)
        try:
            return float(raw) if raw else None
        except ValueError:
            return None

    def resolve(self, client_order_id: str) -> None:
        """The order's fate is known (found, or journaled): no longer unresolved."""
        self.r.hdel(self.keys.unresolved, client_order_id)

    def unresolved(self) -> dict[str, float]:
        raw: dict[str, str] = self.r.hgetall(self.keys.unresolved)  # type: ignore[assignment]
        out = {}
        for coid, since in raw.items():
            try:
                out[coid] = float(since)
            except ValueError:
                continue
        return out

    # ------------------------------------------------------------------ workers read

    def state(self, client_order_id: str) -> Order | None:
        """The order's latest state as the listener recorded it; None when nothing was recorded."""
        raw = self.r.hget(self.keys.order_state(client_order_id), "order")
        if not raw:
            return None
        return Order.from_json(json.loads(raw))

    def wait(self, client_order_id: str, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for the order's doorbell: True when its state moved."""
        if timeout <= 0:
            return False
        # BLPOP's timeout is whole or fractional seconds; 0 would mean forever
        return self.r.blpop([self.keys.order_wake(client_order_id)], timeout=max(0.01, timeout)) is not None

    def listener_health(self) -> ListenerHealth:
        raw: dict[str, str] = self.r.hgetall(self.keys.listener)  # type: ignore[assignment]
        if not raw:
            return ListenerHealth(False, "no order-updates listener is running")
        state = raw.get("state", "")
        if state != "live":
            error = raw.get("error")
            return ListenerHealth(False, f"the order-updates listener is {state}" + (f": {error}" if error else ""))
        try:
            age = self.now() - float(raw.get("heard_at") or 0)
        except ValueError:
            age = math.inf
        if age > self.stale_after:
            return ListenerHealth(False, f"the order-updates stream was last heard from {age:.0f}s ago")
        return ListenerHealth(True, f"listener {raw.get('holder', '?')} live")
