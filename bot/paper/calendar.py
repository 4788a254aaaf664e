"""The NYSE trading calendar for the paper broker's clock and GET /v2/calendar.

Sessions (holidays, early closes, DST) come from `exchange_calendars` (the XNYS calendar), a
maintained library, rather than a hand-written holiday list that would go stale. It works offline
once installed: its rules are code, not downloaded data. Outside the range it covers (it
reaches about a year ahead of its release date), the plain weekday 09:30-16:00 rule stands in,
so the clock never fails; GET /v2/calendar only lists dates the library knows.
"""
from __future__ import annotations

import bisect
import logging
import threading
import warnings
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

log = logging.getLogger(__name__)

NEW_YORK = ZoneInfo("America/New_York")
SESSION_OPEN = time(9, 30)
SESSION_CLOSE = time(16, 0)
FIRST_DATE = "2000-01-01"  # Alpaca's calendar starts in 1970; nobody here trades earlier than this


@dataclass(frozen=True)
class Session:
    """One trading day: its date and its regular open and close (timezone-aware)."""

    day: date
    open: datetime
    close: datetime

    def to_json(self) -> dict[str, Any]:
        # Alpaca's /v2/calendar shape: local New York wall times, session_* are the extended hours
        return {"date": self.day.isoformat(), "open": self.open.astimezone(NEW_YORK).strftime("%H:%M"),
                "close": self.close.astimezone(NEW_YORK).strftime("%H:%M"),
                "session_open": "0400", "session_close": "2000",
                "settlement_date": _settlement(self.day).isoformat()}


def _settlement(day: date) -> date:
    # T+1 settlement (since May 2024); weekends skipped, holidays ignored: informative only
    day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def weekday_session(day: date) -> Session:
    return Session(day, datetime.combine(day, SESSION_OPEN, tzinfo=NEW_YORK),
                   datetime.combine(day, SESSION_CLOSE, tzinfo=NEW_YORK))


class NyseCalendar:
    """All XNYS sessions the library knows, loaded once (0.5 s) and searched by bisection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: list[Session] | None = None
        self._closes: list[datetime] = []
        self._days: list[date] = []

    def sessions(self) -> list[Session]:
        with self._lock:
            if self._sessions is None:
                self._sessions = _load_sessions()
                self._closes = [s.close for s in self._sessions]
                self._days = [s.day for s in self._sessions]
            return self._sessions

    def between(self, start: date, end: date) -> list[Session]:
        sessions = self.sessions()
        lo = bisect.bisect_left(self._days, start)
        hi = bisect.bisect_right(self._days, end)
        return sessions[lo:hi]

    def session_after(self, at: datetime) -> Session:
        """The first session whose close is after `at` (the one in progress, if any)."""
        sessions = self.sessions()
        index = bisect.bisect_right(self._closes, at)
        if 0 < index < len(sessions):  # inside the library's range (index 0: before it)
            return sessions[index]
        return _weekday_session_after(at)

    def following(self, session: Session) -> Session:
        sessions = self.sessions()
        index = bisect.bisect_right(self._closes, session.close)
        if index < len(sessions):
            return sessions[index]
        return _weekday_session_after(session.close)


def _weekday_session_after(at: datetime) -> Session:
    day = at.astimezone(NEW_YORK).date()
    while True:
        session = weekday_session(day)
        if day.weekday() < 5 and session.close > at:
            return session
        day += timedelta(days=1)


def _load_sessions() -> list[Session]:
    # no type information shipped (nor a stubs package): only get_calendar().schedule is used
    import exchange_calendars  # type: ignore[import-untyped]

    with warnings.catch_warnings():
        # exchange_calendars 4.x reads Series.values, which pandas 3.1 deprecates: its noise, not ours
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        schedule = exchange_calendars.get_calendar("XNYS", start=FIRST_DATE).schedule
    sessions = [Session(label.date(), row_open.to_pydatetime().astimezone(timezone.utc),
                        row_close.to_pydatetime().astimezone(timezone.utc))
                for label, row_open, row_close in zip(schedule.index, schedule["open"].array,
                                                      schedule["close"].array, strict=True)]
    log.debug("NYSE calendar: %d sessions %s..%s", len(sessions), sessions[0].day, sessions[-1].day)
    return sessions


NYSE = NyseCalendar()
