"""Section 3 (scaling) and 5 (memory): 20 symbols, 50 ms broker latency per request, N = 1, 2, 4, 8,
16 worker processes (added to one running fleet), a backlog big enough for a steady state.

Throughput is the steady-state completion rate: orders finished between the 10th and the 90th
percentile of the backlog's completion times, over that span (ramp-up and tail excluded).
Efficiency = throughput(N) / (N x throughput(1)). CPU per order is read per process (psutil) so
the report can say where the two cores went; RSS per process is read at idle (before the
backlog) and sampled under load.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from benchmarks.common import (
    SYMBOLS_20,
    Dist,
    Procs,
    Sampler,
    burst,
    command_calls,
    cpu_seconds,
    delta_per,
    flt,
    ms,
    rss_mb,
    wait_journaled,
)
from benchmarks.pipeline import WORKER_ARGS, start_fleet
from benchmarks.pollerbench import price_age_probe

log = logging.getLogger(__name__)

WORKER_COUNTS = (1, 2, 4, 8, 16)
LATENCY = 0.05  # seconds per broker request
FIRST_GUESS_PER_WORKER = 1 / (LATENCY + 0.006)  # orders/s of one worker before we measured it


@dataclass
class Memory:
    """RSS in MB."""

    worker_mean: float
    worker_max: float
    fleet_total: float  # redis + broker + poller + router + workers (or the task queue's processes)
    by_role: dict[str, float] = field(default_factory=dict)  # role -> MB (workers: the max)

    def to_dict(self) -> dict:
        return {"worker_mean": self.worker_mean, "worker_max": self.worker_max, "fleet_total": self.fleet_total,
                "by_role": self.by_role}


@dataclass
class ScalePoint:
    workers: int
    orders: int
    throughput: float
    efficiency: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    end_to_end: Dist | None = None
    cpu_ms_per_order: dict[str, float] = field(default_factory=dict)
    cpu_busy: float = 0.0  # share of the machine's cores busy during the backlog (0..1)
    memory_idle: Memory | None = None
    memory_load: Memory | None = None
    price_age: Dist | None = None
    broker_requests_per_order: dict[str, float] = field(default_factory=dict)  # route -> requests per order
    redis_calls_per_order: dict[str, float] = field(default_factory=dict)
    # per order, from the journal: claimed -> submitted, submitted -> final (the broker request),
    # final -> journaled (settle + journal; the journal entry id's ms), and a worker's idle gap
    # between journaling one order and claiming its next (the read)
    stages: dict[str, Dist] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"workers": self.workers, "orders": self.orders, "throughput": self.throughput,
                "efficiency": self.efficiency, "outcomes": self.outcomes,
                "end_to_end": self.end_to_end.to_dict() if self.end_to_end else None,
                "cpu_ms_per_order": self.cpu_ms_per_order, "cpu_busy": self.cpu_busy,
                "memory_idle": self.memory_idle.to_dict() if self.memory_idle else None,
                "memory_load": self.memory_load.to_dict() if self.memory_load else None,
                "price_age": self.price_age.to_dict() if self.price_age else None,
                "broker_requests_per_order": self.broker_requests_per_order,
                "redis_calls_per_order": self.redis_calls_per_order,
                "stages": {k: v.to_dict() for k, v in self.stages.items()}}


def steady_throughput(finished: Sequence[float]) -> float:
    """Completions per second between the 10th and 90th percentile of completion times."""
    times = sorted(finished)
    n = len(times)
    if n < 5:
        return n / max(1e-9, times[-1] - times[0]) if n > 1 else 0.0
    low, high = int(0.1 * n), int(0.9 * n)
    span = times[high] - times[low]
    return (high - low) / span if span > 0 else 0.0


def set_efficiency(points: list[ScalePoint]) -> None:
    base = next((p for p in points if p.workers == 1), None)
    for p in points:
        p.efficiency = p.throughput / (p.workers * base.throughput) if base and base.throughput else 0.0


def window(quick: bool) -> float:
    """Seconds of steady work the backlog should last at each N."""
    return 2.5 if quick else 7.0


def backlog_size(n: int, points: list[ScalePoint], quick: bool) -> int:
    if not points:
        estimate = FIRST_GUESS_PER_WORKER * n
    else:
        per_worker = points[0].throughput / points[0].workers
        estimate = min(per_worker * n, 2.2 * points[-1].throughput)
    return max(30, int(estimate * window(quick)))


def role(name: str) -> str:
    return "worker" if name.startswith("worker") else name


def memory_of(readings: dict[int, float], names: dict[int, str]) -> Memory:
    workers = [mb for pid, mb in readings.items() if role(names[pid]) == "worker"]
    by_role: dict[str, float] = {}
    for pid, mb in readings.items():
        r = role(names[pid])
        by_role[r] = max(by_role.get(r, 0.0), mb)
    return Memory(sum(workers) / len(workers) if workers else 0.0, max(workers, default=0.0),
                  sum(readings.values()), by_role)


def run(r: redis.Redis, redis_url: str, procs: Procs, work_dir: Path, quick: bool, *, sides: str = "alternate",
        counts: tuple[int, ...] = WORKER_COUNTS, extra_pids: dict[str, int] | None = None) -> list[ScalePoint]:
    fleet = start_fleet(procs, r, redis_url, latency=LATENCY, symbols=SYMBOLS_20, worker_args=WORKER_ARGS)
    points: list[ScalePoint] = []
    index = 0
    try:
        for n in counts:
            fleet.reset_broker(r, LATENCY)
            fleet.add_workers(r, n - len(fleet.workers))
            warm = burst(r, 2 * n, SYMBOLS_20, sides, start_index=index)
            index += len(warm)
            wait_journaled(r, [s.entry_id for s in warm], 60, procs, fleet.members)
            time.sleep(1.0)  # let the fleet settle to idle
            names = {p.pid: p.name for p in fleet.members} | {pid: name for name, pid in (extra_pids or {}).items()}
            idle = memory_of(rss_mb(names), names)
            count = backlog_size(n, points, quick)
            cpu_before = cpu_seconds(names)
            calls_before, broker_before = command_calls(r), fleet.broker_stats()["by_route"]
            wall0 = time.time()
            with Sampler(lambda names=names: rss_mb(names), 0.5) as rss, \
                    Sampler(price_age_probe(r, SYMBOLS_20), 0.1) as ages:
                sent = burst(r, count, SYMBOLS_20, sides, start_index=index)
                index += count
                budget = 60 + count / (0.3 * (points[0].throughput if points else FIRST_GUESS_PER_WORKER))
                rows = wait_journaled(r, [s.entry_id for s in sent], budget, procs, fleet.members)
            wall = time.time() - wall0
            cpu_after = cpu_seconds(names)
            calls_after, broker_after = command_calls(r), fleet.broker_stats()["by_route"]
            point = _point(n, sent, rows, names, cpu_before, cpu_after, wall)
            point.redis_calls_per_order = delta_per(calls_after, calls_before, count)
            point.broker_requests_per_order = delta_per(broker_after, broker_before, count)
            point.memory_idle = idle
            peak: dict[int, float] = {}
            for sample in rss.samples:
                for pid, mb in sample.items():
                    peak[pid] = max(peak.get(pid, 0.0), mb)
            point.memory_load = memory_of(peak, names) if peak else None
            point.price_age = Dist.of([a * 1000 for a in ages.samples])
            points.append(point)
            set_efficiency(points)
            log.info("scaling N=%d: %.1f orders/s (efficiency %.2f), %d orders", n, point.throughput,
                     point.efficiency, point.orders)
        return points
    finally:
        procs.stop(reversed(fleet.members))


def _point(n: int, sent: list, rows: dict, names: dict[int, str], cpu_before: dict[int, float],
           cpu_after: dict[int, float], wall: float) -> ScalePoint:
    outcomes: dict[str, int] = {}
    finished, e2e = [], []
    for s in sent:
        row = rows[s.entry_id]
        outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + 1
        final, submitted = flt(row, "final_at"), flt(row, "submitted_at")
        if submitted is not None and final is not None:
            finished.append(final)
            e2e.append(ms(final - s.before))
    cpu: dict[str, float] = {}
    total = 0.0
    for pid, name in names.items():
        used = cpu_after.get(pid, 0.0) - cpu_before.get(pid, 0.0)
        total += used
        cpu[role(name)] = cpu.get(role(name), 0.0) + used * 1000 / max(1, len(sent))
    return ScalePoint(n, len(finished), steady_throughput(finished), outcomes=outcomes, end_to_end=Dist.of(e2e),
                      cpu_ms_per_order=cpu, cpu_busy=total / (wall * (os.cpu_count() or 1)),
                      stages=stage_dists([rows[s.entry_id] for s in sent]))


def stage_dists(rows: list[dict[str, str]]) -> dict[str, Dist]:
    """Where a worker's time per order goes (see ScalePoint.stages)."""
    stages: dict[str, list[float]] = {"pre_trade": [], "broker": [], "post": [], "read_gap": [], "service": []}
    by_consumer: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        claimed, submitted, final = flt(row, "claimed_at"), flt(row, "submitted_at"), flt(row, "final_at")
        journaled = int(row["_id"].split("-")[0]) / 1000
        if claimed is None or submitted is None or final is None:
            continue
        stages["pre_trade"].append(ms(submitted - claimed))
        stages["broker"].append(ms(final - submitted))
        stages["post"].append(ms(journaled - final))
        stages["service"].append(ms(journaled - claimed))
        by_consumer.setdefault(row.get("consumer", ""), []).append((claimed, journaled))
    for orders in by_consumer.values():
        orders.sort()
        for (_, done), (next_claimed, _) in itertools.pairwise(orders):
            stages["read_gap"].append(ms(next_claimed - done))
    return {k: Dist.of(v) for k, v in stages.items()}
