"""Section 2, pipeline overhead: signal XADD on the source stream -> order submitted, with a
zero-latency paper broker, at fixed signal rates, through the real processes
(`tradebot paper-broker`, `poller`, `router`, `worker` x 2).

Stage times come from the journal (routed_at, claimed_at, submitted_at, final_at); the start is
the time right after our own XADD returned (the journal's source_at is the entry id's whole
milliseconds: too coarse here), joined on source_id.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from benchmarks import profiling
from benchmarks.common import (
    SYMBOLS_20,
    Dist,
    Fleet,
    Procs,
    command_calls,
    cpu_seconds,
    delta_per,
    feed,
    flt,
    ms,
    wait_journaled,
)

log = logging.getLogger(__name__)

RATES = (10, 50, 200)
WORKERS = 2  # the fleet's default TRADEBOT_WORKERS
SYMBOLS = SYMBOLS_20[:4]
STAGES = ("router_hop", "worker_hop", "pre_trade", "overhead", "broker", "end_to_end")


@dataclass
class RateResult:
    rate: float
    sent: int
    achieved_rate: float
    outcomes: dict[str, int]
    stages: dict[str, Dist]
    raw: dict[str, list[float]] = field(repr=False)  # stage -> samples (ms), for the plots
    cpu_ms_per_signal: dict[str, float] = field(default_factory=dict)
    profiles: list = field(default_factory=list)  # profiling.Profile, with --profile
    redis_calls_per_signal: dict[str, float] = field(default_factory=dict)  # command -> calls per signal
    broker_requests_per_signal: dict[str, float] = field(default_factory=dict)  # route -> requests per signal

    def to_dict(self) -> dict:
        return {"rate": self.rate, "sent": self.sent, "achieved_rate": self.achieved_rate, "outcomes": self.outcomes,
                "stages": {k: v.to_dict() for k, v in self.stages.items()},
                "cpu_ms_per_signal": self.cpu_ms_per_signal, "profiles": [p.to_dict() for p in self.profiles],
                "redis_calls_per_signal": self.redis_calls_per_signal,
                "broker_requests_per_signal": self.broker_requests_per_signal}


@dataclass
class PipelineResult:
    workers: int
    rates: list[RateResult]

    def at(self, rate: float) -> RateResult | None:
        return next((x for x in self.rates if x.rate == rate), None)

    def to_dict(self) -> dict:
        return {"workers": self.workers, "rates": [x.to_dict() for x in self.rates]}


def durations(quick: bool) -> dict[int, float]:
    """Seconds of load per rate: enough samples for a p99 (>= 200) in the full run."""
    return {10: 4.0, 50: 3.0, 200: 2.0} if quick else {10: 25.0, 50: 15.0, 200: 6.0}


def start_fleet(procs: Procs, r: redis.Redis, redis_url: str, *, latency: float, symbols: tuple[str, ...],
                worker_args: tuple[str, ...]) -> Fleet:
    fleet = Fleet(procs, redis_url, symbols, worker_args=worker_args)
    fleet.start_broker(latency=latency)
    fleet.seed_positions()
    fleet.start_poller(r)
    fleet.start_router(r)
    return fleet


WORKER_ARGS = ("--strategy", "fixed", "--fixed-qty", "1")


def run(r: redis.Redis, redis_url: str, procs: Procs, work_dir: Path, quick: bool, *, sides: str = "alternate",
        workers: int = WORKERS, rates: tuple[int, ...] = RATES, extra_pids: dict[str, int] | None = None,
        profile: bool = False) -> PipelineResult:
    fleet = start_fleet(procs, r, redis_url, latency=0.0, symbols=SYMBOLS, worker_args=WORKER_ARGS)
    try:
        fleet.add_workers(r, workers)
        index = 0
        warm = feed(r, 20, 40, SYMBOLS, sides, start_index=index)  # connections, scripts, first requests
        index += len(warm)
        wait_journaled(r, [s.entry_id for s in warm], 60, procs, fleet.members)
        results = []
        for rate, seconds in durations(quick).items():
            if rate not in rates:
                continue
            count = int(rate * seconds)
            fleet.reset_broker(r)  # every rate starts from the same (small) order book
            pids = {p.name: p.pid for p in fleet.members} | (extra_pids or {})
            recorders = []
            if profile and rate == max(rates):
                targets = [p for p in (fleet.workers[0], fleet.router, fleet.broker) if p is not None]
                recorders = profiling.start(procs, targets, seconds, work_dir)
                time.sleep(1.0)  # py-spy attaches
            cpu_before = cpu_seconds(pids.values())
            calls_before, broker_before = command_calls(r), fleet.broker_stats()["by_route"]
            t0 = time.perf_counter()
            sent = feed(r, rate, count, SYMBOLS, sides, start_index=index)
            elapsed = time.perf_counter() - t0
            index += count
            rows = wait_journaled(r, [s.entry_id for s in sent], 120, procs, fleet.members)
            cpu_after = cpu_seconds(pids.values())
            calls_after, broker_after = command_calls(r), fleet.broker_stats()["by_route"]
            results.append(_summarise(rate, sent, rows, elapsed, pids, cpu_before, cpu_after))
            results[-1].redis_calls_per_signal = delta_per(calls_after, calls_before, count)
            results[-1].broker_requests_per_signal = delta_per(broker_after, broker_before, count)
            if recorders:
                results[-1].profiles = profiling.finish(procs, recorders)
            log.info("pipeline %s/s: overhead p50 %.2f ms p99 %.2f ms", rate, results[-1].stages["overhead"].p50,
                     results[-1].stages["overhead"].p99)
            time.sleep(0.5)
        return PipelineResult(workers, results)
    finally:
        procs.stop(reversed(fleet.members))


def _summarise(rate: float, sent: list, rows: dict, elapsed: float, pids: dict[str, int],
               cpu_before: dict[int, float], cpu_after: dict[int, float]) -> RateResult:
    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    outcomes: dict[str, int] = {}
    for s in sent:
        row = rows[s.entry_id]
        outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
        routed, claimed, submitted, final = (flt(row, k) for k in ("routed_at", "claimed_at", "submitted_at",
                                                                    "final_at"))
        if submitted is None:
            continue  # skipped/rejected before the broker: no order, no overhead sample
        # start = right BEFORE our XADD: the router is often woken (and stamps routed_at) before the
        # XADD reply is back in our hands, so the after-XADD stamp would make the first hop negative
        stages["router_hop"].append(ms(routed - s.before))
        stages["worker_hop"].append(ms(claimed - routed))
        stages["pre_trade"].append(ms(submitted - claimed))
        stages["overhead"].append(ms(submitted - s.before))
        stages["broker"].append(ms(final - submitted))
        stages["end_to_end"].append(ms(final - s.before))
    cpu = {}
    for name, pid in pids.items():
        role = name.split("-")[0] if name.startswith("worker") else name
        used = cpu_after.get(pid, 0.0) - cpu_before.get(pid, 0.0)
        cpu[role] = cpu.get(role, 0.0) + used * 1000 / max(1, len(sent))
    return RateResult(rate, len(sent), len(sent) / elapsed, outcomes, {k: Dist.of(v) for k, v in stages.items()},
                      stages, cpu)
