"""The signal generator: the original project's signal source, and the fleet's demo and load tool.

During US market hours (09:30-16:00 America/New_York, weekdays; exchange holidays are not
known here) it XADDs random ``ticker=<SYM> direction=b|s`` entries to a source stream:
- probability mode (default): every second, each ticker gets a signal with probability P
  (0.5 % by default, the original behaviour);
- rate mode (``rate``): a steady R signals per second, tickers and directions drawn at random.

The loop runs on the monotonic clock (a wall-clock jump neither bursts nor stalls it) and stops
when ``stop_event`` is set (SIGTERM) or after ``count`` signals.  Clock, wall time, randomness
and waiting are injectable, so tests run it without sleeping.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from datetime import time as dtime
from zoneinfo import ZoneInfo

import redis
from redis.typing import EncodableT, FieldT

from bot.codec import text

log = logging.getLogger(__name__)

MARKET_TZ = ZoneInfo("America/New_York")
MARKET_OPEN = dtime(9, 30)
MARKET_CLOSE = dtime(16, 0)
DEFAULT_PROBABILITY = 0.005
TICK_SECONDS = 1.0  # probability mode draws once per ticker per tick
GROUP_POLL_SECONDS = 0.25  # while waiting for the router's consumer group
CLOSED_POLL_SECONDS = 30.0  # how often a closed market is looked at again
MAX_BATCH = 1000  # signals sent in one pipeline at most (rate mode catching up)
RETRY_SECONDS = 1.0  # pause after a Redis error


def is_market_open(now: datetime) -> bool:
    """Regular US session: weekdays 09:30 <= t < 16:00 New York time. ``now`` must be aware."""
    if now.tzinfo is None:
        raise ValueError("is_market_open needs an aware datetime")
    local = now.astimezone(MARKET_TZ)
    return local.weekday() < 5 and MARKET_OPEN <= local.time() < MARKET_CLOSE


@dataclass(frozen=True)
class GeneratorConfig:
    symbols: tuple[str, ...]
    stream: str
    probability: float = DEFAULT_PROBABILITY
    rate: float | None = None  # signals per second; overrides probability
    count: int | None = None  # stop after this many signals
    always_open: bool = False
    seed: int | None = None
    first_buy: bool = False  # one buy per ticker as soon as the market is open (the demo trades at once)
    # send nothing until this consumer group exists on the stream: the router creates its group at
    # "$" (new entries only), so a signal sent before it would never be routed (a fleet starting up)
    wait_for_group: str | None = None

    def __post_init__(self) -> None:
        if not self.symbols:
            raise ValueError("no symbols to generate signals for")
        if not self.stream:
            raise ValueError("no stream to write signals to")
        if not 0 <= self.probability <= 1:
            raise ValueError(f"probability {self.probability} must be between 0 and 1 (per second per ticker)")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate {self.rate} must be > 0 signals per second")
        if self.count is not None and self.count < 0:
            raise ValueError(f"count {self.count} must be >= 0")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class SignalGenerator:
    """``run()`` until stopped or ``count`` reached; returns the number of signals sent."""

    def __init__(self, r: redis.Redis, config: GeneratorConfig, *,
                 rng: random.Random | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = _utc_now,
                 stop_event: threading.Event | None = None,
                 wait: Callable[[float], bool] | None = None) -> None:
        self.r = r
        self.config = config
        self.rng = rng or random.Random(config.seed)
        self.monotonic = monotonic
        self.now = now
        self.stop_event = stop_event or threading.Event()
        # wait(seconds) -> True when asked to stop; the default sleeps on the stop event
        self.wait = wait or self.stop_event.wait
        self.sent = 0
        self._first_sent = False
        self._group_seen = self.config.wait_for_group is None
        self._waiting_logged = False
        self._rate_start: float | None = None  # monotonic time the current rate schedule started
        self._rate_sent = 0  # signals sent on the current rate schedule
        self._was_open: bool | None = None

    # ----------------------------------------------------------------- decisions

    def market_open(self) -> bool:
        is_open = self.config.always_open or is_market_open(self.now())
        if is_open != self._was_open:
            log.info("market %s", "open: generating signals" if is_open else "closed: waiting for the next session")
            self._was_open = is_open
        return is_open

    def remaining(self) -> int | None:
        return None if self.config.count is None else max(self.config.count - self.sent, 0)

    def draw_tick(self) -> list[dict[str, str]]:
        """Probability mode: one Bernoulli draw per ticker; the direction of each hit is random."""
        signals = []
        for symbol in self.config.symbols:
            if self.rng.random() < self.config.probability:
                signals.append(self._signal(symbol))
        return signals

    def draw_random(self, n: int) -> list[dict[str, str]]:
        """Rate mode: ``n`` signals on random tickers."""
        return [self._signal(self.rng.choice(self.config.symbols)) for _ in range(n)]

    def _signal(self, symbol: str) -> dict[str, str]:
        return {"ticker": symbol, "direction": self.rng.choice(("b", "s"))}

    # ----------------------------------------------------------------- effects

    def send(self, signals: list[dict[str, str]]) -> list[str]:
        """XADD each signal (one round trip); their ids."""
        remaining = self.remaining()
        if remaining is not None:
            signals = signals[:remaining]
        if not signals:
            return []
        pipe = self.r.pipeline(transaction=False)
        for fields in signals:
            payload: dict[FieldT, EncodableT] = {name: value for name, value in fields.items()}
            pipe.xadd(self.config.stream, payload)
        ids = [text(i) for i in pipe.execute()]
        self.sent += len(ids)
        # each signal at INFO in the seed's probability mode (a few a minute); load runs (--rate) at DEBUG
        level = logging.DEBUG if self.config.rate is not None else logging.INFO
        for fields, entry_id in zip(signals, ids, strict=True):
            log.log(level, "signal %s %s -> %s %s", fields["ticker"], fields["direction"], self.config.stream, entry_id)
        return ids

    # ----------------------------------------------------------------- the loop

    def group_ready(self) -> bool:
        if self._group_seen:
            return True
        try:
            groups = self.r.xinfo_groups(self.config.stream)
        except redis.ResponseError:  # no such stream yet
            groups = []
        self._group_seen = any(text(g.get("name", "")) == self.config.wait_for_group for g in groups)
        if not self._group_seen and self._waiting_logged is False:
            log.info("waiting for the router's group %s on %s before sending", self.config.wait_for_group,
                     self.config.stream)
            self._waiting_logged = True
        return self._group_seen

    def step(self) -> float:
        """Send what is due now; return how long to wait before the next step."""
        if not self.group_ready():
            return GROUP_POLL_SECONDS
        if not self.market_open():
            self._rate_start = None
            return CLOSED_POLL_SECONDS
        if self.config.first_buy and not self._first_sent:
            self._first_sent = True
            self.send([{"ticker": symbol, "direction": "b"} for symbol in self.config.symbols])
        if self.config.rate is None:
            self.send(self.draw_tick())
            return TICK_SECONDS
        return self._rate_step()

    def _rate_step(self) -> float:
        rate = self.config.rate
        assert rate is not None
        now = self.monotonic()
        if self._rate_start is None:
            self._rate_start, self._rate_sent = now, 0
        # +1: the first goes at once; the epsilon keeps float error from missing a signal due exactly now
        due = int((now - self._rate_start) * rate + 1e-6) + 1 - self._rate_sent
        if due > MAX_BATCH:
            # far behind (e.g. Redis was away): send one batch and restart the schedule, no endless burst
            log.warning("generator is %d signals behind its rate; skipping ahead", due - MAX_BATCH)
            self._rate_start, self._rate_sent, due = now, 0, MAX_BATCH
        if due > 0:
            self._rate_sent += len(self.send(self.draw_random(due)))
        next_at = self._rate_start + self._rate_sent / rate
        return max(next_at - self.monotonic(), 0.0)

    # called after every step (a heartbeat's progress); a no-op unless the process sets it
    on_step: Callable[[], None] = staticmethod(lambda: None)

    def run(self) -> int:
        cfg = self.config
        mode = f"{cfg.rate:g} signals/s" if cfg.rate is not None else f"probability {cfg.probability:g}/s per ticker"
        log.info("generating signals for %s on stream %s (%s%s%s)", ",".join(cfg.symbols), cfg.stream, mode,
                 ", market always open" if cfg.always_open else "",
                 f", stopping after {cfg.count}" if cfg.count is not None else "")
        next_step = self.monotonic()
        while not self.stop_event.is_set() and self.remaining() != 0:
            try:
                pause = self.step()
                self.on_step()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("Redis error, retrying in %.0fs: %s", RETRY_SECONDS, exc)
                self._rate_start = None
                pause = RETRY_SECONDS
            if self.remaining() == 0:
                break
            now = self.monotonic()
            # probability ticks keep a fixed cadence on the monotonic clock (sending time does not
            # make them drift; ticks missed during a stall are skipped, not caught up); the rate
            # schedule already accounts for its own timing
            next_step = max(next_step + pause, now) if self.config.rate is None else now + pause
            if self.wait(next_step - now):
                break
        log.info("generator stopped after %d signals", self.sent)
        return self.sent
