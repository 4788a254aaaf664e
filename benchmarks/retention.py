"""Section 8, bounded memory: Redis's memory after 10,000 and after 100,000 signals once retention
has applied (the defaults are hours and days; here seconds, so the steady state shows in minutes).

The fleet: paper broker, poller, router (trimming every 2 s), 2 workers (fixed 1 share, alternating
buy/sell on a seeded position). The first signals are real orders (ledger, order states, fills);
then the kill switch is on and the rest are journaled as skips, which leave the same stream,
marker and journal footprint without asking the paper broker (whose every request scans all the
orders it ever saw). After each phase the harness waits until the streams and the journal are
empty and the markers expired, then reads INFO memory and DBSIZE.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.common import SOURCE_STREAM, BenchError, Fleet, Procs, burst, wait_for, wait_journaled
from bot.keys import Keys

RETENTION_ENV = {
    "TRADEBOT_STREAM_RETENTION": "5",  # markers: twice that
    "TRADEBOT_JOURNAL_RETENTION": "15",
    "TRADEBOT_DLQ_RETENTION": "15",
}
ORDERS = 500
BATCH = 5000
FLAT_BOUND_MB = 1.0  # memory after 100,000 signals may exceed memory after 10,000 by at most this
SYMBOLS = ("NVDA", "AAPL")


@dataclass
class MemoryPoint:
    signals: int  # signals handled so far
    used_mb: float  # INFO memory used_memory once retention applied
    keys: int  # DBSIZE then
    peak_mb: float  # used_memory right after the phase's last signal was journaled (before trimming)
    peak_keys: int


@dataclass
class RetentionResult:
    baseline_mb: float
    baseline_keys: int
    points: list[MemoryPoint]
    ledger_fields: int  # fields left in tradebot:ledger at the end

    @property
    def growth_mb(self) -> float:
        return self.points[-1].used_mb - self.points[0].used_mb

    @property
    def flat(self) -> bool:
        return self.growth_mb <= FLAT_BOUND_MB


def run(r: redis.Redis, redis_url: str, procs: Procs, work_dir: Path, quick: bool) -> RetentionResult:
    phases = (2000, 10_000) if quick else (10_000, 100_000)
    keys = Keys()
    fleet = Fleet(procs, redis_url, SYMBOLS, worker_args=(
        "--strategy", "fixed", "--fixed-qty", "1", "--follow", "poll", "--claim-idle", "120",
        "--max-signal-age", "3600"), extra_env=RETENTION_ENV)
    fleet.start_broker()
    try:
        fleet.seed_positions()
        fleet.start_poller(r)
        fleet.start_router(r, "--trim-interval", "2")
        fleet.add_workers(r, 2)
        baseline_mb, baseline_keys = _used_mb(r), int(r.dbsize())
        points, sent_total = [], 0
        for target in phases:
            while sent_total < target:
                if sent_total >= ORDERS:
                    r.set(keys.halt, "retention benchmark: skips from here on")
                n = min(BATCH, target - sent_total) if sent_total >= ORDERS else ORDERS
                sent = burst(r, n, SYMBOLS, sides="alternate", start_index=sent_total)
                wait_journaled(r, [s.entry_id for s in sent], 120 + n / 20, procs, fleet.members)
                sent_total += n
            peak_mb, peak_keys = _used_mb(r), int(r.dbsize())
            _wait_retained(r, keys, fleet, procs)
            points.append(MemoryPoint(sent_total, _used_mb(r), int(r.dbsize()), peak_mb, peak_keys))
        return RetentionResult(baseline_mb, baseline_keys, points, int(r.hlen(keys.ledger)))
    finally:
        r.delete(keys.halt)
        procs.stop(list(reversed(fleet.members)))


def _wait_retained(r: redis.Redis, keys: Keys, fleet: Fleet, procs: Procs) -> None:
    """Until the trims and the markers' ttls have done their work: empty streams and journal, no
    done/routed marker left."""
    def retained() -> bool:
        if r.xlen(SOURCE_STREAM) or r.xlen(keys.signals) or r.xlen(keys.orders):
            return False
        return not any(True for _ in r.scan_iter(match=f"{keys.prefix}:done:*", count=1000)) and \
            not any(True for _ in r.scan_iter(match=f"{keys.prefix}:routed:*", count=1000))

    try:
        wait_for(retained, 120, "retention to empty the streams, the journal and the markers", interval=0.5,
                 procs=procs, watch=fleet.members)
    except BenchError as exc:
        raise BenchError(f"{exc} (source {r.xlen(SOURCE_STREAM)}, signals {r.xlen(keys.signals)}, "
                         f"journal {r.xlen(keys.orders)}, keys {r.dbsize()})") from None


def _used_mb(r: redis.Redis) -> float:
    return int(r.info("memory")["used_memory"]) / 1e6
