"""The paper broker's market clock: the NYSE regular session, or forced open/closed.

Sessions follow the real NYSE calendar (holidays, early closes) from bot.paper.calendar.
`now` is injectable so tests can pin the instant.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from typing import Any

from bot.paper.calendar import NEW_YORK, NYSE

log = logging.getLogger(__name__)


# clock modes: "real" follows the session above, "open" is always open, "closed" never opens
CLOCK_MODES = ("real", "open", "closed")

Now = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ClockState:
    timestamp: datetime
    is_open: bool
    next_open: datetime
    next_close: datetime

    def to_json(self) -> dict[str, Any]:
        # Alpaca answers /v2/clock with New York offsets, e.g. 2025-06-24T09:30:00-04:00
        return {
            "timestamp": self.timestamp.astimezone(NEW_YORK).isoformat(),
            "is_open": self.is_open,
            "next_open": self.next_open.astimezone(NEW_YORK).isoformat(),
            "next_close": self.next_close.astimezone(NEW_YORK).isoformat(),
        }


def regular_hours_state(at: datetime) -> ClockState:
    """Clock of the NYSE regular session at instant `at` (timezone-aware)."""
    session = NYSE.session_after(at)
    if session.open <= at:
        return ClockState(at, True, NYSE.following(session).open, session.close)
    return ClockState(at, False, session.open, session.close)


def always_open_state(at: datetime) -> ClockState:
    # No session boundaries. next_close is a day past the next New York midnight, so a clock cached
    # by the poller (up to its clock interval) never shows a close that has already passed; as on
    # Alpaca while the market is open, the next open comes after that close (a minute after it).
    midnight = datetime.combine(at.astimezone(NEW_YORK).date() + timedelta(days=1), time(0), tzinfo=NEW_YORK)
    close = midnight + timedelta(days=1)
    return ClockState(at, True, close + timedelta(minutes=1), close)


def always_closed_state(at: datetime) -> ClockState:
    real = regular_hours_state(at)
    if not real.is_open:
        return real
    # inside a real session: pretend it is over, the next one is tomorrow's
    following = NYSE.session_after(real.next_close)
    return ClockState(at, False, following.open, following.close)


class MarketClock:
    """Mode plus time source. Thread-safe enough: the mode is one attribute assignment."""

    def __init__(self, mode: str = "real", now: Now | None = None) -> None:
        self.mode = check_mode(mode)
        self._now = now or utc_now

    @property
    def always_open(self) -> bool:
        return self.mode == "open"

    def now(self) -> datetime:
        at = self._now()
        if at.tzinfo is None:
            raise ValueError("the clock's now() must return a timezone-aware datetime")
        return at.astimezone(timezone.utc)

    def state(self, at: datetime | None = None) -> ClockState:
        at = at or self.now()
        if self.mode == "open":
            return always_open_state(at)
        if self.mode == "closed":
            return always_closed_state(at)
        return regular_hours_state(at)

    def is_open(self, at: datetime | None = None) -> bool:
        return self.state(at).is_open

    def day_order_expiry(self, at: datetime) -> datetime | None:
        """When a `day` order submitted at `at` expires: the close of the session it works in
        (today's when open, else the next one's). None in the always-open mode."""
        if self.mode == "open":
            return None
        return self.state(at).next_close


def check_mode(mode: str) -> str:
    if mode not in CLOCK_MODES:
        raise ValueError(f"clock mode must be one of {', '.join(CLOCK_MODES)}, got {mode!r}")
    return mode
