"""Intake: where the worker's next entry comes from, one at a time.

In order each round: the own PEL when this consumer (re)starts or Redis came back (what it held
then), entries idle past claim-idle (dead workers', XAUTOCLAIM) when a claim round is due, the
own pending entry whose replay is due, then new entries (XREADGROUP, blocking no longer than the
next replay). One at a time: a claimed entry waits in this worker's PEL only while it is handled.
The own PEL is read before the claim round, not after: reading history counts a delivery, so an
entry reclaimed and left pending in this round would otherwise be delivered again at once,
past its replay backoff.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import redis

from bot import lua
from bot.streams import GroupReader, autoclaim, delivery_count, reap_idle_consumers
from bot.worker.config import WorkerConfig
from bot.worker.records import Delivery
from bot.worker.replays import OwnReplays

log = logging.getLogger(__name__)


class Intake:
    def __init__(self, rb: redis.Redis, stream: str, group: str, config: WorkerConfig, replays: OwnReplays) -> None:
        self.rb, self.stream, self.group = rb, stream, group
        self.consumer = config.consumer
        self.config = config
        self.replays = replays
        self.reader = GroupReader(stream, group, self.consumer, count=1, block_ms=config.block_ms)
        self._next_claim = 0.0  # monotonic; 0 = due now

    def replay_pending(self) -> None:
        """Read the own PEL again first (Redis came back, maybe without the group)."""
        self.reader.replay_pending()

    def deliveries(self, stop: threading.Event) -> Iterator[Delivery]:
        """This round's entries; each is produced only after the one before it was handled."""
        yield from self.own_pel(stop)
        if stop.is_set():
            return
        if time.monotonic() >= self._next_claim:
            yield from self.reclaimed(stop)
        if stop.is_set():
            return
        replay = self.own_replay()  # at most one per round: new entries are read every round
        if replay is not None:
            yield replay
        if stop.is_set():
            return
        yield from self.read(stop)

    def reclaimed(self, stop: threading.Event, limit: int = 100) -> Iterator[Delivery]:
        """XAUTOCLAIM entries idle longer than claim_idle, one at a time; then forget dead consumers."""
        self._next_claim = time.monotonic() + self.config.claim_every
        min_idle_ms = int(self.config.claim_idle * 1000)
        for _ in range(limit):
            if stop.is_set():
                break
            claimed = autoclaim(self.rb, self.stream, self.group, self.consumer, min_idle_ms, count=1)
            if not claimed:
                break
            entry_id, fields = claimed[0]
            deliveries = delivery_count(self.rb, self.stream, self.group, entry_id)
            log.info("worker %s: reclaimed %s (delivery %d)", self.consumer, entry_id, deliveries)
            yield Delivery(entry_id, fields, max(deliveries, 1))
        reap_idle_consumers(self.rb, self.stream, self.group, int(self.config.consumer_idle * 1000),
                            keep=self.consumer)

    def own_replay(self) -> Delivery | None:
        """The own pending entry whose replay is due, delivered again (only while still this
        consumer's: one acked or reclaimed by another worker meanwhile is forgotten here)."""
        entry_id = self.replays.due()
        if entry_id is None:
            return None
        claimed = lua.run(self.rb, "replay_own", [self.stream], [self.group, self.consumer, entry_id])
        if claimed is None:
            self.replays.forget(entry_id)
            log.info("worker %s: %s is no longer pending here (done or reclaimed); not replaying it",
                     self.consumer, entry_id)
            return None
        deliveries, flat = int(claimed[0]), claimed[1]
        if not flat:
            self.replays.forget(entry_id)
            log.warning("worker %s: acked own pending entry %s: its data was deleted", self.consumer, entry_id)
            return None
        log.info("worker %s: replaying own pending %s (delivery %d)", self.consumer, entry_id, deliveries)
        return Delivery(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)), max(deliveries, 1))

    def own_pel(self, stop: threading.Event) -> Iterator[Delivery]:
        """After a (re)start or an outage: every entry still pending for this consumer, delivered again."""
        while self.reader.replaying and not stop.is_set():
            for entry in self.reader.read_pending(self.rb):
                deliveries = delivery_count(self.rb, self.stream, self.group, entry.id)
                yield Delivery(entry.id, entry.fields, max(deliveries, 1))

    def read(self, stop: threading.Event) -> Iterator[Delivery]:
        """XREADGROUP of new entries (the own PEL is drained by ``own_pel`` first)."""
        wait = self.replays.seconds_to_next()
        block_ms = self.config.block_ms
        self.reader.block_ms = block_ms if wait is None else max(1, min(block_ms, int(wait * 1000)))
        entries = self.reader.read(self.rb)
        if stop.is_set():  # stopped during the BLOCK: what was read stays pending and is replayed
            return
        for entry in entries:
            yield Delivery(entry.id, entry.fields, 1)
