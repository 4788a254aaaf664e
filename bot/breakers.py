"""Circuit breakers: a day's loss, a drawdown from the equity peak and a runaway order rate trip the
fleet into reduce-only or halted by themselves (``TRADEBOT_BREAKER_ACTION``); the reason is the
trading state's, so every skipped signal journals it and the notifier alerts on the change.

Resets: the daily-loss trip ends at the next trading day (the poller resumes trading then, unless
an operator changed the state meanwhile); the drawdown and order-rate trips only by hand
(``tradebot resume``, which also restarts the peak at the current equity and quiets the daily
check until the next day). Two more limits are gates, not trips: max open positions (a buy of a
symbol not held is skipped) and a per-symbol cooldown after a fill.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

import redis

from bot.codec import display
from bot.config import ConfigError, seconds_setting
from bot.keys import Keys
from bot.trading import ACTIVE, HALTED, REDUCE_ONLY, read_state, set_state

log = logging.getLogger(__name__)

NEW_YORK = ZoneInfo("America/New_York")
PREFIX = "breaker: "
DAILY = "daily loss"


@dataclass(frozen=True)
class Amount:
    """Dollars, or a percent of a base (``2%``)."""

    value: Decimal
    percent: bool = False

    @classmethod
    def parse(cls, name: str, text: str) -> Amount | None:
        raw = text.strip()
        if not raw:
            return None
        percent = raw.endswith("%")
        try:
            value = Decimal(raw[:-1] if percent else raw)
        except InvalidOperation:
            raise ConfigError(f"{name}={text!r} is not an amount (dollars, or a percent such as 2%)") from None
        if not value.is_finite() or value <= 0 or (percent and value >= 100):
            raise ConfigError(f"{name}={text!r} must be > 0" + (" and < 100%" if percent else ""))
        return cls(value, percent)

    def of(self, base: Decimal) -> Decimal:
        return base * self.value / 100 if self.percent else self.value

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else f"${self.value}"


@dataclass(frozen=True)
class BreakerLimits:
    daily_loss: Amount | None = None
    drawdown: Amount | None = None
    max_orders_per_minute: int | None = None
    action: str = REDUCE_ONLY  # what a trip switches to
    max_open_positions: int | None = None  # a gate
    cooldown: float | None = None  # a gate: seconds after a fill of a symbol

    @classmethod
    def from_env(cls, get: Callable[[str, str], str]) -> BreakerLimits:
        action = get("TRADEBOT_BREAKER_ACTION", REDUCE_ONLY).strip() or REDUCE_ONLY
        if action not in (REDUCE_ONLY, HALTED):
            raise ConfigError(f"TRADEBOT_BREAKER_ACTION={action!r} is not reduce-only or halted")
        return cls(daily_loss=Amount.parse("TRADEBOT_MAX_DAILY_LOSS", get("TRADEBOT_MAX_DAILY_LOSS", "")),
                   drawdown=Amount.parse("TRADEBOT_MAX_DRAWDOWN", get("TRADEBOT_MAX_DRAWDOWN", "")),
                   max_orders_per_minute=_count(get, "TRADEBOT_MAX_ORDERS_PER_MINUTE"), action=action,
                   max_open_positions=_count(get, "TRADEBOT_MAX_OPEN_POSITIONS"),
                   cooldown=seconds_setting(get, "TRADEBOT_COOLDOWN", None, allow_zero=False))

    @property
    def watches_equity(self) -> bool:
        return self.daily_loss is not None or self.drawdown is not None


def trading_day(now: float) -> str:
    """The trading day ``now`` belongs to: the date in New York."""
    return datetime.fromtimestamp(now, NEW_YORK).date().isoformat()


class Breakers:
    """The trips, over one hash (``tradebot:breakers``: peak equity, the last trip, acknowledgements)."""

    def __init__(self, r: redis.Redis, keys: Keys, limits: BreakerLimits, now: Callable[[], float] = time.time) -> None:
        self.r, self.keys, self.limits, self.now = r, keys, limits, now

    def check_equity(self, equity: Decimal, last_equity: Decimal | None) -> str | None:
        """After each account poll: the peak follows the equity up; a day's loss past the limit, or
        a drawdown from the peak past it, trips. Returns the trip's reason (None: no trip)."""
        if not self.limits.watches_equity or equity <= 0:
            return None
        day = trading_day(self.now())
        stored = {display(k): display(v) for k, v in self.r.hgetall(self.keys.breakers).items()}
        self._new_day(day, stored, last_equity)
        peak = max(_dec(stored.get("peak")) or equity, equity)
        if peak != _dec(stored.get("peak")):
            self.r.hset(self.keys.breakers, "peak", str(peak))
        daily, drawdown = self.limits.daily_loss, self.limits.drawdown
        if daily is not None and last_equity and stored.get("acknowledged", "") != day:
            loss = last_equity - equity
            if loss > 0 and loss >= daily.of(last_equity):
                return self.trip(f"{DAILY} {loss:.2f} from the day's start {last_equity:.2f} (limit {daily})", day,
                                 last_equity=last_equity)
        if drawdown is not None:
            fall = peak - equity
            if fall > 0 and fall >= drawdown.of(peak):
                return self.trip(f"drawdown {fall:.2f} from the equity peak {peak:.2f} (limit {drawdown})", day)
        return None

    def count_order(self, client_order_id: str) -> str | None:
        """Before an order's POST: it counts in this minute's orders (once, however often its signal
        is replayed or its POST retried); the trip's reason when that is past the limit."""
        limit = self.limits.max_orders_per_minute
        if limit is None:
            return None
        minute = int(self.now() // 60)
        key = self.keys.orders_per_minute(minute)
        pipe = self.r.pipeline(transaction=True)
        pipe.sadd(key, client_order_id)
        pipe.expire(key, 120)
        pipe.scard(key)
        count = int(pipe.execute()[2])
        if count <= limit:
            return None
        return self.trip(f"{count} orders this minute (limit {limit} a minute)", trading_day(self.now()))

    def trip(self, reason: str, day: str, *, last_equity: Decimal | None = None) -> str:
        """Switch to the breaker action (from active; from reduce-only only to halted), recorded;
        a state an operator set between the read and the switch is left alone."""
        state = read_state(self.r, self.keys)
        action = self.limits.action
        if state.state == ACTIVE or (state.state == REDUCE_ONLY and action == HALTED):
            if set_state(self.r, self.keys, action, PREFIX + reason, only_if=state) != state:
                return reason  # changed meanwhile: by an operator, or another process's trip
            self.r.hset(self.keys.breakers, mapping={"tripped": reason, "tripped_at": repr(self.now()),
                                                     "tripped_day": day, "action": action,
                                                     "tripped_base": "" if last_equity is None else str(last_equity)})
            log.warning("breaker tripped: %s: trading is %s", reason, action)
        return reason

    def _new_day(self, day: str, stored: dict[str, str], last_equity: Decimal | None) -> None:
        """A daily-loss trip of an earlier day ends once the broker has started the new day too (its
        ``last_equity`` moved on from the trip's): trading resumes if the state is still the trip's."""
        if stored.get("tripped_day", day) == day or not stored.get("tripped", "").startswith(DAILY):
            return
        if last_equity is not None and stored.get("tripped_base") == str(last_equity):
            return  # the broker's day has not rolled over yet: the same loss would trip again
        state = read_state(self.r, self.keys)
        if state.reason and state.reason.startswith(PREFIX + DAILY):
            set_state(self.r, self.keys, ACTIVE, only_if=state)
            log.warning("breaker reset: a new trading day (%s) ends the daily-loss trip", day)
        self.r.hdel(self.keys.breakers, "tripped", "tripped_day", "tripped_base")


def acknowledge(r: redis.Redis, keys: Keys, now: float | None = None) -> None:
    """An operator resumed: the peak restarts at the next equity, and the daily check rests until
    the next trading day (the loss that tripped it is known)."""
    pipe = r.pipeline(transaction=True)
    pipe.hdel(keys.breakers, "peak", "tripped", "tripped_day")
    pipe.hset(keys.breakers, "acknowledged", trading_day(time.time() if now is None else now))
    pipe.execute()


def _count(get: Callable[[str, str], str], name: str) -> int | None:
    raw = get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"{name} must be >= 1, got {raw}")
    return value


def _dec(raw: object) -> Decimal | None:
    if raw is None or raw == "":
        return None
    try:
        return Decimal(display(raw))
    except InvalidOperation:
        return None
