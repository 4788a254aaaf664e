"""The entries this worker left pending, and when it replays each: long before claim-idle."""
from __future__ import annotations

import time
from dataclasses import dataclass

from bot.runtime import capped_backoff
from bot.worker.config import OWN_REPLAY_TRACKED

MAX_REASONS = 1000  # last errors kept; entries finished by other workers are never forgotten here


@dataclass(frozen=True)
class Replay:
    failures: int  # times in a row this worker left the entry pending
    due: float  # time.monotonic() of the replay


class OwnReplays:
    """Schedules and last errors of the entries left pending here (broker error, unknown order
    outcome, no token): each is replayed after ``first`` seconds, doubling to ``cap`` while it keeps
    failing; its last error becomes the DLQ reason once it is delivered too often."""

    def __init__(self, first: float, cap: float, tracked: int = OWN_REPLAY_TRACKED) -> None:
        self.first, self.cap, self.tracked = first, cap, tracked
        self._replays: dict[str, Replay] = {}
        self._reasons: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._replays)

    def scheduled(self) -> dict[str, Replay]:
        """A copy of the schedule: entry id -> its replay."""
        return dict(self._replays)

    def left_pending(self, entry_id: str, why: str) -> float:
        """``entry_id`` was left pending because of ``why``: schedule its replay; returns the delay."""
        self._reasons.pop(entry_id, None)
        self._reasons[entry_id] = why[:500]
        while len(self._reasons) > MAX_REASONS:
            del self._reasons[next(iter(self._reasons))]
        previous = self._replays.pop(entry_id, None)
        failures = previous.failures + 1 if previous is not None else 1
        delay = capped_backoff(failures, base=self.first, cap=self.cap)
        self._replays[entry_id] = Replay(failures, time.monotonic() + delay)
        while len(self._replays) > self.tracked:  # XAUTOCLAIM still retries those dropped
            del self._replays[next(iter(self._replays))]
        return delay

    def forget(self, entry_id: str) -> None:
        self._replays.pop(entry_id, None)
        self._reasons.pop(entry_id, None)

    def last_error(self, entry_id: str) -> str | None:
        return self._reasons.get(entry_id)

    def due(self) -> str | None:
        """The entry whose replay is due first, if any is due now."""
        now = time.monotonic()
        due = [(replay.due, entry_id) for entry_id, replay in self._replays.items() if replay.due <= now]
        return min(due)[1] if due else None

    def seconds_to_next(self) -> float | None:
        """Seconds until the next replay is due (None when none is scheduled)."""
        if not self._replays:
            return None
        return min(replay.due for replay in self._replays.values()) - time.monotonic()
