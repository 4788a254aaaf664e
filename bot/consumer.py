"""The loop every consumer-group process runs (router, worker): rounds until stopped, riding out
outages. Exiting on an outage would make supervisord give up after ``startretries`` and leave the
process FATAL after a Redis restart, so a failed round is logged, the consumer recovers (groups
re-created, its own PEL replayed first) and the loop pauses with capped backoff."""
from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable

import redis

from bot.runtime import capped_backoff

log = logging.getLogger(__name__)


class Round(enum.Enum):
    OK = "ok"
    TROUBLE = "trouble"  # the round went through but its work did not (e.g. an entry left pending): pause
    DONE = "done"  # the consumer is finished: end the loop


class ConsumerLoop:
    def __init__(self, name: str, backoff_cap: float, base: float = 0.1) -> None:
        self.name = name  # for the logs: "worker w1", "router r1"
        self.backoff_cap = backoff_cap
        self.base = base
        self.errors = 0  # failed rounds survived
        self.on_round: Callable[[], None] = lambda: None  # called after every round (a heartbeat's progress)

    def run(self, stop: threading.Event, round_: Callable[[], Round], recover: Callable[[], None]) -> None:
        """``round_()`` until ``stop`` is set or it answers DONE."""
        failures = 0
        while not stop.is_set():
            try:
                result = round_()
                self.on_round()
            except Exception as exc:  # never exit on an outage: the outage ends, the loop goes on
                failures += 1
                self.errors += 1
                if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                    log.warning("%s: Redis unavailable: %s", self.name, exc)
                else:
                    log.exception("%s: error in the loop", self.name)
                recover()
                self._pause(stop, failures, type(exc).__name__)
                continue
            if result is Round.DONE:
                return
            if result is Round.TROUBLE:
                failures += 1  # the broker (or Redis) is in trouble: don't hammer it
                self._pause(stop, failures, "an entry was left pending")
                continue
            if failures:
                log.info("%s: back to normal", self.name)
            failures = 0

    def _pause(self, stop: threading.Event, failures: int, why: str) -> None:
        delay = capped_backoff(failures, base=self.base, cap=self.backoff_cap)
        log.info("%s: %s; pausing %.1fs", self.name, why, delay)
        stop.wait(delay)
