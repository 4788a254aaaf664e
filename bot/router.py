"""The signal router: source streams -> validated signals on ``tradebot:signals``, bad ones -> DLQ.

Each source entry is read through the consumer group ``keys.router_group`` and ends as exactly one
``tradebot:signals`` entry or one ``tradebot:dlq`` entry; both writes XACK the source in the same
Lua script, guarded by the markers ``keys.routed(stream, id)`` and ``keys.done(stream, id)``, so two
routers racing on one entry (a reclaim, a replay after a crash) cannot route or dead-letter it twice.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from bot.config import Settings
from bot.consumer import ConsumerLoop, Round
from bot.redisconn import connect
from bot.retention import trim_dlq, trim_journal
from bot.signals import Signal, SignalError, parse_control, parse_raw
from bot.streams import (
    GroupReader,
    autoclaim,
    dead_letter,
    default_consumer_name,
    delete_consumer_if_idle,
    delivery_count,
    ensure_group,
    reap_idle_consumers,
    record_once,
    trim_acknowledged,
)

log = logging.getLogger(__name__)

ROUTED, DEAD, DUPLICATE, RETRY = "routed", "dead", "duplicate", "retry"


ROLE = "router"  # default consumer names are router-<host>-<pid>


@dataclass(frozen=True)
class TrimPolicy:
    """What the router's maintenance trims (docs/architecture.md "Retention"); 0/None = no bound.

    Source streams and ``tradebot:signals``: acknowledged entries beyond about ``maxlen`` or older
    than ``min_age_s`` (never one some group still needs). The journal and the DLQ: entries older
    than ``journal_age``/``dlq_age`` or beyond ``journal_maxlen``/``dlq_maxlen``.
    """

    maxlen: int | None = None
    min_age_s: float | None = None
    interval_s: float = 60.0
    journal_age: float = 0.0
    journal_maxlen: int = 0
    dlq_age: float = 0.0
    dlq_maxlen: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, *, maxlen: int | None = None, min_age_s: float | None = None,
                      interval_s: float = 60.0) -> TrimPolicy:
        """The settings' retention; ``maxlen``/``min_age_s`` (the router's flags) win for the streams."""
        return cls(maxlen=maxlen, min_age_s=min_age_s if min_age_s is not None else (settings.stream_retention or None),
                   interval_s=interval_s, journal_age=settings.journal_retention,
                   journal_maxlen=settings.journal_maxlen, dlq_age=settings.dlq_retention,
                   dlq_maxlen=settings.dlq_maxlen)

    @property
    def streams(self) -> bool:
        return self.maxlen is not None or self.min_age_s is not None

    @property
    def enabled(self) -> bool:
        return self.streams or any((self.journal_age, self.journal_maxlen, self.dlq_age, self.dlq_maxlen))


class Router:
    """Routes source entries; ``step()`` does one read-and-route round, ``run(stop)`` loops forever."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: redis.Redis | None = None,
        consumer: str | None = None,
        from_start: bool = False,
        block_ms: int | None = 2000,
        batch: int = 100,
        trim: TrimPolicy | None = None,
        max_deliveries: int = 5,
        claim_idle_ms: int = 60_000,
        maintenance_interval_s: float = 30.0,
        consumer_idle_ms: int = 3_600_000,
        backoff_cap_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.group = self.keys.router_group
        # the control stream is a source too: the operator's flatten and cancel-all become signals
        self.streams = (*settings.source_streams, self.keys.control)
        self.consumer = consumer or default_consumer_name(ROLE)
        # bytes client: source payloads are untrusted and need not be UTF-8
        self.r = client if client is not None else connect(
            settings.redis_url, decode=False, socket_timeout=(block_ms or 0) / 1000 + 10)
        self.from_start = from_start
        self.trim_policy = trim if trim is not None else TrimPolicy.from_settings(settings)
        self.max_deliveries = max_deliveries
        self.claim_idle_ms = claim_idle_ms
        self.maintenance_interval_s = maintenance_interval_s
        self.consumer_idle_ms = consumer_idle_ms
        self.backoff_cap_s = backoff_cap_s
        self.clock = clock
        self.reader = GroupReader(self.streams, self.group, self.consumer, count=batch, block_ms=block_ms)
        self.counts = {ROUTED: 0, DEAD: 0, DUPLICATE: 0, RETRY: 0}
        self._groups_ready = False
        self.loop = ConsumerLoop(f"router {self.consumer}", backoff_cap_s)
        self._next_maintenance = 0.0  # monotonic; 0 = due now
        self._next_trim = 0.0
        self._failures: dict[tuple[str, str], str] = {}  # last routing error per pending entry

    # ------------------------------------------------------------------ the loop

    def setup(self) -> None:
        """Create the consumer group on each source stream: entries of the last max_signal_age
        seconds on, or all of them with from_start.

        After an outage a missing group is created at ``0``: Redis lost it (restart without data),
        so whatever is in the stream now arrived since and must not be skipped.
        """
        # a new group starts max_signal_age back, not at "$": a signal written just before the
        # router's first start is routed, an older one would only be skipped as too old anyway
        age = self.settings.max_signal_age
        recent = f"{max(int((self.clock() - age) * 1000), 0)}-0" if math.isfinite(age) else "0"
        start = "0" if self.from_start or self.outages else recent
        for stream in self.streams:
            # an operator's control entry written before the first router start still runs
            ensure_group(self.r, stream, self.group, "0" if stream == self.keys.control else start)
        self._groups_ready = True

    def step(self) -> int:
        """One round: maintenance when due, then read (own pending first) and handle a batch."""
        if not self._groups_ready:
            self.setup()
        if time.monotonic() >= self._next_maintenance:
            self.maintain()
        if self.trim_policy.enabled and time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + self.trim_policy.interval_s
            self.trim()
        entries = self.reader.read(self.r)
        replayed = self.reader.last_replayed
        for entry in entries:
            self.handle(entry.stream, entry.id, entry.fields, check_deliveries=(entry.stream, entry.id) in replayed)
        return len(entries)

    def run(self, stop: threading.Event) -> None:
        """Route until ``stop`` is set. Redis outages are logged and retried with capped backoff."""
        log.info("router %s: %s -> %s (group %s, from_start=%s)", self.consumer, ",".join(self.streams),
                 self.keys.signals, self.group, self.from_start)

        def one_round() -> Round:
            self.step()
            return Round.OK

        def recover() -> None:  # Redis may have restarted without its data: re-create groups, replay the own PEL
            self._groups_ready = False
            self.reader.replay_pending()

        self.loop.run(stop, one_round, recover)
        self.close()

    @property
    def outages(self) -> int:
        """Failed rounds of run() survived (Redis down, a bug)."""
        return self.loop.errors

    def close(self) -> None:
        """Leave the group cleanly: forget this consumer where it has nothing pending."""
        for stream in self.streams:
            try:
                delete_consumer_if_idle(self.r, stream, self.group, self.consumer)
            except redis.RedisError as exc:
                log.info("router %s: could not remove consumer from %s: %s", self.consumer, stream, exc)
        log.info("router %s stopped: %s", self.consumer, self.counts)

    # ------------------------------------------------------------------ one entry

    def handle(self, stream: str, entry_id: str, fields: Mapping[Any, Any], *, check_deliveries: bool = False) -> str:
        """Route, dead-letter or (on a Redis write error) leave one entry pending; returns which.
        Never raises for a payload; raises only when Redis is unreachable."""
        key = (stream, entry_id)
        try:
            outcome = self._handle(stream, entry_id, fields, check_deliveries)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except redis.ResponseError as exc:
            # Redis refused a write (OOM, a key of the wrong type...): not the payload's fault.
            # Leave it pending; the reclaim retries it and dead-letters it after max_deliveries.
            if len(self._failures) > 10_000:  # entries reclaimed by other routers never clear theirs
                self._failures.clear()
            self._failures[key] = f"redis error: {exc}"
            self.counts[RETRY] += 1
            log.error("router %s: could not route %s %s (will retry): %s", self.consumer, stream, entry_id, exc)
            return RETRY
        except Exception as exc:  # a bug: the last resort keeps the entry, with the reason, in the DLQ
            log.exception("router %s: internal error on %s %s", self.consumer, stream, entry_id)
            outcome = self._dead(stream, entry_id, fields, f"internal error: {type(exc).__name__}: {exc}"[:500])
        self._failures.pop(key, None)
        return outcome

    def _handle(self, stream: str, entry_id: str, fields: Mapping[Any, Any], check_deliveries: bool) -> str:
        if check_deliveries:
            deliveries = delivery_count(self.r, stream, self.group, entry_id)
            if deliveries > self.max_deliveries:
                last_error = self._failures.get((stream, entry_id), "no error recorded by this router")
                return self._dead(stream, entry_id, fields,
                                  f"failed to route after {deliveries} deliveries: {last_error}", deliveries)
        parse = parse_control if stream == self.keys.control else parse_raw
        try:
            signal = parse(fields, source_stream=stream, source_id=entry_id,
                           symbols=self.settings.symbols, routed_at=self.clock())
        except SignalError as exc:
            return self._dead(stream, entry_id, fields, exc.reason)
        if signal.received_at is not None and check_deliveries:
            # timed by its receipt (its id is ahead of the clock): a redelivery cannot know when it
            # first arrived, and this receipt would make an old signal look fresh
            return self._dead(stream, entry_id, fields, "entry id ahead of the router's clock and delivered "
                              "again: when it first arrived is unknown, so its age cannot be judged")
        return self._route(signal)

    def _route(self, signal: Signal) -> str:
        written, _ = record_once(
            self.r, marker=self.keys.routed(signal.source_stream, signal.source_id), stream=self.keys.signals,
            fields=signal.to_fields(), ack_stream=signal.source_stream, group=self.group,
            entry_id=signal.source_id, guards=[self.keys.done(signal.source_stream, signal.source_id)],
            ttl=self.settings.marker_ttl, pending_only=True)
        if not written:
            self.counts[DUPLICATE] += 1
            log.info("router %s: %s %s was already routed or dead-lettered; acked", self.consumer,
                     signal.source_stream, signal.source_id)
            return DUPLICATE
        self.counts[ROUTED] += 1
        log.debug("routed %s %s: %s %s qty=%s", signal.source_stream, signal.source_id, signal.side,
                  signal.ticker, signal.qty if signal.qty is not None else "auto")
        return ROUTED

    def _dead(self, stream: str, entry_id: str, fields: Mapping[Any, Any], reason: str,
              deliveries: int | None = None) -> str:
        if deliveries is None:
            deliveries = max(delivery_count(self.r, stream, self.group, entry_id), 1)
        written = dead_letter(
            self.r, self.keys, ack_stream=stream, group=self.group, entry_id=entry_id, source_stream=stream,
            source_id=entry_id, reason=reason, deliveries=deliveries, raw_fields=fields,
            guard_keys=[self.keys.routed(stream, entry_id)], consumer=self.consumer, ttl=self.settings.marker_ttl,
            pending_only=True)
        if not written:
            self.counts[DUPLICATE] += 1
            log.info("router %s: %s %s was already routed or dead-lettered; acked", self.consumer, stream, entry_id)
            return DUPLICATE
        self.counts[DEAD] += 1
        log.warning("dead-lettered %s %s: %s", stream, entry_id, reason)
        return DEAD

    # ------------------------------------------------------------------ maintenance

    def maintain(self) -> None:
        """Reclaim idle entries (dead routers', and own failed ones), forget long-idle consumers
        with nothing pending. (Trimming has its own interval: see step.)"""
        self._next_maintenance = time.monotonic() + self.maintenance_interval_s
        self.reclaim()
        self.reap_consumers()

    def reclaim(self) -> int:
        handled = 0
        for stream in self.streams:
            for entry_id, fields in autoclaim(self.r, stream, self.group, self.consumer, self.claim_idle_ms,
                                              count=self.reader.count):
                self.handle(stream, entry_id, fields, check_deliveries=True)
                handled += 1
        return handled

    def reap_consumers(self) -> int:
        """Forget other routers idle longer than consumer_idle_ms with nothing pending; how many."""
        return sum(len(reap_idle_consumers(self.r, stream, self.group, self.consumer_idle_ms, keep=self.consumer))
                   for stream in self.streams)

    def trim(self) -> int:
        """Trim the source streams and the signals stream behind what their groups acknowledged, and
        the journal and the DLQ by their retention; how many entries went."""
        policy = self.trim_policy
        removed = 0
        if policy.streams:
            min_age_ms = int(policy.min_age_s * 1000) if policy.min_age_s is not None else None
            pairs = [*((s, self.group) for s in self.streams), (self.keys.signals, self.keys.workers_group)]
            for stream, group in pairs:
                removed += trim_acknowledged(self.r, stream, [group], policy.maxlen, min_age_ms=min_age_ms)
        removed += trim_journal(self.r, self.keys, policy.journal_age, policy.journal_maxlen)
        removed += trim_dlq(self.r, self.keys, policy.dlq_age, policy.dlq_maxlen)
        if removed:
            log.info("router %s: trimmed %d entries", self.consumer, removed)
        return removed
