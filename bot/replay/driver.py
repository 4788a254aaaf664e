"""Drive a replay fleet through a recording, one event at a time, in market time.

For every recorded instant the driver moves the paper broker's market time there; before each
signal it also waits until the poller has polled prices, account, positions and clock *after* that
move, injects the signal on its source stream, and waits for the signal's done marker (journal or
DLQ). So each signal meets exactly the market and account that its predecessors left, whatever the
machine's speed: that is what makes two replays of one recording give the same orders and fills.
"""
from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from bot.keys import Keys
from bot.market import AS_OF, POSITIONS_AS_OF, MarketCache
from bot.recording import RecordedPrice, RecordedSignal, Recording
from bot.replay.fleet import ReplayError, ReplayFleet

log = logging.getLogger(__name__)

BARRIER_TIMEOUT = 10.0  # seconds a poll after a market-time move may take before the replay gives up
SIGNAL_TIMEOUT = 30.0  # seconds a signal may take from injection to its journal or DLQ entry


@dataclass(frozen=True)
class Injected:
    """One recorded signal as replayed: where it went and when, in both clocks."""

    index: int
    market_at: float
    stream: str
    source_id: str
    fields: dict[str, str]
    wall_injected: float
    wall_done: float
    order_requests: int  # order-route requests to the broker while this signal was handled
    trading_state: str


@dataclass(frozen=True)
class StateChange:
    market_at: float
    state: str
    reason: str


@dataclass
class ReplayRun:
    """What the driver saw: the signals it injected and the trading-state changes it met."""

    started_wall: float
    market_start: float
    market_end: float
    signals: list[Injected] = field(default_factory=list)
    states: list[StateChange] = field(default_factory=list)
    moves: list[tuple[float, float]] = field(default_factory=list)  # (wall, market) at each time move
    ended_wall: float = 0.0

    def market_of(self, wall: float) -> float:
        """The market instant in force at wall instant ``wall`` (market time stands between moves)."""
        index = bisect.bisect_right(self.moves, (wall, math.inf)) - 1
        return self.moves[index][1] if index >= 0 else self.market_start


def events(recording: Recording) -> Iterator[tuple[float, RecordedSignal | None]]:
    """(instant, signal or None) oldest first: None for an instant that only moves prices; a price
    before a signal of the same instant (it was there when the signal came)."""
    last_price_at: float | None = None
    for record in recording.records():
        if isinstance(record, RecordedPrice):
            if record.at != last_price_at:
                last_price_at = record.at
                yield record.at, None
        else:
            yield record.at, record


