"""Every Redis key and consumer-group name the fleet uses, built from one prefix.

No other module spells a key: ask a ``Keys`` instance. With ``hash_tag`` (a Redis Cluster URL) the
prefix is wrapped in braces, ``{tradebot}:signals``: every key then hashes to one slot, so the
scripts and transactions that touch several keys never cross slots (CROSSSLOT).
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "tradebot"


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX
    hash_tag: bool = False

    @property
    def head(self) -> str:
        """The first part of every key: the prefix, in braces when hash-tagged (unless it has them)."""
        if self.hash_tag and not has_hash_tag(self.prefix):
            return "{" + self.prefix + "}"
        return self.prefix

    def _k(self, *parts: str) -> str:
        return ":".join((self.head, *parts))

    # streams
    @property
    def signals(self) -> str:
        return self._k("signals")

    @property
    def dlq(self) -> str:
        return self._k("dlq")

    @property
    def orders(self) -> str:
        """The journal stream."""
        return self._k("orders")

    @property
    def order_events(self) -> str:
        """Every broker order event the listener saw (trade_updates, and back-fills over REST)."""
        return self._k("order_events")

    # broker order state, written by the listener
    def order_state(self, client_order_id: str) -> str:
        """Hash: an order's latest known state at the broker (only ever moves forward)."""
        return self._k("order", client_order_id)

    def order_wake(self, client_order_id: str) -> str:
        """List: a doorbell the listener rings when that order's state moved (its worker BLPOPs it)."""
        return self._k("wake", client_order_id)

    @property
    def unresolved(self) -> str:
        """Hash: client_order_id -> when a POST of it ended with an unknown outcome (it may exist)."""
        return self._k("unresolved")

    @property
    def notify(self) -> str:
        """Hash: the notifier's cursors (the last journal and DLQ entries it has read)."""
        return self._k("notify")

    @property
    def price_history(self) -> str:
        """Stream: every polled price (symbol, bid, ask, last, at) for `tradebot record`; only while
        TRADEBOT_PRICE_HISTORY is set, trimmed to that many seconds."""
        return self._k("price_history")

    @property
    def equity(self) -> str:
        """Stream: account equity and cash at the poller's account cadence, trimmed by age."""
        return self._k("equity")

    def heartbeat(self, process: str) -> str:
        """Hash: a process's last beat, pid, host, loop progress and last error (expires when it stops)."""
        return self._k("heartbeat", process)

    @property
    def external(self) -> str:
        """Hash: order id -> an order at the broker the fleet did not place (JSON), kept by reconciliation."""
        return self._k("external")

    @property
    def reconcile(self) -> str:
        """Hash: the last reconciliation (when, what it found, where the next starts) and the baseline."""
        return self._k("reconcile")

    @property
    def reconciled(self) -> str:
        """String: set by a completed reconciliation; workers started with --wait-reconcile buy only after it."""
        return self._k("reconciled")

    @property
    def listener(self) -> str:
        """Hash: the active order-updates listener's state (connected, last heard from the stream)."""
        return self._k("listener")

    @property
    def listener_lease(self) -> str:
        """String: who holds the one-per-account listener lease (a second listener is a standby)."""
        return self._k("listener", "lease")

    @property
    def control(self) -> str:
        """Stream: the operator's control signals (flatten, cancel-all), routed like any source."""
        return self._k("control")

    # consumer groups
    @property
    def router_group(self) -> str:
        return self._k("router")

    @property
    def workers_group(self) -> str:
        return self._k("workers")

    # market cache
    def prices(self, symbol: str) -> str:
        return self._k("prices", symbol.upper())

    @property
    def account(self) -> str:
        return self._k("account")

    @property
    def positions(self) -> str:
        return self._k("positions")

    @property
    def clock(self) -> str:
        return self._k("clock")

    @property
    def refresh_request(self) -> str:
        """Set by a worker after a fill: asks the poller to refresh account and positions now."""
        return self._k("refresh")

    # control
    @property
    def halt(self) -> str:
        """String: present = halted (the kill switch: no orders); value = reason."""
        return self._k("halt")

    @property
    def reduce_only(self) -> str:
        """String: present = reduce-only (only orders that shrink a position); value = reason."""
        return self._k("reduce_only")

    @property
    def breakers(self) -> str:
        """Hash: the circuit breakers' state (equity peak, the last trip, an operator's acknowledgement)."""
        return self._k("breakers")

    def orders_per_minute(self, minute: int) -> str:
        """Set: the client_order_ids sent in that minute (Unix minutes), for the order-rate breaker; expires."""
        return self._k("orders_minute", str(minute))

    def cooldown(self, symbol: str) -> str:
        """String with a ttl: present while ``symbol`` cools down after a fill."""
        return self._k("cooldown", symbol.upper())

    # shared state of the workers
    @property
    def ledger(self) -> str:
        """Hash of reservations: committed cash and shares of orders in flight."""
        return self._k("ledger")

    def ratelimit(self, bucket: str) -> str:
        return self._k("ratelimit", bucket)

    def done(self, source_stream: str, source_id: str) -> str:
        """Marker that a signal's journal entry is written (exactly-one-journal-entry guard)."""
        return self._k("done", source_stream, source_id)

    def routed(self, source_stream: str, source_id: str) -> str:
        """Marker that a source entry was routed to the signals stream (exactly-once routing guard)."""
        return self._k("routed", source_stream, source_id)


def has_hash_tag(key: str) -> bool:
    """Does Redis Cluster hash only part of ``key`` (a non-empty ``{...}``)?"""
    start = key.find("{")
    return start >= 0 and key.find("}", start + 1) > start + 1
