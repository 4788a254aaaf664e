"""The worker: builds the stages, runs each signal through them (``process``), and its lifecycle."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import redis

from bot.alpaca.models import OrderRequest
from bot.breakers import Breakers
from bot.codec import decimal_text
from bot.config import Settings
from bot.consumer import ConsumerLoop, Round
from bot.ledger import Ledger
from bot.market import MarketCache
from bot.order_events import OrderEvents
from bot.ratelimit import RateLimiter
from bot.redisconn import connect
from bot.risk import RiskLimits
from bot.signals import CANCEL_ALL, FLATTEN
from bot.streams import delete_consumer_if_idle, ensure_group
from bot.worker.config import WorkerConfig
from bot.worker.controls import Controls
from bot.worker.decide import Decider, Gates
from bot.worker.follow import Follower
from bot.worker.intake import Intake
from bot.worker.keeper import EntryKeeper
from bot.worker.limiter import BoundedLimiter
from bot.worker.policy import Action, rule_for
from bot.worker.record import Recorder
from bot.worker.records import (
    DEAD,
    DUPLICATE,
    JOURNALED,
    LOST,
    PENDING,
    DeadLetter,
    Delivery,
    Duplicate,
    Job,
    Lost,
    Placed,
    Rejected,
    Sent,
    Skip,
    Unfinished,
    Unsent,
)
from bot.worker.replays import OwnReplays
from bot.worker.stopping import StopGrace
from bot.worker.submit import Submitter
from bot.worker.triage import Triage

log = logging.getLogger(__name__)

STAGES = ("triage", "decide", "submit", "follow", "record", "controls")
LEDGER_SWEEP_EVERY = 30.0  # seconds between sweeps of settled, reflected reservations out of the ledger
FLATTEN_REFRESH_WAIT = 5.0  # seconds a flatten waits for positions polled after its cancels


@dataclass(frozen=True)
class UnknownOutcome:
    """What an earlier POST with an unknown outcome means for a skip or a dead letter now."""

    coid: str | None = None  # marked unknown (None: no such POST)
    wait: bool = False  # still within resolve_after: leave the entry pending
    why: str = ""
    note: str = ""  # added to the journal or DLQ reason once resolve_after passed
Wrap = Callable[[Any], Any]  # a stage in, the stage to use out (a test's or a middleware's wrapper)


class Worker:
    """Consumes ``tradebot:signals``: ``step()`` is one round, ``run(stop)`` loops until stopped.

    Everything it talks to can be injected; by default it builds its own Redis clients, its
    AlpacaClient (``CLIENT_KNOBS``, the fleet-wide RateLimiter behind a BoundedLimiter), the market
    cache and the ledger (an injected client comes with its own ``limiter``: given too, a
    BoundedLimiter lets each submit take its token in the re-check's round trip). ``wrap`` maps a
    stage name (``STAGES``) to a function that gets the stage built here and returns the one to
    use: the seam for tests and middleware.
    """

    def __init__(self, settings: Settings, config: WorkerConfig | None = None, *,
                 r: redis.Redis | None = None, rb: redis.Redis | None = None, client: Any = None,
                 limiter: Any = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, wrap: Mapping[str, Wrap] | None = None) -> None:
        unknown = set(wrap or ()) - set(STAGES)
        if unknown:
            raise ValueError(f"no such worker stage: {', '.join(sorted(unknown))} (stages: {', '.join(STAGES)})")
        self.settings = settings
        self.config = config = config or WorkerConfig()
        self.keys = keys = settings.keys
        self.stream, self.group, self.consumer = keys.signals, keys.workers_group, config.consumer
        self._owned: list[Any] = []
        timeout = config.block_ms / 1000 + 10
        # decoded client: cache, ledger, journal; bytes client: the stream (a foreign XADD to
        # tradebot:signals may hold bytes that are not UTF-8, which must reach the DLQ, not crash us)
        self.r = r if r is not None else self._own(connect(settings.redis_url, decode=True, socket_timeout=timeout))
        self.rb = rb if rb is not None else self._own(connect(settings.redis_url, decode=False, socket_timeout=timeout))
        self.grace = StopGrace(config.stop_grace)
        # the BoundedLimiter of the client: built here, or given with an injected client (None otherwise)
        # (only when it is that client's own: a token taken from another limiter would leave the POST to
        # take a second one from its own)
        self.limiter: Any = (limiter if isinstance(limiter, BoundedLimiter) and client is not None
                             and getattr(client, "_limiter", None) is limiter else None)
        if client is None:
            from bot.alpaca.client import AlpacaClient  # not imported by workers given a client (tests)

            limiter = limiter if limiter is not None else RateLimiter.from_settings(self.r, settings)
            if isinstance(limiter, RateLimiter):
                limiter = BoundedLimiter(limiter, stop_left=self.grace.left)
            self.limiter = limiter
            client = self._own(AlpacaClient.from_settings(settings, limiter=limiter, **config.client_knobs()))
        self.client = client
        self.clock = clock
        self.market = MarketCache(self.r, keys, settings.max_price_age, now=clock,
                                  max_quote_age=config.max_quote_age if config.max_quote_age is not None
                                  else settings.max_quote_age)
        self.ledger = Ledger(self.r, keys)
        self.limits = _limits(settings, config)
        self.weights: dict[str, Decimal] = settings.weights
        self.replays = OwnReplays(config.own_replay_first, config.own_replay_max)
        self.intake = Intake(self.rb, self.stream, self.group, config, self.replays)
        self.keeper = EntryKeeper(self.r, self.stream, self.group, self.consumer, config.keep_fresh_every)
        gates = Gates(keys, self.limits, clock)
        wraps = dict(wrap or {})

        def stage(name: str, built: Any) -> Any:
            return wraps[name](built) if name in wraps else built

        self.order_events = OrderEvents(self.r, keys, now=clock)
        self.triage = stage("triage", Triage(keys=keys, market=self.market, client=client, ledger=self.ledger,
                                             replays=self.replays, max_deliveries=config.max_deliveries, clock=clock,
                                             events=self.order_events))
        self.decider = stage("decide", Decider(gates=gates, ledger=self.ledger, limits=self.limits,
                                               weights=self.weights, config=config, market=self.market))
        self.submitter = stage("submit", Submitter(client=client, market=self.market, keys=keys, keeper=self.keeper,
                                                   gates=gates, grace=self.grace, limiter=self.limiter,
                                                   config=config, clock=clock, events=self.order_events,
                                                   breakers=Breakers(self.r, keys, config.breakers, now=clock)))
        self.follower = stage("follow", Follower(client=client, grace=self.grace, config=config, clock=clock,
                                                 sleep=sleep, events=self.order_events))
        self.recorder = stage("record", Recorder(r=self.r, rb=self.rb, keys=keys, consumer=self.consumer,
                                                 ledger=self.ledger, market=self.market,
                                                 order_timeout=config.order_timeout, clock=clock,
                                                 marker_ttl=settings.marker_ttl, cooldown=config.breakers.cooldown))
        self.controls = stage("controls", Controls(client=client, consumer=self.consumer))
        self.loop = ConsumerLoop(f"worker {self.consumer}", config.backoff_max)
        self.counts: dict[str, int] = {JOURNALED: 0, DEAD: 0, DUPLICATE: 0, PENDING: 0, LOST: 0}
        self._group_ready = False
        self._closed = False
        self._next_sweep = time.monotonic() + LEDGER_SWEEP_EVERY

    # ------------------------------------------------------------------ one signal's life

    def process(self, delivery: Delivery) -> str:
        """One entry, from intake to its journal entry, its DLQ entry, or a later replay."""
        triaged = self.triage.examine(delivery)
        if isinstance(triaged, Duplicate):
            return self.recorder.duplicate(triaged)
        if isinstance(triaged, DeadLetter):
            unknown = self._unknown_outcome(triaged.release, delivery.deliveries > 1 or (
                triaged.signal is not None and triaged.signal.pinned_coid is not None))
            if unknown.wait:
                return self._leave_pending(delivery.entry_id, unknown.why)
            return self._resolved(unknown, self.recorder.dead_letter(replace(triaged,
                                                                             reason=triaged.reason + unknown.note)))
        job = triaged
        if job.signal.control == CANCEL_ALL:
            return self.recorder.canceled_all(job, self.controls.cancel_all(job).reason)
        sent: Sent
        posted = False  # a POST may have been sent (its outcome may be unknown)
        if job.existing is not None:  # an earlier delivery placed it: follow that order, never a second
            sent = self._adopt(job, job.existing, "exists")
        else:
            if job.signal.control == FLATTEN and self.controls.cancel_all(job).canceled:
                # open orders went first (a bracket's exit legs hold the shares a flatten sells):
                # size it on positions read after that
                job = self.triage.resnapshot(job, wait_positions=FLATTEN_REFRESH_WAIT)
            decision = self.decider.decide(job)
            posted = isinstance(decision, OrderRequest)
            sent = self.submitter.submit(job, decision) if isinstance(decision, OrderRequest) else decision
        if isinstance(sent, Skip):
            behind = self.triage.order_behind(job, sent)  # never hide an order behind a 'skipped'
            sent = self._adopt(job, behind, f"would be skipped ({sent.reason}) but") if behind else sent
        if isinstance(sent, Skip):
            unknown = self._unknown_outcome(job.coid, job.seen_before or posted)
            if unknown.wait:
                return self._leave_pending(job.entry_id, unknown.why)
            return self._resolved(unknown, self.recorder.skipped(job, replace(sent, reason=sent.reason + unknown.note)))
        if isinstance(sent, Rejected):
            return self.recorder.rejected(job, sent)
        if isinstance(sent, Unsent):
            return self._leave_pending(job.entry_id, sent.why)
        if isinstance(sent, Lost):
            return LOST
        final = self.follower.follow(sent.order)
        if isinstance(final, Unfinished):
            return self._leave_pending(job.entry_id, final.why)
        recorded = self.recorder.final(job, sent, final)
        if job.seen_before or sent.after_unknown:  # a POST was marked unknown: its order is found now
            self.order_events.resolve(job.coid)
        return recorded

    def handle(self, delivery: Delivery) -> str:
        """``process`` with the error policy applied: JOURNALED, DEAD, DUPLICATE, PENDING or LOST.
        Raises only what the policy raises (Redis unreachable): the loop backs off and replays."""
        self.keeper.hold(delivery.entry_id)
        try:
            result = self.process(delivery)
        except Exception as exc:
            rule = rule_for(exc)
            if rule.action is Action.RAISE:
                raise
            if rule.traceback:
                log.exception("worker %s: internal error on %s", self.consumer, delivery.entry_id)
            result = self._leave_pending(delivery.entry_id, rule.reason(exc))
        finally:
            self.keeper.release(delivery.entry_id)
        self.counts[result] = self.counts.get(result, 0) + 1
        if result != PENDING:
            self.replays.forget(delivery.entry_id)
        return result

    def _unknown_outcome(self, coid: str | None, seen_before: bool) -> UnknownOutcome:
        """Whether a POST of ``coid`` ended with an unknown outcome, and if so whether to keep waiting
        for its order to show up before journaling a skip or dead-lettering (a 404 is no proof: the
        POST may still be on its way). Only a redelivery, or a skip after a submit, can follow one."""
        if coid is None or not seen_before:
            return UnknownOutcome()
        since = self.order_events.unknown_since(coid)
        if since is None:
            return UnknownOutcome()
        age = self.clock() - since
        wait = self.config.resolve_after
        if age < wait:
            return UnknownOutcome(coid, True, f"a POST of order {coid} had an unknown outcome {age:.0f}s ago; "
                                              f"waiting up to {wait:g}s for the broker to show it")
        return UnknownOutcome(coid, False, note=f" (a POST of order {coid} had an unknown outcome; "
                                                f"no such order at the broker {age:.0f}s later)")

    def _resolved(self, unknown: UnknownOutcome, result: str) -> str:
        if unknown.coid is not None and result in (JOURNALED, DEAD):
            self.order_events.resolve(unknown.coid)
        return result

    def _adopt(self, job: Job, order: Any, how: str) -> Placed:
        log.info("worker %s: %s %s %s order %s (%s): following it", self.consumer, job.signal.source_stream,
                 job.signal.source_id, how, job.coid, order.status)
        return Placed.found(order, job.claimed_at)

    def _leave_pending(self, entry_id: str, why: str) -> str:
        delay = self.replays.left_pending(entry_id, why)  # still in the own PEL: retried well before claim_idle
        log.warning("worker %s: left %s pending (replaying it in %.1fs): %s", self.consumer, entry_id, delay, why)
        return PENDING

    # ------------------------------------------------------------------ rounds

    def step(self, stop: threading.Event | None = None) -> list[str]:
        """One round: whatever intake delivers (reclaimed, own replay, own PEL, new), each handled."""
        stop = stop or threading.Event()
        self.grace.use(stop)
        if not self._group_ready:
            self.setup()
        handled = [self.handle(delivery) for delivery in self.intake.deliveries(stop)]
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + LEDGER_SWEEP_EVERY
            self.ledger.sweep()
        return handled

    def reclaim(self, stop: threading.Event | None = None) -> list[str]:
        """Only the XAUTOCLAIM part of a round: entries idle past claim_idle, each handled."""
        return [self.handle(delivery) for delivery in self.intake.reclaimed(stop or threading.Event())]

    def run(self, stop: threading.Event) -> None:
        """Handle signals until ``stop`` is set; then finish the entry in hand and leave the group."""
        config = self.config
        log.info("worker %s: %s (group %s), strategy %s, %s orders, claim-idle %.1fs, order-timeout %.1fs",
                 self.consumer, self.stream, self.group, config.strategy, config.order_type, config.claim_idle,
                 config.order_timeout)
        self.grace.watch(stop)

        def one_round() -> Round:
            if not self._group_ready:
                self.setup()
                if not self.wait_ready(stop, config.ready_timeout):
                    return Round.DONE
            return Round.TROUBLE if PENDING in self.step(stop) else Round.OK

        def recover() -> None:  # Redis may have restarted without its data
            self._group_ready = False
            self.intake.replay_pending()

        try:
            self.loop.run(stop, one_round, recover)
        finally:
            self.close()

    @property
    def loop_errors(self) -> int:
        """Failed rounds of run() (Redis down, a bug): survived, counted."""
        return self.loop.errors

    @property
    def outcomes(self) -> dict[str, int]:
        return self.recorder.outcomes

    # ------------------------------------------------------------------ lifecycle

    def setup(self) -> None:
        """Create the workers' group (from the stream's start: every routed signal is work)."""
        ensure_group(self.r, self.stream, self.group, "0")
        self._group_ready = True
        self.keeper.start()

    def wait_ready(self, stop: threading.Event, timeout: float | None = None) -> bool:
        """Wait until the poller filled prices, account and positions; False when stopped first."""
        symbols = list(self.settings.symbols)
        missing = self.market.missing(symbols)
        if missing:
            log.info("worker %s: waiting for the price poller to fill %s before taking signals",
                     self.consumer, ", ".join(missing))
        if not self.market.wait_ready(symbols, timeout, stop):
            return False
        if self.config.wait_reconcile and not self._wait_reconciled(stop, timeout):
            return False
        account = self.market.account()
        log.info("worker %s ready: cash %s, equity %s; weights %s", self.consumer,
                 account.cash if account else "?", account.equity if account else "?",
                 ", ".join(f"{s}={decimal_text(w)}" for s, w in self.weights.items()))
        return True

    def _wait_reconciled(self, stop: threading.Event, timeout: float | None) -> bool:
        if self.r.exists(self.keys.reconciled):
            return True
        log.info("worker %s: waiting for the start-up reconciliation (the listener's) before taking signals",
                 self.consumer)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop.wait(0.25):
            if self.r.exists(self.keys.reconciled):
                log.info("worker %s: reconciled; taking signals", self.consumer)
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return False

    def _own(self, resource: Any) -> Any:
        self._owned.append(resource)
        return resource

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the keeper, leave the group if nothing is pending here, close what we opened. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.grace.close()
        self.keeper.stop()
        try:
            if delete_consumer_if_idle(self.r, self.stream, self.group, self.consumer):
                log.info("worker %s: left group %s", self.consumer, self.group)
            else:
                log.info("worker %s: kept in group %s: entries still pending for it", self.consumer, self.group)
        except redis.RedisError as exc:
            log.warning("worker %s: could not leave group %s: %s", self.consumer, self.group, exc)
        for resource in reversed(self._owned):
            with contextlib.suppress(Exception):  # closing is best effort
                resource.close()
        self._owned.clear()
        log.info("worker %s stopped: %s %s", self.consumer, self.counts, self.outcomes)


def _limits(settings: Settings, config: WorkerConfig) -> RiskLimits:
    limits = RiskLimits.from_settings(settings)
    if config.max_signal_age is not None:
        limits = replace(limits, max_signal_age=config.max_signal_age)
    if config.extended_hours is not None:
        limits = replace(limits, allow_extended_hours=config.extended_hours)
    return limits
