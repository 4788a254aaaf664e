"""How one worker behaves: the `tradebot worker` flags, and the bounds that keep an order on time."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

from bot.breakers import BreakerLimits
from bot.config import ConfigError
from bot.strategies import ORDER_TYPES
from bot.strategy import StrategyMap
from bot.streams import default_consumer_name

# The worker's AlpacaClient: no request, and no wait inside one call, may hold an order long after
# its risk checks or a stop past supervisord's stopwaitsecs. One call makes at most 2 requests of
# at most ~4 s (connect 1 + read 3; a connect timeout means nothing was sent) with at most 1 s
# (backoff, or a server's Retry-After) between. No POST leaves later than SUBMIT_DEADLINE seconds
# after the pre-submit re-check: a later token or wait ends the submit with nothing placed.
SUBMIT_DEADLINE = 2.0
CLIENT_KNOBS: dict[str, Any] = dict(
    timeout=httpx.Timeout(connect=1.0, read=3.0, write=3.0, pool=1.0),
    max_retries=1,  # reads: 2 requests; a submit: 1 POST (the worker's own loop tries again instead)
    max_wait=1.0,  # longest Retry-After / X-RateLimit-Reset wait honoured inside one call
    backoff_max=1.0,
    submit_deadline=SUBMIT_DEADLINE,
)
# Longest wait for a rate-limit token: around a submit (the checks were just made), and otherwise.
SUBMIT_LIMITER_WAIT = 1.0
LIMITER_WAIT = 5.0
OWN_REPLAY_TRACKED = 1000  # replay schedules kept at most; beyond, the oldest are left to XAUTOCLAIM

_POSITIVE = ("claim_idle", "order_timeout", "cancel_timeout", "follow_initial", "follow_max", "backoff_max",
             "consumer_idle", "stop_grace", "own_replay_first", "own_replay_max", "submit_retry_pause",
             "submit_retry_max_pause", "event_late", "resolve_after", "broker_timeout")


@dataclass(frozen=True)
class WorkerConfig:
    """One worker's settings (the `tradebot worker` flags); risk limits and symbols come from Settings."""

    consumer: str = field(default_factory=default_consumer_name)
    claim_idle: float = 30.0  # seconds; above the longest order handling time
    claim_interval: float | None = None  # seconds between XAUTOCLAIM rounds; None = claim_idle / 2
    max_deliveries: int = 5
    order_timeout: float = 10.0  # seconds a non-final order may live before it is canceled
    cancel_timeout: float = 5.0  # seconds to read a canceled order back to a final state
    strategy: str = "all-in"  # a name, or SYMBOL=NAME,...,*=NAME (bot.strategy.StrategyMap)
    fixed_qty: Decimal | None = None
    fixed_notional: Decimal | None = None
    percent: Decimal | None = None  # percent-of-equity: the share of equity per order
    breakers: BreakerLimits = field(default_factory=BreakerLimits)  # trips and the two gates
    strategy_options: Mapping[str, str] = field(default_factory=dict)  # for plug-ins
    order_type: str = "market"
    slippage_bps: int = 10  # limit orders: this many basis points beyond the quote
    max_signal_age: float | None = None  # None = settings.max_signal_age
    extended_hours: bool | None = None  # None = settings.extended_hours
    block_ms: int = 1000  # XREADGROUP BLOCK: a stop request is seen within about this long
    ready_timeout: float | None = None  # wait for the poller this long at start (None = forever)
    follow_initial: float = 0.05  # order polling: first pause, doubled up to follow_max
    follow_max: float = 1.0
    # Follow orders by the listener's events (no REST read while it is live); an order with no event
    # for event_late seconds is read over REST once (the wait doubles, up to 4 x event_late).
    follow_events: bool = True
    event_late: float = 5.0
    # After a POST with an unknown outcome, the signal is neither journaled skipped nor dead-lettered
    # until its order shows up (then it is adopted) or this many seconds passed without it.
    resolve_after: float = 60.0
    # Start-up fails closed: take no signal before a reconciliation completed (the listener's, or
    # `tradebot reconcile --apply`): the books may disagree with the broker after a crash.
    wait_reconcile: bool = False
    broker_timeout: float = 3.0  # read timeout of one broker request (CLIENT_KNOBS' read)
    backoff_max: float = 5.0  # longest pause of the loop while Redis or the broker is down
    # consumers of dead processes (default names change with every pid) are removed from the
    # group once idle this long with nothing pending, so the group does not grow forever
    consumer_idle: float = 3600.0
    # seconds from a stop request (SIGTERM) to giving up the order in hand (left pending); it is
    # canceled by stop_grace - cancel_timeout at the latest. Keeps a stop inside stopwaitsecs=30.
    stop_grace: float = 15.0
    max_quote_age: float | None = None  # seconds since the quote's own time; None = settings.max_quote_age
    # An entry this worker left pending is replayed by it after own_replay_first seconds, doubling to
    # own_replay_max while it keeps failing: several tries within a signal's max age instead of one
    # XAUTOCLAIM per claim_idle, and the delivery count (so the DLQ) grows no faster than this.
    own_replay_first: float = 1.0
    own_replay_max: float = 8.0
    # A submit that placed nothing (RateLimited, BrokerUnavailable, no token in time) is tried this
    # many times in all, with fresh checks after submit_retry_pause x attempt (or the broker's hint,
    # up to submit_retry_max_pause); then the entry is left pending.
    submit_attempts: int = 3
    submit_retry_pause: float = 0.25
    submit_retry_max_pause: float = 2.0

    def __post_init__(self) -> None:
        if not self.consumer or any(ch.isspace() for ch in self.consumer):
            raise ConfigError(f"consumer name {self.consumer!r} must be non-empty without spaces")
        StrategyMap.parse(self.strategy)  # the syntax; names are checked when the worker loads them
        if self.percent is not None and not (Decimal(self.percent).is_finite() and 0 < Decimal(self.percent) <= 1):
            raise ConfigError(f"percent must be > 0 and <= 1 (a share of equity), got {self.percent}")
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
        for name in ("max_deliveries", "submit_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.max_quote_age is not None and not self.max_quote_age > 0:
            raise ConfigError(f"max-quote-age must be > 0, got {self.max_quote_age}")
        if self.block_ms < 1:
            raise ConfigError(f"block-ms must be >= 1, got {self.block_ms}")

    def client_knobs(self) -> dict[str, Any]:
        """CLIENT_KNOBS with this worker's read timeout (write follows it; connect stays 1 s)."""
        timeout = httpx.Timeout(connect=1.0, read=self.broker_timeout, write=self.broker_timeout, pool=1.0)
        return {**CLIENT_KNOBS, "timeout": timeout}

    @property
    def claim_every(self) -> float:
        return self.claim_interval if self.claim_interval is not None else self.claim_idle / 2

    @property
    def keep_fresh_every(self) -> float:
        """How often the in-hand entry is re-claimed: well inside claim_idle."""
        return max(0.05, self.claim_idle / 4)
