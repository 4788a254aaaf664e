"""The worker loop: ``tradebot:signals`` -> one order at the broker -> one journal entry.

Each worker process is one consumer (name unique per process, default ``<host>-<pid>``) of the
group ``keys.workers_group``. It handles ONE entry at a time:

1. read: first its own pending entries (a restart replays what it held when it died), then new
   ones with a short BLOCK so a stop request is seen within a second or two; every
   ``claim_idle / 2`` seconds it XAUTOCLAIMs entries idle longer than ``claim_idle`` (dead
   workers' entries) and handles them the same way; an entry it left pending itself (broker
   error, unknown order outcome, no rate-limit token) is replayed by this worker after a capped
   backoff (``OWN_REPLAY_FIRST`` doubling to ``OWN_REPLAY_MAX``), long before ``claim_idle``;
2. guard: an entry delivered more than ``max_deliveries`` times goes to the DLQ (after checking
   that no order exists for it); an unparseable one goes to the DLQ at once; a signal whose
   journal entry already exists (done marker) is just acked;
3. exactly-once effect: the client_order_id is derived from the signal's source stream and id
   (``client_order_id()``); a redelivered signal is first looked up at the broker by that id, and
   an order found there is followed and journaled instead of sizing a new one;
4. risk checks (kill switch, signal age, market open by a fresh clock, fresh poll and quote, order
   notional, position value) and sizing (strategy all-in or fixed; an all-in sell is capped at the
   order notional); cash/shares are reserved in the fleet-wide Ledger so concurrent workers never
   commit more than the account has, nor grow a position past its limit with buys in flight;
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

A signal may have been handled before even on delivery 1: Redis can lose its last second of
writes (AOF ``everysec``, a failover), journal, done marker, ack and ledger entry included, and
the entry then comes back as new. So no signal is journaled ``skipped`` (and no reservation is
released) before the broker was asked for its client_order_id; an order found is followed and
journaled instead (``_skip``). The one exception, to spare the trading budget while the market is
closed: a skip by the kill switch or the market clock on delivery 1 with no reservation in the
ledger journals without a lookup (such a skip may repeat for every signal of a closed night; the
price is that a fill lost with Redis's last second AND met by a halt or a closed market is
journaled as skipped; the order itself is at the broker and in its positions).

Sent on time: the halt, the signal's age, the market clock and the price's freshness are checked
again right before the submit (``_recheck``); the submit may wait at most ``SUBMIT_LIMITER_WAIT``
for a rate-limit token, and the worker's AlpacaClient is built with tight knobs
(``CLIENT_KNOBS``: short timeouts, one retry, short server-hinted waits, and ``SUBMIT_DEADLINE``:
no POST leaves more than 2 s after the re-check), so an order is never sent long after its checks.
A submit that ends without placing anything (RateLimited, BrokerUnavailable, no token in time) is
tried again after a short pause with fresh checks, at most ``SUBMIT_ATTEMPTS`` times, then left
pending (reservation kept). Before each submit the worker also re-claims its entry
(``EntryKeeper.still_holds``, in the re-check's round trip): a worker that stalled past claim-idle
and lost its entry to another never sends the order; the new owner handles it.

Round trips: Redis waits, not Python, dominate an order's path, so the reads are batched. The
done marker, kill switch, clock, price, account and position come in ONE pipeline
(``MarketCache.snapshot``, carried on the job), whose accessors parse and raise lazily exactly like
the single reads, so the checks keep their order and reasons; the re-check and the entry's
re-claim before the submit are one pipeline too. A buy costs XREADGROUP, the snapshot, the ledger
reservation, the re-check, the rate-limit token, then settle, journal and the refresh ask.

Stopping (SIGTERM): no new order is sent once the stop is requested (the entry stays pending and
is replayed); an order already at the broker is followed, canceled by ``stop_grace -
cancel_timeout`` seconds after the stop at the latest (its own ``order_timeout`` if sooner) and
given up (left pending, replayed after restart) by ``stop_grace``; rate-limit waits end with the
grace. Worst case at defaults (stop_grace 15 s, ``CLIENT_KNOBS``: a request at most about 4 s,
connect 1 + read 3): the submit in flight when the stop comes (token 1 + POST 4 + its lookup
2 x (1 + 4) + 1 = 16 s; typically well under a second), then, past the grace, one cancel without
rate-limit waits (2 x 4 + 1 = 9 s): about 25 s even when every request runs into its timeout, inside
supervisord's ``stopwaitsecs=30``. With a healthy broker a stop takes at most order_timeout plus
one read (about 11 s), and at once when no order is open.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Callable, Iterator, Mapping

import httpx
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
from bot.ledger import InsufficientCash, InsufficientShares, Ledger, LedgerError, PositionLimit, Reservation
from bot.market import MarketCache, MarketDataError, MarketSnapshot, Price
from bot.ratelimit import RateLimiter, RateLimitTimeout
from bot.redisconn import connect
from bot.runtime import capped_backoff
from bot.risk import (
    RiskLimits,
    buy_cash_cap,
    check_halt,
    check_market_open,
    check_order_notional,
    check_position_value,
    check_signal_age,
    sell_qty_cap,
)
from bot.signals import Signal, SignalError
from bot.strategies import ALL_IN, ORDER_TYPES, STRATEGIES, OrderPlan, plan_buy, plan_sell
from bot.streams import (
    GroupReader,
    autoclaim,
    consumers,
    dead_letter,
    default_consumer_name,
    delete_consumer_if_idle,
    delivery_count,
    ensure_group,
    run_script,
)

log = logging.getLogger(__name__)

# handle() results; LOST: another worker reclaimed the entry while this one stalled (it finishes it)
JOURNALED, DEAD, DUPLICATE, PENDING, LOST = "journaled", "dead", "duplicate", "pending", "lost"

# The worker's AlpacaClient: no request, and no wait inside one call, may hold an order long after
# its risk checks or a stop past supervisord's stopwaitsecs. One call makes at most 2 requests of
# at most ~4 s (connect 1 + read 3; a connect timeout means nothing was sent) with at most 1 s
# (backoff, or a server's Retry-After) between.
# No POST leaves later than SUBMIT_DEADLINE seconds after submit_order was called, i.e. after the
# pre-submit re-check (``_recheck``): a token that comes later, or a wait that would end later, ends
# the submit with nothing placed (RateLimited / BrokerUnavailable) and the worker re-plans.
SUBMIT_DEADLINE = 2.0
CLIENT_KNOBS: dict[str, Any] = dict(
    timeout=httpx.Timeout(connect=1.0, read=3.0, write=3.0, pool=1.0),
    max_retries=1,  # reads: 2 requests; a submit: 1 POST (the worker's own loop re-plans instead)
    max_wait=1.0,  # longest Retry-After / X-RateLimit-Reset wait honoured inside one call
    backoff_max=1.0,
    submit_deadline=SUBMIT_DEADLINE,
)
# Longest wait for a rate-limit token: around a submit (the checks were just made), and otherwise.
SUBMIT_LIMITER_WAIT = 1.0
LIMITER_WAIT = 5.0
# A submit that placed nothing (RateLimited, BrokerUnavailable, no token in time) is tried this many
# times in all, with fresh checks after a pause of SUBMIT_RETRY_PAUSE x attempt (or the broker's
# hint, up to SUBMIT_RETRY_MAX_PAUSE); then the entry is left pending.
SUBMIT_ATTEMPTS = 3
SUBMIT_RETRY_PAUSE = 0.25
SUBMIT_RETRY_MAX_PAUSE = 2.0

# An entry this worker left pending is replayed by it (XCLAIM of its own PEL entry, which counts a
# delivery) after OWN_REPLAY_FIRST seconds, doubling to OWN_REPLAY_MAX while it keeps failing: a
# signal gets several tries within its max age instead of one XAUTOCLAIM per claim_idle, and the
# delivery count (hence max_deliveries and the DLQ) grows no faster than this backoff.
OWN_REPLAY_FIRST = 1.0
OWN_REPLAY_MAX = 8.0
OWN_REPLAY_TRACKED = 1000  # schedules kept at most; beyond, the oldest are left to XAUTOCLAIM

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
    # seconds from a stop request (SIGTERM) to giving up the order in hand (left pending); it is
    # canceled by stop_grace - cancel_timeout at the latest. Keeps a stop inside stopwaitsecs=30.
    stop_grace: float = 15.0
    max_quote_age: float | None = None  # seconds since the quote's own time; None = settings.max_quote_age

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
                     "consumer_idle", "stop_grace"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.max_quote_age is not None and not self.max_quote_age > 0:
            raise ConfigError(f"max-quote-age must be > 0, got {self.max_quote_age}")
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
        self._keep_script = r.register_script(_KEEP_FRESH)  # its sha, for queueing it on a pipeline
        # held entries another consumer took (this worker stalled past claim-idle): the worker
        # checks it before a submit (still_holds) and never sends an order for a lost entry
        self.lost: set[str] = set()

    def hold(self, entry_id: str) -> None:
        with self._lock:
            self._held.add(entry_id)

    def release(self, entry_id: str) -> None:
        with self._lock:
            self._held.discard(entry_id)
            self.lost.discard(entry_id)

    def still_holds(self, entry_id: str) -> bool:
        """Re-claim ``entry_id`` now; False (and marked lost) when another consumer took it meanwhile."""
        with self._lock:
            if entry_id in self.lost:
                return False
        if keep_fresh(self.r, self.stream, self.group, self.consumer, [entry_id]):
            return True
        with self._lock:
            self.lost.add(entry_id)
        return False

    def queue_still_holds(self, pipe: Any, entry_id: str) -> None:
        """Queue ``still_holds(entry_id)``'s re-claim on ``pipe`` (one round trip with other reads);
        pass its reply to ``still_holds_after``. EVALSHA directly: a script registered on the
        pipeline would cost a SCRIPT EXISTS round trip on every execute."""
        pipe.evalsha(self._keep_script.sha, 1, self.stream, self.group, self.consumer, entry_id)

    def still_holds_after(self, entry_id: str, reply: Any) -> bool:
        """``still_holds`` from the reply of the command ``queue_still_holds`` queued."""
        if isinstance(reply, redis.exceptions.NoScriptError):  # Redis lost its scripts: load and ask again
            return self.still_holds(entry_id)
        if isinstance(reply, Exception):
            raise reply
        with self._lock:
            if entry_id in self.lost:
                return False
            if reply:
                return True
            self.lost.add(entry_id)
        return False

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


# ---------------------------------------------------------------------- replay of own pending entries

# KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] id. Delivers ``id`` again to the consumer
# only while it is pending FOR THIS CONSUMER (an entry another worker reclaimed, or that was acked,
# is left alone): XCLAIM without JUSTID, so the delivery count goes up as with any redelivery.
# Returns nil when not ours, {deliveries, {}} when its data was deleted (then acked), else
# {deliveries, {field, value, ...}}.
_REPLAY_OWN = """
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #mine == 0 then return false end
local deliveries = mine[1][4] + 1
local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3])
if got[1] then return {deliveries, got[1][2]} end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return {deliveries, {}}
"""


@dataclass
class _Replay:
    """When this worker replays an entry it left pending."""

    failures: int  # times in a row this worker left it pending
    due: float  # time.monotonic() of the replay


# ---------------------------------------------------------------------- bounded rate-limit waits


class BoundedLimiter:
    """The fleet-wide RateLimiter as the worker's client sees it: every wait for a token is bounded
    (``wait`` seconds; ``SUBMIT_LIMITER_WAIT`` inside ``tight()``), and while the worker is stopping
    by what is left of its stop grace. A wait that would be longer raises RateLimitTimeout at once.
    """

    def __init__(self, limiter: RateLimiter, wait: float = LIMITER_WAIT,
                 stop_left: Callable[[], float | None] = lambda: None) -> None:
        self.limiter = limiter
        self.wait = wait
        self.stop_left = stop_left

    def acquire(self, bucket: str, timeout: float | None = None) -> None:
        """A token, waiting at most the shortest of ``wait``, ``timeout`` (the caller's own bound,
        e.g. the client's submit deadline) and the stop grace left; else RateLimitTimeout."""
        bound = self.wait if timeout is None else min(self.wait, timeout)
        left = self.stop_left()
        if left is not None:
            bound = min(bound, left)
        self.limiter.acquire(bucket, timeout=max(0.0, bound))

    def observe(self, bucket: str, remaining: int | None, reset: float | None) -> None:
        self.limiter.observe(bucket, remaining, reset)

    @contextlib.contextmanager
    def tight(self, wait: float = SUBMIT_LIMITER_WAIT) -> Iterator[None]:
        """Waits inside the block are at most ``wait`` (one worker: one call at a time)."""
        saved, self.wait = self.wait, min(self.wait, wait)
        try:
            yield
        finally:
            self.wait = saved


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
    market: MarketSnapshot | None = None  # the cache as the checks see it: read in one round trip


class _Skip(Exception):
    """A risk check or the sizing stopped the order: journaled as outcome 'skipped'.

    ``gate``: the kill switch or the market clock stopped it, checks that may refuse every signal
    for hours; see ``Worker._skip`` for why those look the order up less often.
    """

    def __init__(self, reason: str, *, gate: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.gate = gate


# Errors that say "try again later", never "this order is bad" (RateLimitTimeout: no token in time).
_TRANSIENT = (BrokerUnavailable, RateLimited, Unauthorized, OrderOutcomeUnknown, RateLimitTimeout)
# A submit that ended like this placed nothing (as far as the broker can tell): safe to re-plan.
_NOT_PLACED = (RateLimited, BrokerUnavailable, RateLimitTimeout)


class Worker:
    """Consumes ``tradebot:signals``; ``step()`` is one round, ``run(stop)`` loops until stopped.

    Everything it talks to can be injected (tests); by default it builds its own Redis clients,
    its AlpacaClient (``CLIENT_KNOBS``, with the fleet-wide RateLimiter behind a BoundedLimiter),
    MarketCache (quote age checked) and Ledger.
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
        self._stop_event: threading.Event | None = None  # the run's stop request
        self._stop_at: float | None = None  # monotonic time the stop was requested
        self.limiter: Any = None  # the BoundedLimiter of the client built here (None when injected)
        if client is None:
            from bot.alpaca.client import AlpacaClient

            limiter = limiter if limiter is not None else RateLimiter.from_settings(self.r, settings)
            if isinstance(limiter, RateLimiter):
                limiter = BoundedLimiter(limiter, stop_left=self._stop_left)
            self.limiter = limiter
            client = self._own(AlpacaClient.from_settings(settings, limiter=limiter, **CLIENT_KNOBS))
        self.client = client
        self.clock = clock
        self.sleep = sleep
        max_quote_age = self.config.max_quote_age
        self.market = MarketCache(self.r, self.keys, settings.max_price_age, now=clock,
                                  max_quote_age=max_quote_age if max_quote_age is not None else settings.max_quote_age)
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
        self.counts: dict[str, int] = {JOURNALED: 0, DEAD: 0, DUPLICATE: 0, PENDING: 0, LOST: 0}
        self.outcomes: dict[str, int] = {}
        self._closed = False
        self.loop_errors = 0  # failed rounds of run() (Redis down, a bug): survived, counted
        self._group_ready = False
        self._next_claim = 0.0  # monotonic; 0 = due now
        self._last_error: dict[str, str] = {}  # entry id -> why it was left pending (for the DLQ reason)
        self._replays: dict[str, _Replay] = {}  # entry id -> its replay by this worker (own PEL)

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
        self._watch_stop(stop)
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

    def _watch_stop(self, stop: threading.Event) -> None:
        """Note the moment ``stop`` is set (a SIGTERM may come during a broker call): the stop
        grace counts from then, not from when the loop next looks."""
        self._use_stop(stop)

        def watch() -> None:
            while not stop.wait(0.1):
                if self._closed:
                    return
            if self._stop_at is None:
                self._stop_at = time.monotonic()

        threading.Thread(target=watch, name=f"stop-{self.consumer}", daemon=True).start()

    def _use_stop(self, stop: threading.Event) -> None:
        if stop is not self._stop_event:
            self._stop_event, self._stop_at = stop, None

    def _stop_left(self) -> float | None:
        """Seconds left of the stop grace (negative once past it); None while not stopping."""
        stop = self._stop_event
        if stop is None or not stop.is_set():
            return None
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        return self._stop_at + self.config.stop_grace - time.monotonic()

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
        self._use_stop(stop)
        if not self._group_ready:
            self.setup()
        results: list[str] = []
        if time.monotonic() >= self._next_claim:
            results += self.reclaim(stop)
        if stop.is_set():
            return results
        results += self.replay_own(stop)  # at most one per round: new entries are read every round
        if stop.is_set():
            return results
        self.reader.block_ms = self._block_ms()
        entries = self.reader.read(self.rb)
        if stop.is_set():  # stopped during the BLOCK: what was read stays pending and is replayed
            return results
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

    def replay_own(self, stop: threading.Event | None = None) -> list[str]:
        """Handle the own pending entry whose replay is due first (at most one); [] when none is due.

        The entry is delivered again only while it is still this consumer's (``_REPLAY_OWN``); one
        acked or reclaimed by another worker meanwhile is forgotten here.
        """
        if not self._replays or (stop is not None and stop.is_set()):
            return []
        now = time.monotonic()
        due = [(replay.due, entry_id) for entry_id, replay in self._replays.items() if replay.due <= now]
        if not due:
            return []
        entry_id = min(due)[1]
        claimed = run_script(self.rb, _REPLAY_OWN, [self.stream], [self.group, self.consumer, entry_id])
        if claimed is None:
            self._forget(entry_id)
            log.info("worker %s: %s is no longer pending here (done or reclaimed); not replaying it",
                     self.consumer, entry_id)
            return []
        deliveries, flat = int(claimed[0]), claimed[1]
        if not flat:
            self._forget(entry_id)
            log.warning("worker %s: acked own pending entry %s: its data was deleted", self.consumer, entry_id)
            return []
        fields = dict(zip(flat[::2], flat[1::2]))
        log.info("worker %s: replaying own pending %s (delivery %d)", self.consumer, entry_id, deliveries)
        return [self.handle(entry_id, fields, max(deliveries, 1))]

    def _block_ms(self) -> int:
        """The BLOCK of the next read of new entries: never past the next own replay."""
        if not self._replays:
            return self.config.block_ms
        wait = min(replay.due for replay in self._replays.values()) - time.monotonic()
        return max(1, min(self.config.block_ms, int(wait * 1000)))

    def _schedule_replay(self, entry_id: str) -> None:
        """``entry_id`` was left pending here: replay it after the capped backoff of its failures."""
        previous = self._replays.pop(entry_id, None)
        failures = previous.failures + 1 if previous is not None else 1
        delay = capped_backoff(failures, base=OWN_REPLAY_FIRST, cap=OWN_REPLAY_MAX)
        self._replays[entry_id] = _Replay(failures, time.monotonic() + delay)
        while len(self._replays) > OWN_REPLAY_TRACKED:  # XAUTOCLAIM still retries those dropped
            del self._replays[next(iter(self._replays))]
        log.info("worker %s: replaying %s in %.1fs", self.consumer, entry_id, delay)

    def _forget(self, entry_id: str) -> None:
        self._replays.pop(entry_id, None)
        self._last_error.pop(entry_id, None)

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

        Returns JOURNALED, DEAD, DUPLICATE, PENDING or LOST (another worker took the entry before
        this one sent anything). Raises only for Redis being unreachable (the loop backs off and
        replays its pending entries).
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
        if result == PENDING:
            self._schedule_replay(entry_id)  # still in the own PEL: retried well before claim_idle
        else:
            self._forget(entry_id)
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
        done = self.keys.done(signal.source_stream, signal.source_id)
        # done marker, kill switch, clock, price, account, position: one round trip
        job.market = self.market.snapshot(signal.ticker, (done, self.keys.halt))
        if job.market.exists(done):
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
                return self._follow_existing(job, existing)
            job.market = self.market.snapshot(signal.ticker, (self.keys.halt,))  # the lookup took time
        try:
            request = self._plan(job)
            return self._submit(job, request)
        except _Skip as skip:
            return self._skip(job, skip)

    def _skip(self, job: _Job, skip: _Skip) -> str:
        """Journal ``skipped`` and release the reservation, unless the order exists after all.

        The signal may have been handled before although nothing here says so: Redis lost its
        last second (the entry is back as delivery 1, journal, marker and ledger entry gone), or
        this worker is a reclaimer and the stalled first owner submitted meanwhile. So the broker
        is asked first; an order found is followed and journaled (its reservation settled), never
        hidden behind a 'skipped'. Gate skips (kill switch, market clock) may hit every signal
        for hours: they ask only when the signal was delivered before or a reservation of its
        client_order_id exists (i.e. it got past the gates once).
        """
        if skip.gate and job.deliveries == 1 and not self.ledger.exists(job.coid):
            existing = None
        else:
            existing = self.client.get_order_by_client_id(job.coid)  # a failed lookup leaves it pending
        if existing is not None:
            log.warning("worker %s: %s %s would be skipped (%s) but its order %s exists: following it",
                        self.consumer, job.signal.source_stream, job.signal.source_id, skip.reason, job.coid)
            return self._follow_existing(job, existing)
        self.ledger.release(job.coid)  # a reservation of an earlier delivery (crash before submit) goes too
        job.submitted_at = None  # nothing was placed, whatever was tried
        return self._journal(job, "skipped", reason=skip.reason)

    def _follow_existing(self, job: _Job, existing: Order) -> str:
        signal = job.signal
        log.info("worker %s: order %s for %s %s exists (%s): following it", self.consumer, job.coid,
                 signal.source_stream, signal.source_id, existing.status)
        job.submitted_at = _timestamp(existing.submitted_at or existing.created_at) or job.claimed_at
        job.qty = existing.qty
        return self._follow_and_journal(job, existing)

    # ------------------------------------------------------------------ risk and sizing

    def _plan(self, job: _Job) -> OrderRequest:
        """Risk checks, sizing and the reservation; raises _Skip with the reason."""
        signal = job.signal
        session_open = self._check_gates(job)
        extended = not session_open  # only reached when extended hours are allowed
        price = self._fresh_price(job)
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

    def _check_gates(self, job: _Job) -> bool:
        """Kill switch, signal age, market clock (as ``job.market`` read them); True when the
        regular session is open. _Skip if not."""
        signal, market = job.signal, self._market(job)
        reason = check_halt(market.value(self.keys.halt))
        if reason:
            raise _Skip(reason, gate=True)
        now = self.clock()
        reason = check_signal_age(signal.source_at, now, self.limits)
        if reason:
            raise _Skip(reason)
        try:
            clock = market.clock()
        except MarketDataError as exc:  # a corrupt clock hash counts as no clock
            raise _Skip(f"market clock unknown: {exc}", gate=True) from None
        session_open = clock.open_at(now) if clock is not None else None
        reason = check_market_open(session_open, self.limits, clock.age if clock is not None else None)
        if reason:
            raise _Skip(reason, gate=True)
        return bool(session_open)

    def _market(self, job: _Job) -> MarketSnapshot:
        if job.market is None:
            job.market = self.market.snapshot(job.signal.ticker, (self.keys.halt,))
        return job.market

    def _fresh_price(self, job: _Job) -> Price:
        try:
            return self._market(job).price()
        except MarketDataError as exc:  # StalePrice, StaleQuote, NoPrice, a corrupt hash
            raise _Skip(str(exc)) from None

    def _recheck(self, job: _Job, request: OrderRequest) -> bool:
        """The cheap checks again, right before the submit: time may have passed since the plan
        (a rate-limit wait, a broker retry, a pause between submit attempts). The same round trip
        re-claims the entry (``EntryKeeper.still_holds``): True when this worker still holds it."""
        job.market = self.market.snapshot(
            job.signal.ticker, (self.keys.halt,), also=lambda pipe: self.keeper.queue_still_holds(pipe, job.entry_id))
        session_open = self._check_gates(job)
        if not request.extended_hours and not session_open:
            raise _Skip("market closed while the order was being sent", gate=True)
        self._fresh_price(job)
        return self.keeper.still_holds_after(job.entry_id, job.market.more[0])

    def _size_buy(self, job: _Job, ask: Decimal, order_type: str) -> tuple[OrderPlan, Reservation]:
        signal, config = job.signal, self.config
        account = self._market(job).account()
        if account is None:
            raise _Skip("account not in the market cache: is the price poller running?")
        held = self._held_qty(job)
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
        # the position limit once every buy in flight fills, enforced inside the ledger's script:
        # `held` is the cached position, which does not show other workers' orders in flight
        target = self.limits.max_position_value
        if all_in:
            target = min(target, self.weights.get(signal.ticker, Decimal(0)) * account.equity)
        try:
            reservation = self.ledger.reserve_buy(job.coid, signal.ticker, price, qty=qty, max_cash=max_cash,
                                                  max_position_qty=target / price)
        except InsufficientCash as exc:
            raise _Skip(f"no cash left to buy {signal.ticker}: {exc}") from None
        except PositionLimit as exc:
            raise _Skip(str(exc)) from None
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
        max_qty = None
        if plan.qty is None:
            # all-in: sell what one order may (max_order_notional), not nothing: a position worth more
            # than the limit is closed over several sell signals instead of never
            max_qty = sell_qty_cap(self.limits, plan.reserve_price(quote))
            if max_qty < 1:
                raise _Skip(check_order_notional(Decimal(1), plan.reserve_price(quote), self.limits)
                            or f"max order notional allows no whole share of {signal.ticker}")
        try:
            reservation = self.ledger.reserve_sell(job.coid, signal.ticker, qty=plan.qty, max_qty=max_qty)
        except InsufficientShares as exc:
            if exc.available <= 0:
                raise _Skip(f"no {signal.ticker} shares to sell") from None
            raise _Skip(f"not enough {signal.ticker} shares to sell: {exc}") from None
        except LedgerError as exc:
            raise _Skip(str(exc)) from None
        reason = check_order_notional(reservation.qty, plan.reserve_price(quote), self.limits)
        if reason:
            raise _Skip(reason)
        if max_qty is not None and reservation.qty == max_qty:
            log.info("worker %s: all-in sell of %s capped at %s shares by the max order notional %s",
                     self.consumer, signal.ticker, reservation.qty, self.limits.max_order_notional)
        return plan, reservation

    def _held_qty(self, job: _Job) -> Decimal:
        try:
            position = self._market(job).position()
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
        """Send the planned order (fresh checks first) and follow it; re-plan when nothing was placed."""
        job.qty = request.qty
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            if self._stop_left() is not None:
                # stopping: no new order (the reservation stays with the entry, which is replayed)
                return self._leave_pending(job.entry_id, f"stopping before order {job.coid} was sent")
            if not self._recheck(job, request):
                return self._lost(job)
            job.submitted_at = self.clock()
            try:
                with self._tight_limiter():
                    order = self.client.submit_order(request)
            except DuplicateClientOrderId:
                raise  # the broker says the id exists yet cannot show it: retry later (transient)
            except (InsufficientFunds, InvalidOrder) as exc:
                self.ledger.release(job.coid)
                log.warning("worker %s: order %s refused by the broker: %s", self.consumer, job.coid, exc)
                return self._journal(job, "rejected", reason=exc.message or str(exc))
            except _NOT_PLACED as exc:  # OrderOutcomeUnknown is not here: handle() leaves it pending
                pause = self._retry_pause(exc, attempt)
                if attempt == SUBMIT_ATTEMPTS or pause is None:
                    raise
                log.warning("worker %s: order %s not placed (%s); checking again in %.2fs (attempt %d/%d)",
                            self.consumer, job.coid, exc, pause, attempt + 1, SUBMIT_ATTEMPTS)
                if self._stop_event is not None:
                    self._stop_event.wait(pause)  # a stop ends the pause: the next round leaves it pending
                else:
                    self.sleep(pause)
                continue
            log.info("worker %s: submitted %s %s %s (%s) -> %s %s", self.consumer, request.side, request.qty,
                     request.symbol, job.coid, order.id, order.status)
            return self._follow_and_journal(job, order)
        raise AssertionError("unreachable")  # pragma: no cover

    def _tight_limiter(self) -> Any:
        return self.limiter.tight() if isinstance(self.limiter, BoundedLimiter) else contextlib.nullcontext()

    def _retry_pause(self, exc: Exception, attempt: int) -> float | None:
        """The pause before the next submit attempt; None when the broker asks for longer."""
        hint = getattr(exc, "retry_after", None) or getattr(exc, "wait", None) or 0.0
        pause = max(SUBMIT_RETRY_PAUSE * attempt, float(hint))
        return pause if pause <= SUBMIT_RETRY_MAX_PAUSE else None

    def _lost(self, job: _Job) -> str:
        """Another worker reclaimed the entry while this one stalled: it is that worker's now (same
        client_order_id, same reservation). Send nothing, release nothing, journal nothing."""
        log.warning("worker %s: entry %s was reclaimed by another worker before order %s was sent; "
                    "leaving it to that worker (claim-idle too short for this worker's pauses?)",
                    self.consumer, job.entry_id, job.coid)
        return LOST

    def _follow_and_journal(self, job: _Job, order: Order) -> str:
        final, canceled_by_us, stopping = self._follow(order)
        if final is None:
            return self._leave_pending(job.entry_id, f"order {order.id} ({job.coid}) did not reach a final state")
        final_at = self.clock()
        outcome, reason = outcome_of(final, canceled_by_us, self.config.order_timeout)
        if canceled_by_us and stopping and outcome == "canceled":
            reason = "canceled unfilled: the worker was stopping"
        if final.filled_qty > 0:
            # settle before journaling: a crash in between replays the settle (idempotent per coid)
            self.ledger.settle(job.coid, final.filled_qty, final.filled_avg_price)
        else:
            self.ledger.release(job.coid)
        result = self._journal(job, outcome, reason=reason, order=final, final_at=final_at)
        if final.filled_qty > 0:
            self.market.request_refresh()
        return result

    def _follow(self, order: Order) -> tuple[Order | None, bool, bool]:
        """Poll the order until it is final; cancel it past order_timeout (or the stop grace).

        Returns (final order or None, canceled by us, canceled because the worker was stopping).
        """
        config = self.config
        age = 0.0
        created = _timestamp(order.created_at)
        if created is not None:
            age = min(max(0.0, self.clock() - created), config.order_timeout)
        order_deadline = time.monotonic() + config.order_timeout - age
        deadline, give_up = order_deadline, order_deadline + config.cancel_timeout
        delay = config.follow_initial
        canceled = stop_cancel = False
        while True:
            if order.is_terminal:
                return order, canceled, stop_cancel
            now = time.monotonic()
            left = self._stop_left()
            if left is not None:  # stopping: cancel and give up within the stop grace
                deadline = min(deadline, now + left - config.cancel_timeout)
                give_up = min(give_up, now + left)
            if now >= give_up:
                if not canceled and left is not None:
                    self._cancel(order, "the worker is stopping")  # best effort; the replay reads it back
                log.error("worker %s: order %s (%s) still %s at the end of the %s; leaving it pending",
                          self.consumer, order.id, order.client_order_id, order.status,
                          "stop grace" if left is not None else f"{config.cancel_timeout:g}s cancel timeout")
                return None, canceled, stop_cancel
            if not canceled and now >= deadline:
                stop_cancel = now < order_deadline  # the stop grace, not the order timeout, ends it
                canceled = self._cancel(order, "the worker is stopping" if stop_cancel else "")
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
            except (AlpacaError, RateLimitTimeout) as exc:  # keep following until give_up
                log.warning("worker %s: reading order %s failed: %s", self.consumer, order.id, exc)

    def _cancel(self, order: Order, why: str = "") -> bool:
        log.info("worker %s: order %s (%s) %s (%s): canceling", self.consumer, order.id, order.client_order_id,
                 why or f"not final after {self.config.order_timeout:g}s", order.status)
        try:
            self.client.cancel_order(order.id)
        except (AlpacaError, RateLimitTimeout) as exc:
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
        level = logging.WARNING if outcome == "rejected" else logging.INFO
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
            return self._follow_existing(job, existing)
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
