"""Triage: what an entry is before anything is decided: parseable, already recorded, delivered too
often, or delivered before (then its order may exist and is looked up, never sized twice)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bot.alpaca.errors import AlpacaError
from bot.alpaca.models import Order
from bot.keys import Keys
from bot.ledger import Ledger
from bot.market import MarketCache
from bot.order_events import OrderEvents
from bot.signals import Signal, SignalError
from bot.worker.policy import TRANSIENT
from bot.worker.records import DeadLetter, Delivery, Duplicate, Job, Skip, Verdict
from bot.worker.replays import OwnReplays

log = logging.getLogger(__name__)


class Triage:
    def __init__(self, *, keys: Keys, market: MarketCache, client: Any, ledger: Ledger, replays: OwnReplays,
                 max_deliveries: int, clock: Callable[[], float], events: OrderEvents) -> None:
        self.keys, self.market, self.client, self.ledger, self.events = keys, market, client, ledger, events
        self.replays = replays
        self.max_deliveries = max_deliveries
        self.clock = clock

    def examine(self, delivery: Delivery) -> Job | Verdict:
        """A Job to decide on (with its order when one exists), or a Verdict: duplicate or DLQ."""
        claimed_at = self.clock()
        try:
            signal = Signal.from_fields(delivery.fields)
        except SignalError as exc:
            return DeadLetter(delivery, f"unusable signal: {exc.reason}")
        done = self.keys.done(signal.source_stream, signal.source_id)
        # done marker, trading state, clock, price, account, position: one round trip
        market = self.market.snapshot(signal.ticker, (done, *self._gate_keys(signal)))
        if market.exists(done):
            return Duplicate(delivery.entry_id, signal.source_stream, signal.source_id)
        job = Job(delivery.entry_id, signal, signal.coid, delivery.deliveries, claimed_at, market)
        if delivery.deliveries > self.max_deliveries:
            return self._over_delivered(job, delivery)
        if job.seen_before:
            # delivered before (or a replay keeping its original's order): the order may exist;
            # never size a second one
            existing = self.lookup(job.coid)
            if existing is not None:
                return replace(job, existing=existing)
            # the lookup took time: the checks read the cache afresh
            job = replace(job, market=self.market.snapshot(signal.ticker, self._gate_keys(signal)))
        return job

    def resnapshot(self, job: Job, *, wait_positions: float = 0.0) -> Job:
        """The job with a fresh snapshot; with ``wait_positions``, first (at most that long) until
        the poller has read the positions again (asked for at once)."""
        if wait_positions > 0:
            since = self.clock()
            self.market.request_refresh()
            deadline = time.monotonic() + wait_positions
            while time.monotonic() < deadline:
                polled = self.market.positions_as_of()
                if polled is not None and polled > since:
                    break
                time.sleep(0.05)
        return replace(job, market=self.market.snapshot(job.signal.ticker, self._gate_keys(job.signal)))

    def _gate_keys(self, signal: Signal) -> tuple[str, ...]:
        """The keys the decide stage's gates read: the trading state and the ticker's cooldown."""
        return self.keys.halt, self.keys.reduce_only, self.keys.cooldown(signal.ticker)

    def order_behind(self, job: Job, skip: Skip) -> Order | None:
        """The order a skip would hide, asked of the broker before any ``skipped`` is journaled.

        The signal may have been handled before although nothing here says so: Redis lost its
        last second (the entry is back as delivery 1, journal, marker and ledger entry gone), or
        this worker is a reclaimer and the stalled first owner submitted meanwhile. Gate skips
        (kill switch, market clock) may hit every signal for hours: they ask only when the signal
        was delivered before or a reservation of its client_order_id exists (it got past the gates
        once). A failed lookup raises: the entry stays pending.
        """
        if skip.gate and not job.seen_before and not self.ledger.exists(job.coid):
            return None
        return self.lookup(job.coid)

    def lookup(self, coid: str) -> Order | None:
        """The order under ``coid``: from the listener's record of its events when there is one (no
        REST request), else asked of the broker (a failed lookup raises)."""
        return self.events.state(coid) or self.client.get_order_by_client_id(coid)

    def _over_delivered(self, job: Job, delivery: Delivery) -> Job | DeadLetter:
        """Delivered too often: dead-letter it, unless an order exists (then the truth is journaled)."""
        note = ""
        try:
            existing = self.lookup(job.coid)
        except TRANSIENT:
            raise  # cannot tell whether an order exists: keep it pending rather than hide an order
        except AlpacaError as exc:  # the broker refuses the lookup itself: nothing more to learn
            existing, note = None, f"; order lookup refused: {exc}"
        if existing is not None:
            return replace(job, existing=existing)
        last = self.replays.last_error(job.entry_id) or "no error recorded by this worker"
        reason = f"delivered {job.deliveries} times (max {self.max_deliveries}); last error: {last}{note}"
        return DeadLetter(delivery, reason, job.signal, release=job.coid)
