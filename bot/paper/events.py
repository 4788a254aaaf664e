"""Order events of the paper exchange, as Alpaca's ``trade_updates`` stream carries them, and the
hub that hands them to every connected stream client (the exchange publishes under its lock from
any thread; each client reads its own asyncio queue)."""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# order status -> the trade_updates event that reports the change (Alpaca's names)
EVENT_OF_STATUS = {
    "accepted": "accepted", "pending_new": "pending_new", "new": "new", "partially_filled": "partial_fill",
    "filled": "fill", "canceled": "canceled", "expired": "expired", "rejected": "rejected",
    "replaced": "replaced", "pending_cancel": "pending_cancel", "pending_replace": "pending_replace",
    "done_for_day": "done_for_day", "calculated": "calculated", "stopped": "stopped", "suspended": "suspended",
}


@dataclass(frozen=True)
class TradeEvent:
    """One ``trade_updates`` message: the event, the whole order as REST shows it, its time, and on
    fills this execution's price and qty and the position after it."""

    event: str
    order: dict[str, Any]
    timestamp: str
    execution: dict[str, str] = field(default_factory=dict)  # price, qty, position_qty, execution_id
    at: float = field(default_factory=time.monotonic)  # when it happened here (for delayed delivery)

    def message(self) -> dict[str, Any]:
        data: dict[str, Any] = {"event": self.event, "timestamp": self.timestamp, "order": self.order}
        data.update(self.execution)
        return {"stream": "trade_updates", "data": data}


class Subscriber:
    """One stream connection's inbox; filled from any thread, read on the connection's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[TradeEvent] = asyncio.Queue()
        self.listening = False  # subscribed to trade_updates (a listen message named it)

    def deliver(self, event: TradeEvent) -> None:
        with contextlib.suppress(RuntimeError):  # the connection's loop is closed: it is going away
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class EventHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[Subscriber] = set()
        self.published = 0

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> Subscriber:
        subscriber = Subscriber(loop)
        with self._lock:
            self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, event: TradeEvent) -> None:
        with self._lock:
            self.published += 1
            targets = list(self._subscribers)
        for subscriber in targets:
            subscriber.deliver(event)
