"""The worker loop: ``tradebot:signals`` -> one order at the broker -> one journal entry.

Each worker process is one consumer (name unique per process, default ``<host>-<pid>``) of the
group ``keys.workers_group``. It handles ONE entry at a time:

1. read: first its own pending entries (a restart replays what it held when it died), then new
   ones with a short BLOCK so a stop request is seen within a second or two; every
   ``claim_idle / 2`` seconds it XAUTOCLAIMs entries idle longer than ``claim_idle`` (dead
   workers' entries) and handles them the same way;
2. guard: an entry delivered more than ``max_deliveries`` times goes to the DLQ (after checking
   that no order exists for it); an unparseable one goes to the DLQ at once; a signal whose
   journal entry already exists (done marker) is just acked;
3. exactly-once effect: the client_order_id is derived from the signal's source stream and id
   (``client_order_id()``); a redelivered signal is first looked up at the broker by that id, and
   an order found there is followed and journaled instead of sizing a new one;
4. risk checks (kill switch, signal age, market open, fresh price, order notional, position value)
   and sizing (strategy all-in or fixed); cash/shares are reserved in the fleet-wide Ledger so
   concurrent workers never commit more than the account has;
5. submit, then follow the order to a final state with bounded exponential backoff; past
   ``order_timeout`` it is canceled and read back until final (a cancel may still fill first);
6. ledger settle/release, then ONE journal entry written atomically with the XACK
   (``record_outcome``), then a refresh request to the poller after a fill.

While an entry is in hand a keeper thread re-claims it for this consumer (XCLAIM ... JUSTID,
only while this consumer still owns it) so its idle time never reaches ``claim_idle`` and a living
worker's entry is never stolen, however long the order takes.

Crash windows (the process dies, e.g. SIGKILL or OOM, at each point). In every case the entry is
still in the dead consumer's PEL: a restart under the same consumer name replays it at once;
otherwise a living worker XAUTOCLAIMs it once it has been idle ``claim_idle`` seconds (within
another ``claim_idle / 2`` for the next claim round). That delivery has a count > 1, so the worker
first asks the broker for the client_order_id:
- before submit (read, checked, maybe reserved): the lookup finds no order, so the signal is
  handled afresh, risk checks included (a signal grown too old is journaled as skipped and its
  reservation released); a reservation made before the crash is keyed by the client_order_id and
  is reused by the new reserve call, never doubled.
- during or after submit, before journal (POST sent, response maybe lost, order maybe filled
  meanwhile): the lookup finds the order; it is followed to final (canceled at once when older
  than ``order_timeout``), settled and journaled once; no second order. Had the POST not landed
  the lookup finds nothing and the order is sent afresh under the same id (a duplicate id would
  be answered with the existing order anyway).
- after final, between ledger settle and journal: as above; the repeated settle writes the same
  values (or finds the reservation already dropped), then the journal entry is written.
- after journal: the journal entry, the done marker and the XACK are one Lua script, so the
  entry is no longer pending and nothing is redone; only the refresh request to the poller is
  lost (it refreshes on its own interval). A duplicate of the signal meets the done marker and is
  only acked.
A redelivered entry past ``max_deliveries`` is dead-lettered only after the lookup finds no
order (an order found is journaled instead; a lookup that fails leaves it pending).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Callable, Mapping

import redis

from bot.alpaca.errors import (
    AlpacaError,
    BrokerUnavailable,
    DuplicateClientOrderId,
    InsufficientFunds,
    InvalidOrder,
    NotFound,
    OrderOutcomeUnknown,
    RateLimited,
    Unauthorized,
)
from bot.alpaca.models import Order, OrderRequest
from bot.config import ConfigError, Settings
from bot.journal import JournalEntry, record_outcome
from bot.ledger import InsufficientCash, InsufficientShares, Ledger, LedgerError, Reservation
from bot.market import MarketCache, MarketDataError
from bot.ratelimit import RateLimiter
from bot.redisconn import connect
from bot.risk import RiskLimits, buy_cash_cap, check_order_notional, check_position_value, pre_trade_reason
from bot.signals import Signal, SignalError
from bot.strategies import ALL_IN, ORDER_TYPES, STRATEGIES, OrderPlan, plan_buy, plan_sell
from bot.streams import (
    GroupReader,
    autoclaim,
    consumers,
    dead_letter,
    delete_consumer_if_idle,
    delivery_count,
    ensure_group,
    run_script,
)

log = logging.getLogger(__name__)

# handle() results
JOURNALED, DEAD, DUPLICATE, PENDING = "journaled", "dead", "duplicate", "pending"

# client_order_id: Alpaca allows 128 characters today, its older docs said 48: stay within 48.
COID_PREFIX = "tb-"
MAX_COID_LEN = 48
_COID_SAFE = re.compile(r"[A-Za-z0-9._:-]+")


def client_order_id(source_stream: str, source_id: str) -> str:
    """The order's client_order_id, derived only from the signal's origin (so every delivery of the
    signal, to any worker, names the same order).

    ``tb-<source stream>-<source entry id>`` (e.g. ``tb-nvda-1719410000000-0``) when that is at
    most 48 characters of ``[A-Za-z0-9._:-]``; otherwise ``tb-`` + the first 40 hex digits of
    SHA-256 of ``<stream>\\n<id>`` (43 characters; it has no dash after the prefix, so the two
    forms never collide).
    """
    plain = f"{COID_PREFIX}{source_stream}-{source_id}"
    if len(plain) <= MAX_COID_LEN and _COID_SAFE.fullmatch(source_stream):
        return plain
    digest = hashlib.sha256(f"{source_stream}\n{source_id}".encode("utf-8", "surrogatepass")).hexdigest()
    return COID_PREFIX + digest[:40]


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker behaves (the `tradebot worker` flags); risk limits and symbols come from Settings."""

    consumer: str = field(default_factory=default_consumer_name)
    claim_idle: float = 30.0  # seconds; above the longest order handling time
    claim_interval: float | None = None  # seconds between XAUTOCLAIM rounds; None = claim_idle / 2
    max_deliveries: int = 5
    order_timeout: float = 10.0  # seconds a non-final order may live before it is canceled
    cancel_timeout: float = 5.0  # seconds to read a canceled order back to a final state
    strategy: str = "all-in"
    fixed_qty: Decimal | None = None
    fixed_notional: Decimal | None = None
    order_type: str = "market"
    slippage_bps: int = 10  # limit orders: this many basis points beyond the quote
    max_signal_age: float | None = None  # None = settings.max_signal_age
    extended_hours: bool | None = None  # None = settings.extended_hours
    block_ms: int = 1000  # XREADGROUP BLOCK: a stop request is seen within about this long
    ready_timeout: float | None = None  # wait for the poller this long at start (None = forever)
    follow_initial: float = 0.05  # order polling: first pause, doubled up to follow_max
    follow_max: float = 1.0
    backoff_max: float = 5.0  # longest pause of the loop while Redis or the broker is down
    # consumers of dead processes (default names change with every pid) are removed from the
    # group once idle this long with nothing pending, so the group does not grow forever
    consumer_idle: float = 3600.0

    def __post_init__(self) -> None:
        if not self.consumer or any(ch.isspace() for ch in self.consumer):
            raise ConfigError(f"consumer name {self.consumer!r} must be non-empty without spaces")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.order_type not in ORDER_TYPES:
            raise ConfigError(f"order type {self.order_type!r} is not one of {', '.join(ORDER_TYPES)}")
        if self.fixed_qty is not None and self.fixed_notional is not None:
            raise ConfigError("give --fixed-qty or --fixed-notional, not both")
        for name in ("fixed_qty", "fixed_notional"):
            value = getattr(self, name)
            if value is not None and (not Decimal(value).is_finite() or Decimal(value) <= 0):
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got {value}")
        if isinstance(self.slippage_bps, bool) or not isinstance(self.slippage_bps, int) \
                or not 0 <= self.slippage_bps < 10000:
            raise ConfigError(f"slippage-bps must be a whole number from 0 to 9999, got {self.slippage_bps!r}")
        if self.max_deliveries < 1:
            raise ConfigError(f"max-deliveries must be >= 1, got {self.max_deliveries}")
        for name in ("claim_idle", "order_timeout", "cancel_timeout", "follow_initial", "follow_max", "backoff_max",
                     "consumer_idle"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.block_ms < 1:
            raise ConfigError(f"block-ms must be >= 1, got {self.block_ms}")

    @property
    def claim_every(self) -> float:
        return self.claim_interval if self.claim_interval is not None else self.claim_idle / 2

    @property
    def keep_fresh_every(self) -> float:
        """How often the in-hand entry is re-claimed: well inside claim_idle."""
        return max(0.05, self.claim_idle / 4)


# ---------------------------------------------------------------------- the in-hand entry keeper

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] ids. Re-claims (JUSTID: no delivery
# count bump) each id still pending FOR THIS CONSUMER, resetting its idle time; an id someone else
# reclaimed meanwhile is left alone (never stolen back). Returns the ids kept.
_KEEP_FRESH = """
local kept = {}
for i = 3, #ARGV do
  local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #mine > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(kept, ARGV[i])
  end
end
return kept
"""


def keep_fresh(r: redis.Redis, stream: str, group: str, consumer: str, entry_ids: list[str]) -> list[str]:
    """Reset the idle time of ``consumer``'s pending ``entry_ids``; returns those it still owns."""
    if not entry_ids:
        return []
    kept = run_script(r, _KEEP_FRESH, [stream], [group, consumer, *entry_ids])
    return [k.decode() if isinstance(k, bytes) else str(k) for k in kept]


class EntryKeeper:
    """A daemon thread that keeps the entries this worker is handling fresh in the group's PEL."""

    def __init__(self, r: redis.Redis, stream: str, group: str, consumer: str, interval: float) -> None:
        self.r, self.stream, self.group, self.consumer = r, stream, group, consumer
        self.interval = interval
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: set[str] = set()  # held entries another consumer took (this worker stalled)

    def hold(self, entry_id: str) -> None:
        with self._lock:
            self._held.add(entry_id)

    def release(self, entry_id: str) -> None:
        with self._lock:
            self._held.discard(entry_id)
            self.lost.discard(entry_id)

    def refresh(self) -> None:
        with self._lock:
            held = sorted(self._held)
        if not held:
            return
        kept = set(keep_fresh(self.r, self.stream, self.group, self.consumer, held))
        for entry_id in set(held) - kept:
            with self._lock:
                if entry_id in self._held and entry_id not in self.lost:
                    self.lost.add(entry_id)
                    # harmless for the order (same client_order_id, one journal entry) but worth knowing
                    log.warning("worker %s: entry %s was reclaimed by another worker while in hand; "
                                "claim-idle is too short for this order path", self.consumer, entry_id)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"keeper-{self.consumer}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception as exc:  # Redis down: the entries may age; the next round tries again
                log.warning("worker %s: could not keep in-hand entries fresh: %s", self.consumer, exc)


# ---------------------------------------------------------------------- the worker


@dataclass
class _Job:
    """One signal in hand."""

    entry_id: str
    signal: Signal
    coid: str
    deliveries: int
    claimed_at: float
    submitted_at: float | None = None
    qty: Decimal | None = None


class _Skip(Exception):
    """A risk check or the sizing stopped the order: journaled as outcome 'skipped'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Broker errors that say "try again later", never "this order is bad".
_TRANSIENT = (BrokerUnavailable, RateLimited, Unauthorized, OrderOutcomeUnknown)


class Worker:
    """Consumes ``tradebot:signals``; ``step()`` is one round, ``run(stop)`` loops until stopped.

    Everything it talks to can be injected (tests); by default it builds its own Redis clients,
    its AlpacaClient (with the fleet-wide RateLimiter as limiter), MarketCache and Ledger.
    """

    def __init__(self, settings: Settings, config: WorkerConfig | None = None, *,
                 r: redis.Redis | None = None, rb: redis.Redis | None = None, client: Any = None,
                 limiter: Any = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.config = config or WorkerConfig()
        self.keys = settings.keys
        self.stream = self.keys.signals
        self.group = self.keys.workers_group
        self.consumer = self.config.consumer
        timeout = self.config.block_ms / 1000 + 10
        self._owned: list[Any] = []
        # decoded client: cache, ledger, journal; bytes client: the stream (a foreign XADD to
        # tradebot:signals may hold bytes that are not UTF-8, which must reach the DLQ, not crash us)
        self.r = r if r is not None else self._own(connect(settings.redis_url, decode=True, socket_timeout=timeout))
        self.rb = rb if rb is not None else self._own(connect(settings.redis_url, decode=False, socket_timeout=timeout))
        if client is None:
            from bot.alpaca.client import AlpacaClient

            limiter = limiter if limiter is not None else RateLimiter.from_settings(self.r, settings)
            client = self._own(AlpacaClient.from_settings(settings, limiter=limiter))
        self.client = client
        self.clock = clock
        self.sleep = sleep
        self.market = MarketCache(self.r, self.keys, settings.max_price_age, now=clock)
        self.ledger = Ledger(self.r, self.keys)
        limits = RiskLimits.from_settings(settings)
        if self.config.max_signal_age is not None:
            limits = replace(limits, max_signal_age=self.config.max_signal_age)
        if self.config.extended_hours is not None:
            limits = replace(limits, allow_extended_hours=self.config.extended_hours)
        self.limits = limits
        self.weights: dict[str, Decimal] = settings.weights
        self.reader = GroupReader(self.stream, self.group, self.consumer, count=1, block_ms=self.config.block_ms)
        self.keeper = EntryKeeper(self.r, self.stream, self.group, self.consumer, self.config.keep_fresh_every)
        self.counts: dict[str, int] = {JOURNALED: 0, DEAD: 0, DUPLICATE: 0, PENDING: 0}
        self.outcomes: dict[str, int] = {}
        self._closed = False
        self.loop_errors = 0  # failed rounds of run() (Redis down, a bug): survived, counted
        self._group_ready = False
        self._next_claim = 0.0  # monotonic; 0 = due now
        self._last_error: dict[str, str] = {}  # entry id -> why it was left pending (for the DLQ reason)

    def _own(self, resource: Any) -> Any:
        self._owned.append(resource)
        return resource

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        account = self.market.account()
        log.info("worker %s ready: cash %s, equity %s; weights %s", self.consumer,
                 account.cash if account else "?", account.equity if account else "?",
                 ", ".join(f"{s}={w.normalize()}" for s, w in self.weights.items()))
        return True

    def run(self, stop: threading.Event) -> None:
        """Handle signals until ``stop`` is set; then finish the entry in hand and leave the group."""
        log.info("worker %s: %s (group %s), strategy %s, %s orders, claim-idle %.1fs, order-timeout %.1fs",
                 self.consumer, self.stream, self.group, self.config.strategy, self.config.order_type,
                 self.config.claim_idle, self.config.order_timeout)
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if not self._group_ready:
                        self.setup()
                        if not self.wait_ready(stop, self.config.ready_timeout):
                            break
                    results = self.step(stop)
                    if PENDING in results:
                        failures += 1  # the broker (or Redis) is in trouble: don't hammer it
                        self._pause(failures, stop, "an entry was left pending")
                    else:
                        failures = 0
                except Exception as exc:  # never exit on an outage: log, back off, replay own PEL
                    failures += 1
                    self.loop_errors += 1
                    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                        log.warning("worker %s: Redis unavailable: %s", self.consumer, exc)
                    else:
                        log.exception("worker %s: error in the loop", self.consumer)
                    self._group_ready = False
                    self.reader.replay_pending()
                    self._pause(failures, stop, type(exc).__name__)
        finally:
            self.close()

    def _pause(self, failures: int, stop: threading.Event, why: str) -> None:
        delay = min(self.config.backoff_max, 0.1 * 2 ** min(failures - 1, 16))
        log.info("worker %s: %s; pausing %.1fs", self.consumer, why, delay)
        stop.wait(delay)

    def close(self) -> None:
        """Stop the keeper, leave the group if nothing is pending here, close what we opened. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.keeper.stop()
        try:
            if delete_consumer_if_idle(self.r, self.stream, self.group, self.consumer):
                log.info("worker %s: left group %s", self.consumer, self.group)
            else:
                log.info("worker %s: kept in group %s: entries still pending for it", self.consumer, self.group)
        except redis.RedisError as exc:
            log.warning("worker %s: could not leave group %s: %s", self.consumer, self.group, exc)
        for resource in reversed(self._owned):
            try:
                resource.close()
            except Exception:  # closing is best effort
                pass
        self._owned.clear()
        log.info("worker %s stopped: %s %s", self.consumer, self.counts, self.outcomes)

    # ------------------------------------------------------------------ one round

    def step(self, stop: threading.Event | None = None) -> list[str]:
        """Reclaim idle entries when due, then read one entry (own pending first) and handle it."""
        stop = stop or threading.Event()
        if not self._group_ready:
            self.setup()
        results: list[str] = []
        if time.monotonic() >= self._next_claim:
            results += self.reclaim(stop)
        if stop.is_set():
            return results
        entries = self.reader.read(self.rb)
        replayed = self.reader.last_replayed
        for entry in entries:
            from_pel = (entry.stream, entry.id) in replayed
            deliveries = delivery_count(self.rb, self.stream, self.group, entry.id) if from_pel else 1
            results.append(self.handle(entry.id, entry.fields, max(deliveries, 1)))
        return results

    def reclaim(self, stop: threading.Event | None = None, limit: int = 100) -> list[str]:
        """XAUTOCLAIM entries idle longer than claim_idle, one at a time, and handle each."""
        self._next_claim = time.monotonic() + self.config.claim_every
        results: list[str] = []
        min_idle_ms = int(self.config.claim_idle * 1000)
        while len(results) < limit and not (stop is not None and stop.is_set()):
            # one at a time: a claimed entry waits in our PEL only while we handle it
            claimed = autoclaim(self.rb, self.stream, self.group, self.consumer, min_idle_ms, count=1)
            if not claimed:
                break
            entry_id, fields = claimed[0]
            deliveries = delivery_count(self.rb, self.stream, self.group, entry_id)
            log.info("worker %s: reclaimed %s (delivery %d)", self.consumer, entry_id, deliveries)
            results.append(self.handle(entry_id, fields, max(deliveries, 1)))
        self.reap_consumers()
        return results

    def reap_consumers(self) -> int:
        """Remove other consumers idle longer than consumer_idle with nothing pending (dead workers)."""
        idle_ms = int(self.config.consumer_idle * 1000)
        reaped = 0
        for info in consumers(self.r, self.stream, self.group):
            if info["name"] == self.consumer or info["pending"] or info["idle"] < idle_ms:
                continue
            if delete_consumer_if_idle(self.r, self.stream, self.group, info["name"], idle_ms):
                reaped += 1
                log.info("worker %s: removed idle consumer %s from %s", self.consumer, info["name"], self.group)
        return reaped

    # ------------------------------------------------------------------ one entry

    def handle(self, entry_id: str, fields: Mapping[Any, Any], deliveries: int = 1) -> str:
        """Handle one ``tradebot:signals`` entry to its journal or DLQ entry, or leave it pending.

        Returns JOURNALED, DEAD, DUPLICATE or PENDING. Raises only for Redis being unreachable
        (the loop backs off and replays its pending entries).
        """
        self.keeper.hold(entry_id)
        try:
            result = self._handle(entry_id, fields, deliveries)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except _TRANSIENT as exc:
            result = self._leave_pending(entry_id, f"broker: {exc}")
        except AlpacaError as exc:  # an answer we did not expect on this path: retried, then DLQ
            result = self._leave_pending(entry_id, f"broker: {type(exc).__name__}: {exc}")
        except redis.ResponseError as exc:  # Redis refused a write (OOM...): not the signal's fault
            result = self._leave_pending(entry_id, f"redis: {exc}")
        except Exception as exc:  # a bug: keep the entry; after max_deliveries it reaches the DLQ
            log.exception("worker %s: internal error on %s", self.consumer, entry_id)
            result = self._leave_pending(entry_id, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.keeper.release(entry_id)
        self.counts[result] = self.counts.get(result, 0) + 1
        if result != PENDING:
            self._last_error.pop(entry_id, None)
        return result

    def _leave_pending(self, entry_id: str, why: str) -> str:
        why = why[:500]
        self._last_error.pop(entry_id, None)
        self._last_error[entry_id] = why
        while len(self._last_error) > 1000:  # entries finished by other workers are never popped here
            del self._last_error[next(iter(self._last_error))]
        log.warning("worker %s: left %s pending (it will be retried): %s", self.consumer, entry_id, why)
        return PENDING

    def _handle(self, entry_id: str, fields: Mapping[Any, Any], deliveries: int) -> str:
        claimed_at = self.clock()
        try:
            signal = Signal.from_fields(fields)
        except SignalError as exc:
            return self._dead_letter(entry_id, fields, deliveries, f"unusable signal: {exc.reason}")
        job = _Job(entry_id, signal, client_order_id(signal.source_stream, signal.source_id), deliveries, claimed_at)
        if self.r.exists(self.keys.done(signal.source_stream, signal.source_id)):
            self.rb.xack(self.stream, self.group, entry_id)
            log.info("worker %s: %s %s already journaled; acked %s", self.consumer, signal.source_stream,
                     signal.source_id, entry_id)
            return DUPLICATE
        if deliveries > self.config.max_deliveries:
            return self._over_delivered(job, fields)
        if deliveries > 1:
            # delivered before: the order may exist; never size a second one
            existing = self.client.get_order_by_client_id(job.coid)
            if existing is not None:
                log.info("worker %s: order %s for %s %s exists (%s): following it", self.consumer, job.coid,
                         signal.source_stream, signal.source_id, existing.status)
                job.submitted_at = _timestamp(existing.submitted_at or existing.created_at) or claimed_at
                return self._follow_and_journal(job, existing)
        try:
            request = self._plan(job)
        except _Skip as skip:
            return self._journal(job, "skipped", reason=skip.reason)
        return self._submit(job, request)

    # ------------------------------------------------------------------ risk and sizing

    def _plan(self, job: _Job) -> OrderRequest:
        """Risk checks, sizing and the reservation; raises _Skip with the reason (nothing reserved then)."""
        try:
            return self._plan_and_reserve(job)
        except _Skip:
            # a reservation left by an earlier delivery of this signal (crash before submit) goes too
            self.ledger.release(job.coid)
            raise

    def _plan_and_reserve(self, job: _Job) -> OrderRequest:
        signal = job.signal
        clock = self.market.clock()
        session_open = clock.is_open if clock is not None else None
        reason = pre_trade_reason(halt_reason=self.r.get(self.keys.halt), source_at=signal.source_at,
                                  now=self.clock(), clock_is_open=session_open, limits=self.limits)
        if reason:
            raise _Skip(reason)
        extended = not session_open  # only reached when extended hours are allowed
        try:
            price = self.market.price(signal.ticker)
        except MarketDataError as exc:  # StalePrice, NoPrice, a corrupt hash
            raise _Skip(str(exc)) from None
        quote = price.for_side(signal.side)
        if quote is None:
            raise _Skip(f"no {'ask' if signal.side == 'buy' else 'bid'} and no last trade for {signal.ticker}")
        # outside the regular session Alpaca takes only limit orders (day, extended_hours=true)
        order_type = "limit" if extended else self.config.order_type
        try:
            if signal.side == "buy":
                plan, reservation = self._size_buy(job, quote, order_type)
            else:
                plan, reservation = self._size_sell(job, price.bid or quote, quote, order_type)
        except ValueError as exc:  # the strategy cannot size it (weight 0, no qty...)
            raise _Skip(str(exc)) from None
        plan = plan.sized(reservation.qty)
        return OrderRequest(symbol=signal.ticker, side=signal.side, client_order_id=job.coid, qty=plan.qty,
                            type=plan.order_type, time_in_force="day" if extended else plan.time_in_force,
                            limit_price=plan.limit_price, extended_hours=extended)

    def _size_buy(self, job: _Job, ask: Decimal, order_type: str) -> tuple[OrderPlan, Reservation]:
        signal, config = job.signal, self.config
        account = self.market.account()
        if account is None:
            raise _Skip("account not in the market cache: is the price poller running?")
        held = self._held_qty(signal.ticker)
        all_in = config.strategy == ALL_IN
        plan = plan_buy(config.strategy, weight=self.weights.get(signal.ticker, Decimal(0)), equity=account.equity,
                        ask=ask, signal_qty=signal.qty, fixed_qty=config.fixed_qty,
                        fixed_notional=config.fixed_notional, order_type=order_type,
                        slippage_bps=config.slippage_bps, position_value=held * ask if all_in else None)
        price = plan.reserve_price(ask)
        if all_in:
            # sized to the risk limits rather than stopped by them, unless not even one share fits
            cap = buy_cash_cap(self.limits, current_qty=held, price=price)
            if cap < self.ledger.buffered_price(price):
                raise _Skip(check_order_notional(Decimal(1), price, self.limits)
                            or check_position_value(held, Decimal(1), price, self.limits)
                            or f"the risk limits leave {cap:.2f} for {signal.ticker}: less than one share")
            max_cash = cap if plan.max_cash is None else min(plan.max_cash, cap)
            qty = None
        else:
            qty, max_cash = plan.qty, None
            self._check_value(signal.ticker, held, qty, price)
        try:
            reservation = self.ledger.reserve_buy(job.coid, signal.ticker, price, qty=qty, max_cash=max_cash)
        except InsufficientCash as exc:
            raise _Skip(f"no cash left to buy {signal.ticker}: {exc}") from None
        except LedgerError as exc:  # no cached account, a corrupt cache entry
            raise _Skip(str(exc)) from None
        if reservation.side != "buy" or reservation.qty <= 0:
            raise _Skip(f"reservation {job.coid} does not fit a buy of {signal.ticker}")
        self._check_value(signal.ticker, held, reservation.qty, price)  # a reused reservation is checked too
        return plan, reservation

    def _size_sell(self, job: _Job, bid: Decimal, quote: Decimal, order_type: str) -> tuple[OrderPlan, Reservation]:
        signal, config = job.signal, self.config
        plan = plan_sell(config.strategy, bid=bid, signal_qty=signal.qty, fixed_qty=config.fixed_qty,
                         order_type=order_type, slippage_bps=config.slippage_bps)
        try:
            reservation = self.ledger.reserve_sell(job.coid, signal.ticker, qty=plan.qty)
        except InsufficientShares as exc:
            if exc.available <= 0:
                raise _Skip(f"no {signal.ticker} shares to sell") from None
            raise _Skip(f"not enough {signal.ticker} shares to sell: {exc}") from None
        except LedgerError as exc:
            raise _Skip(str(exc)) from None
        reason = check_order_notional(reservation.qty, plan.reserve_price(quote), self.limits)
        if reason:
            raise _Skip(reason)
        return plan, reservation

    def _held_qty(self, symbol: str) -> Decimal:
        try:
            position = self.market.position(symbol)
        except MarketDataError as exc:
            raise _Skip(str(exc)) from None
        return max(position.qty, Decimal(0)) if position is not None else Decimal(0)

    def _check_value(self, symbol: str, held: Decimal, qty: Decimal | None, price: Decimal) -> None:
        reason = (check_order_notional(qty, price, self.limits)
                  or check_position_value(held, qty, price, self.limits))
        if reason:
            raise _Skip(reason)

    # ------------------------------------------------------------------ submit and follow

    def _submit(self, job: _Job, request: OrderRequest) -> str:
        job.qty = request.qty
        job.submitted_at = self.clock()
        try:
            order = self.client.submit_order(request)
        except DuplicateClientOrderId:
            raise  # the broker says the id exists yet cannot show it: retry later (transient)
        except (InsufficientFunds, InvalidOrder) as exc:
            self.ledger.release(job.coid)
            log.warning("worker %s: order %s refused by the broker: %s", self.consumer, job.coid, exc)
            return self._journal(job, "rejected", reason=exc.message or str(exc))
        except OrderOutcomeUnknown as exc:
            # not acked, not journaled, reservation kept (keyed by the client_order_id): the
            # redelivery looks the order up by that id and follows it, or sends it if it never landed
            return self._leave_pending(job.entry_id, f"outcome of order {job.coid} unknown: {exc}")
        log.info("worker %s: submitted %s %s %s (%s) -> %s %s", self.consumer, request.side, request.qty,
                 request.symbol, job.coid, order.id, order.status)
        return self._follow_and_journal(job, order)

    def _follow_and_journal(self, job: _Job, order: Order) -> str:
        final, canceled_by_us = self._follow(order)
        if final is None:
            return self._leave_pending(job.entry_id, f"order {order.id} ({job.coid}) did not reach a final state")
        final_at = self.clock()
        outcome, reason = outcome_of(final, canceled_by_us, self.config.order_timeout)
        if final.filled_qty > 0:
            # settle before journaling: a crash in between replays the settle (idempotent per coid)
            self.ledger.settle(job.coid, final.filled_qty, final.filled_avg_price)
        else:
            self.ledger.release(job.coid)
        result = self._journal(job, outcome, reason=reason, order=final, final_at=final_at)
        if final.filled_qty > 0:
            self.market.request_refresh()
        return result

    def _follow(self, order: Order) -> tuple[Order | None, bool]:
        """Poll the order until it is final; cancel it past order_timeout. (final order or None, canceled)."""
        config = self.config
        age = 0.0
        created = _timestamp(order.created_at)
        if created is not None:
            age = min(max(0.0, self.clock() - created), config.order_timeout)
        deadline = time.monotonic() + config.order_timeout - age
        give_up = deadline + config.cancel_timeout
        delay = config.follow_initial
        canceled = False
        while True:
            if order.is_terminal:
                return order, canceled
            now = time.monotonic()
            if now >= give_up:
                log.error("worker %s: order %s (%s) still %s %.1fs after the cancel; leaving it pending",
                          self.consumer, order.id, order.client_order_id, order.status, config.cancel_timeout)
                return None, canceled
            if not canceled and now >= deadline:
                canceled = self._cancel(order)
                if canceled:
                    delay = config.follow_initial  # read it back promptly: a cancel is quick
            # never sleep past the next decision point (the cancel, or giving up)
            target = deadline if now < deadline else give_up
            self.sleep(max(0.001, min(delay, target - now)))
            delay = min(delay * 2, config.follow_max)
            try:
                order = self.client.get_order(order.id)
            except (NotFound, InvalidOrder):
                raise
            except AlpacaError as exc:  # keep following until give_up; the client already retried
                log.warning("worker %s: reading order %s failed: %s", self.consumer, order.id, exc)

    def _cancel(self, order: Order) -> bool:
        log.info("worker %s: order %s (%s) not final after %.1fs (%s): canceling", self.consumer, order.id,
                 order.client_order_id, self.config.order_timeout, order.status)
        try:
            self.client.cancel_order(order.id)
        except AlpacaError as exc:
            log.warning("worker %s: cancel of order %s failed (retrying): %s", self.consumer, order.id, exc)
            return False
        return True

    # ------------------------------------------------------------------ records

    def _journal(self, job: _Job, outcome: str, *, reason: str = "", order: Order | None = None,
                 final_at: float | None = None) -> str:
        signal = job.signal
        entry = JournalEntry(
            source_stream=signal.source_stream, source_id=signal.source_id, ticker=signal.ticker,
            side=signal.side, outcome=outcome, reason=reason,
            client_order_id=job.coid if order is not None or outcome == "rejected" else "",
            order_id=order.id if order is not None else "",
            status=order.status if order is not None else "",
            qty=(order.qty if order is not None and order.qty is not None else job.qty),
            filled_qty=order.filled_qty if order is not None else None,
            filled_avg_price=order.filled_avg_price if order is not None else None,
            source_at=signal.source_at, routed_at=signal.routed_at, claimed_at=job.claimed_at,
            submitted_at=job.submitted_at, final_at=final_at if final_at is not None else self.clock(),
            consumer=self.consumer, deliveries=job.deliveries)
        written = record_outcome(self.r, self.keys, entry, ack_stream=self.stream, group=self.group,
                                 entry_id=job.entry_id)
        if not written:
            return DUPLICATE
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        level = logging.INFO if outcome in ("filled", "partially_filled") else logging.WARNING \
            if outcome == "rejected" else logging.INFO
        log.log(level, "worker %s: %s %s %s: %s%s", self.consumer, signal.side, signal.ticker, signal.source_id,
                 outcome, f" ({reason})" if reason else "")
        return JOURNALED

    def _over_delivered(self, job: _Job, fields: Mapping[Any, Any]) -> str:
        """Delivered too often: dead-letter it, unless an order exists (then the truth is journaled)."""
        note = ""
        try:
            existing = self.client.get_order_by_client_id(job.coid)
        except _TRANSIENT:
            raise  # cannot tell whether an order exists: keep it pending rather than hide an order
        except AlpacaError as exc:  # the broker refuses the lookup itself: nothing more to learn
            existing, note = None, f"; order lookup refused: {exc}"
        if existing is not None:
            job.submitted_at = _timestamp(existing.submitted_at or existing.created_at) or job.claimed_at
            return self._follow_and_journal(job, existing)
        self.ledger.release(job.coid)
        last = self._last_error.get(job.entry_id, "no error recorded by this worker")
        reason = f"delivered {job.deliveries} times (max {self.config.max_deliveries}); last error: {last}{note}"
        return self._dead_letter(job.entry_id, fields, job.deliveries, reason, job.signal)

    def _dead_letter(self, entry_id: str, fields: Mapping[Any, Any], deliveries: int, reason: str,
                     signal: Signal | None = None) -> str:
        source_stream, source_id = (signal.source_stream, signal.source_id) if signal else _origin(fields, self.stream,
                                                                                                 entry_id)
        written = dead_letter(self.rb, self.keys, ack_stream=self.stream, group=self.group, entry_id=entry_id,
                              source_stream=source_stream, source_id=source_id, reason=reason,
                              deliveries=deliveries, raw_fields=fields, consumer=self.consumer)
        if not written:
            log.info("worker %s: %s %s already recorded; acked %s", self.consumer, source_stream, source_id, entry_id)
            return DUPLICATE
        log.warning("worker %s: dead-lettered %s (%s %s): %s", self.consumer, entry_id, source_stream, source_id,
                    reason)
        return DEAD


# ---------------------------------------------------------------------- helpers


def outcome_of(order: Order, canceled_by_us: bool = False, order_timeout: float = 0.0) -> tuple[str, str]:
    """Journal outcome and reason of a final order."""
    status, filled = order.status, order.filled_qty
    if status == "filled":
        return "filled", ""
    if status in ("canceled", "expired", "replaced") and filled > 0:
        wanted = f" of {order.qty.normalize()}" if order.qty is not None else ""
        return "partially_filled", f"filled {filled.normalize()}{wanted}, the rest {status}"
    if status == "canceled":
        if canceled_by_us:
            return "canceled", f"not filled within the {order_timeout:g}s order timeout; canceled"
        return "canceled", "canceled by the broker with nothing filled (no liquidity for the IOC order?)"
    if status == "expired":
        return "expired", "expired with nothing filled"
    if status == "replaced":
        return "canceled", f"replaced by order {order.raw.get('replaced_by') or '?'}"
    reason = str(order.raw.get("reject_reason") or order.raw.get("reason") or "rejected by the broker")
    return "rejected", reason


def _timestamp(value: Any) -> float | None:
    return value.timestamp() if value is not None else None


def _text(value: Any) -> str | None:
    try:
        return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)
    except UnicodeDecodeError:
        return None


_STREAM_ID = re.compile(r"\d+-\d+")


def _origin(fields: Mapping[Any, Any], stream: str, entry_id: str) -> tuple[str, str]:
    """The signal's source for an unparseable entry: its own fields when they look right, else the
    signals entry itself (so the done marker still guards the entry)."""
    by_name = {_text(k): v for k, v in fields.items()}
    source_stream = _text(by_name.get("source_stream", b"")) or ""
    source_id = _text(by_name.get("source_id", b"")) or ""
    if source_stream and len(source_stream) <= 256 and _STREAM_ID.fullmatch(source_id):
        return source_stream, source_id
    return stream, entry_id