class Driver:
    def __init__(self, fleet: ReplayFleet, speed: float = 0.0,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.fleet = fleet
        self.keys: Keys = fleet.keys
        self.speed = speed  # market seconds per wall second; 0: as fast as the fleet goes
        self.progress = progress
        self.http = httpx.Client(base_url=fleet.broker_url, timeout=10.0)
        self.r: redis.Redis = fleet.client()
        self.cache = MarketCache(self.r, self.keys)
        self.priced = set(fleet.spec.symbols)  # a signal for another ticker is the router's to dead-letter

    def close(self) -> None:
        self.http.close()
        self.r.close()

    def run(self, recording: Recording) -> ReplayRun:
        start = recording.start or 0.0
        run = ReplayRun(started_wall=time.time(), market_start=start, market_end=recording.end or start)
        total = len(recording.signals)
        paced_from: tuple[float, float] | None = None  # (wall, market) pacing started from
        market = float("-inf")
        for at, signal in events(recording):
            paced_from = self._pace(paced_from, at)
            if at > market:
                market = at
                run.moves.append((self._move(at), at))
            if signal is not None:
                run.signals.append(self._signal(len(run.signals), at, signal, run))
                if self.progress:
                    self.progress(len(run.signals), total)
        run.ended_wall = time.time()
        return run

    def _pace(self, paced_from: tuple[float, float] | None, at: float) -> tuple[float, float]:
        """Sleep until ``at`` is due at the replay's speed; a fleet slower than that is not waited for
        twice (the schedule restarts from wherever it is)."""
        now = time.monotonic()
        if paced_from is None or self.speed <= 0:
            return now, at
        wall0, market0 = paced_from
        due = wall0 + (at - market0) / self.speed
        if due > now:
            time.sleep(due - now)
            return paced_from
        return (now, at) if now - due > 1.0 else paced_from

    def _move(self, at: float) -> float:
        """Market time to ``at`` (the broker works its book there); the wall instant it took effect."""
        answer = self.http.post("/_paper/replay", json={"at": at})
        if answer.status_code != 200:
            raise ReplayError(f"the paper broker refused market time {at}: {answer.text[:200]}")
        return time.time()

    def _signal(self, index: int, at: float, signal: RecordedSignal, run: ReplayRun) -> Injected:
        moved = run.moves[-1][0]
        state = self._await_fresh_cache(moved, signal.fields.get("ticker", ""))
        if not run.states or run.states[-1].state != state[0]:
            run.states.append(StateChange(at, *state))
        before = self._order_requests()
        injected = time.time()
        fields: dict[Any, Any] = dict(signal.fields)
        source_id = str(self.r.xadd(signal.stream, fields))
        self._await_done(signal.stream, source_id)
        return Injected(index=index, market_at=at, stream=signal.stream, source_id=source_id,
                        fields=dict(signal.fields), wall_injected=injected, wall_done=time.time(),
                        order_requests=self._order_requests() - before, trading_state=state[0])

    def _await_fresh_cache(self, moved: float, ticker: str) -> tuple[str, str]:
        """Wait until every hash a worker reads was polled after ``moved``; the trading state then."""
        deadline = time.monotonic() + BARRIER_TIMEOUT
        self.cache.request_refresh()  # account and positions at the poller's next tick, not its next account poll
        price_key = self.keys.prices(ticker) if ticker in self.priced else None
        names = ["clock", "account", "positions", *([price_key] if price_key else [])]
        while True:
            pipe = self.r.pipeline(transaction=False)
            pipe.hget(self.keys.clock, AS_OF)
            pipe.hget(self.keys.account, AS_OF)
            pipe.hget(self.keys.positions, POSITIONS_AS_OF)
            if price_key:
                pipe.hget(price_key, AS_OF)
            pipe.get(self.keys.halt)
            pipe.get(self.keys.reduce_only)
            *as_ofs, halt, reduce_only = pipe.execute()
            if all(_after(value, moved) for value in as_ofs):
                if halt is not None:
                    return "halted", str(halt)
                if reduce_only is not None:
                    return "reduce-only", str(reduce_only)
                return "active", ""
            if time.monotonic() > deadline:
                self.fleet.check_alive()
                stale = [n for n, v in zip(names, as_ofs, strict=True) if not _after(v, moved)]
                raise ReplayError(f"the poller did not refresh {', '.join(stale)} within {BARRIER_TIMEOUT:.0f}s "
                                  f"of a market-time move (see {self.fleet.folder}/poller.log)")
            time.sleep(0.002)

    def _await_done(self, stream: str, source_id: str) -> None:
        marker = self.keys.done(stream, source_id)
        deadline = time.monotonic() + SIGNAL_TIMEOUT
        while not self.r.exists(marker):
            if time.monotonic() > deadline:
                self.fleet.check_alive()
                raise ReplayError(f"signal {stream} {source_id} was neither journaled nor dead-lettered within "
                                  f"{SIGNAL_TIMEOUT:.0f}s (logs in {self.fleet.folder})")
            time.sleep(0.002)

    def _order_requests(self) -> int:
        stats: dict[str, Any] = self.http.get("/_paper/stats").json()
        return int(stats.get("by_group", {}).get("orders", 0))


def _after(value: Any, moved: float) -> bool:
    try:
        return value is not None and float(value) >= moved
    except ValueError:
        return False
