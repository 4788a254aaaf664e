"""Section 4, side by side with a standard Redis task queue: Dramatiq (RedisBroker, lists + Lua)
on the same Redis server, running the same order task (benchmarks/peer_task.py, as a Dramatiq actor in
benchmarks/dq_tasks.py) against the same paper broker and the same price poller. ``run`` measures any
``TaskQueue`` the same way (benchmarks/peers.py: taskiq and Celery).

- latency: zero-latency broker, 2 worker processes x 1 thread, tasks enqueued at 10, 50 and 200/s:
  enqueue -> order final (and -> order submitted), like the fleet's XADD -> final_at.
- throughput: 50 ms broker latency, N = 1, 2, 4, 8, 16 processes x 1 thread (a process per
  worker, like the fleet), the same backlog method as section 3.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import (
    SYMBOLS_20,
    BenchError,
    Dist,
    Fleet,
    Proc,
    Procs,
    Sampler,
    cpu_seconds,
    ms,
    rss_mb,
    tree_pids,
)
from benchmarks.scaling import (
    FIRST_GUESS_PER_WORKER,
    LATENCY,
    WORKER_COUNTS,
    Memory,
    ScalePoint,
    backlog_size,
    set_efficiency,
    steady_throughput,
)

log = logging.getLogger(__name__)

LATENCY_RATES = (10, 50, 200)  # the pipeline section's rates
LATENCY_WORKERS = 2


@dataclass
class TaskQueueResult:
    name: str
    latency: dict[int, dict[str, Dist]] = field(default_factory=dict)  # rate -> {"end_to_end", "to_submit"}
    scaling: list[ScalePoint] = field(default_factory=list)
    latency_raw: dict[int, list[float]] = field(default_factory=dict, repr=False)  # rate -> end-to-end ms

    def to_dict(self) -> dict:
        return {"name": self.name,
                "latency": {rate: {k: v.to_dict() for k, v in d.items()} for rate, d in self.latency.items()},
                "scaling": [p.to_dict() for p in self.scaling]}


class TaskQueue:
    """A peer task queue on the benchmark's Redis: starts/stops its worker pool, enqueues
    place_order tasks (benchmarks/peer_task.py) and reads their result rows. A subclass says how
    its workers are started (``command``) and how one task is sent (``prepare``, untimed, then
    ``enqueue``, timed from just before it)."""

    name = ""
    results = ""  # the results stream its task writes
    stop_timeout = 15.0  # seconds between SIGTERM and SIGKILL

    def __init__(self, procs: Procs, fleet: Fleet, redis_url: str, r: redis.Redis) -> None:
        self.procs, self.fleet, self.redis_url, self.r = procs, fleet, redis_url, r
        self.pool: Proc | None = None
        self.index = 0

    def command(self, processes: int) -> list[str]:
        raise NotImplementedError

    def prepare(self, token: str, symbol: str, side: str) -> Any:
        """The task's arguments (a queue may build its whole message here)."""
        return token, symbol, side, time.time()

    def enqueue(self, prepared: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the harness side's connections (the workers are stopped by ``stop``)."""

    def start(self, processes: int) -> None:
        env = self.fleet.env(PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        self.pool = self.procs.start(f"{self.name}-x{processes}", self.command(processes), env)
        # ready = every process took a warm-up task (connections made, first request done)
        self.run_batch(self.send_burst(4 * processes), timeout=60)

    def stop(self) -> None:
        if self.pool is not None:
            self.procs.stop([self.pool], timeout=self.stop_timeout)
            self.pool = None

    def _send(self, sent: dict[str, float]) -> None:
        token = uuid.uuid4().hex
        symbol = SYMBOLS_20[self.index % len(SYMBOLS_20)]
        side = "buy" if (self.index // len(SYMBOLS_20)) % 2 == 0 else "sell"
        prepared = self.prepare(token, symbol, side)
        sent[token] = time.time()  # right before send, like the fleet's start (before XADD)
        self.enqueue(prepared)
        self.index += 1

    def send_burst(self, count: int) -> dict[str, float]:
        sent: dict[str, float] = {}
        for _ in range(count):
            self._send(sent)
        return sent

    def send_at(self, rate: float, count: int) -> dict[str, float]:
        sent: dict[str, float] = {}
        start = time.perf_counter()
        for k in range(count):
            pause = start + k / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            self._send(sent)
        return sent

    def run_batch(self, sent: dict[str, float], timeout: float) -> dict[str, dict[str, str]]:
        """Wait for every token's result row."""
        deadline = time.monotonic() + timeout
        found: dict[str, dict[str, str]] = {}
        last = "-"
        while True:
            for entry_id, fields in self.r.xrange(self.results, min=last, count=10_000):
                last = "(" + _t(entry_id)
                row = {_t(k): _t(v) for k, v in fields.items()}
                if row["token"] in sent:
                    found[row["token"]] = row
            if len(found) >= len(sent):
                return found
            if self.pool is not None:
                self.procs.check_alive([self.pool])
            if time.monotonic() >= deadline:
                raise BenchError(f"{self.name} finished {len(found)} of {len(sent)} tasks in {timeout:.0f}s; "
                                 f"log:\n{self.pool.tail() if self.pool else ''}")
            time.sleep(0.1)


class Dramatiq(TaskQueue):
    """RedisBroker (lists + Lua), default settings, N processes x 1 thread."""

    name = "dramatiq"

    def __init__(self, procs: Procs, fleet: Fleet, redis_url: str, r: redis.Redis) -> None:
        from dramatiq.brokers.redis import RedisBroker

        from benchmarks import dq_tasks

        super().__init__(procs, fleet, redis_url, r)
        self.broker = RedisBroker(url=redis_url, namespace=dq_tasks.NAMESPACE)
        self.queue, self.results = dq_tasks.QUEUE, dq_tasks.RESULTS

    def command(self, processes: int) -> list[str]:
        return [sys.executable, "-m", "dramatiq", "benchmarks.dq_tasks", "--processes", str(processes),
                "--threads", "1", "--queues", self.queue, "--worker-shutdown-timeout", "5000"]

    def prepare(self, token: str, symbol: str, side: str) -> Any:
        from dramatiq import Message

        return Message(queue_name=self.queue, actor_name="place_order", args=(token, symbol, side, time.time()),
                       kwargs={}, options={})

    def enqueue(self, prepared: Any) -> None:
        self.broker.enqueue(prepared)


def _t(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def run(r: redis.Redis, redis_url: str, procs: Procs, work_dir: Path, quick: bool, *,
        rates_seconds: dict[int, float] | None = None, counts: tuple[int, ...] = WORKER_COUNTS,
        extra_pids: dict[str, int] | None = None, queue: type[TaskQueue] = Dramatiq) -> TaskQueueResult:
    """Measure one task queue (Dramatiq unless ``queue`` says otherwise, see benchmarks.peers)."""
    from benchmarks.pipeline import durations

    result = TaskQueueResult(queue.name)
    fleet = Fleet(procs, redis_url, SYMBOLS_20)
    fleet.start_broker(latency=0.0)
    fleet.seed_positions()
    dq = None
    try:
        fleet.start_poller(r)
        dq = queue(procs, fleet, redis_url, r)
        dq.start(LATENCY_WORKERS)
        plan = rates_seconds or {rate: s for rate, s in durations(quick).items() if rate in LATENCY_RATES}
        for rate, seconds in plan.items():
            sent = dq.send_at(rate, int(rate * seconds))
            rows = dq.run_batch(sent, timeout=120)
            result.latency_raw[rate] = [ms(float(rows[t]["final_at"]) - at) for t, at in sent.items()]
            result.latency[rate] = {
                "end_to_end": Dist.of([ms(float(rows[t]["final_at"]) - at) for t, at in sent.items()]),
                "to_submit": Dist.of([ms(float(rows[t]["submitted_at"]) - at) for t, at in sent.items()]),
                "to_start": Dist.of([ms(float(rows[t]["started_at"]) - at) for t, at in sent.items()]),
            }
            log.info("%s %s/s: end-to-end p50 %.2f ms", dq.name, rate, result.latency[rate]["end_to_end"].p50)
        dq.stop()
        fleet.set_broker_latency(LATENCY)
        for n in counts:
            fleet.reset_broker(r, LATENCY)
            dq.start(n)
            time.sleep(1.0)
            names = _names(fleet, dq, extra_pids)
            idle = _memory(rss_mb(names), names, dq)
            count = backlog_size(n, result.scaling, quick)
            cpu_before = cpu_seconds(names)
            wall0 = time.time()
            with Sampler(lambda names=names: rss_mb(names), 0.5) as rss:
                sent = dq.send_burst(count)
                budget = 60 + count / (0.3 * (result.scaling[0].throughput if result.scaling
                                              else FIRST_GUESS_PER_WORKER))
                rows = dq.run_batch(sent, timeout=budget)
            wall = time.time() - wall0
            cpu_after = cpu_seconds(names)
            finished = [float(row["final_at"]) for row in rows.values()]
            point = ScalePoint(n, len(finished), steady_throughput(finished),
                               end_to_end=Dist.of([ms(float(rows[t]["final_at"]) - at) for t, at in sent.items()]))
            point.outcomes = {}
            for row in rows.values():
                point.outcomes[row["status"]] = point.outcomes.get(row["status"], 0) + 1
            total = 0.0
            for pid, name in names.items():
                used = cpu_after.get(pid, 0.0) - cpu_before.get(pid, 0.0)
                total += used
                point.cpu_ms_per_order[name] = point.cpu_ms_per_order.get(name, 0.0) + used * 1000 / count
            point.cpu_busy = total / (wall * (os.cpu_count() or 1))
            point.memory_idle = idle
            peak: dict[int, float] = {}
            for sample in rss.samples:
                for pid, mb in sample.items():
                    peak[pid] = max(peak.get(pid, 0.0), mb)
            point.memory_load = _memory(peak, names, dq) if peak else None
            result.scaling.append(point)
            set_efficiency(result.scaling)
            log.info("%s N=%d: %.1f tasks/s (efficiency %.2f)", dq.name, n, point.throughput, point.efficiency)
            dq.stop()
        return result
    finally:
        if dq is not None:
            dq.stop()
            dq.close()
        procs.stop(reversed(fleet.members))


def _names(fleet: Fleet, dq: TaskQueue, extra_pids: dict[str, int] | None) -> dict[int, str]:
    names = {p.pid: p.name for p in fleet.members} | {pid: name for name, pid in (extra_pids or {}).items()}
    if dq.pool is not None:
        pids = tree_pids(dq.pool.pid)
        names[dq.pool.pid] = f"{dq.name}-main"
        for pid in pids[1:]:
            names[pid] = "worker"  # the queue's forked worker processes (and any fork-function helper)
    return names


def _memory(readings: dict[int, float], names: dict[int, str], dq: TaskQueue) -> Memory:
    from benchmarks.scaling import memory_of

    return memory_of(readings, names)
