"""Peers side by side: the order task of section 4 (benchmarks/peer_task.py) on taskiq-redis's
RedisStreamBroker and on Celery's Redis broker (acks_late), measured exactly as Dramatiq is
(benchmarks.taskqueue.run: the same fleet, paper broker, poller and Redis, the same rates with 2
worker processes and the same backlogs at N = 1, 2, 4, 8, 16 processes), then one table with
tradebot (sections 2 and 3) and Dramatiq (section 4):

- latency: send (right before XADD / enqueue) -> the task starts the broker call (tradebot's
  ``submitted_at``), p50/p99 at 10, 50 and 200 tasks/s, 2 workers, zero-latency broker;
- throughput: the backlog's steady completion rate at each N (50 ms broker);
- throughput per core: tasks per CPU-second of the system's own processes (psutil, user+system)
  at the largest N: tradebot's router and workers, a queue's main process and its workers. The
  paper broker, the poller, Redis and the harness (which sends for every system) are left out;
  Redis's share is shown beside it.

Settings (the same policy for every queue: one task at a time per worker process, a task acked
after it ran, no per-task logging):
- taskiq: ``taskiq worker --workers N --max-async-tasks 1 --max-prefetch 0
  --max-threadpool-threads 1 --ack-type when_saved --log-level WARNING``, the stream broker with
  ``xread_count=1`` (benchmarks/tq_tasks.py); the harness sends with ``AsyncKicker.kiq`` on an
  event loop of its own.
- Celery: ``celery worker --pool prefork --concurrency N --prefetch-multiplier 1 -O fair
  --without-gossip --without-mingle --without-heartbeat --loglevel WARNING``, ``acks_late``
  (benchmarks/celery_tasks.py); the harness sends with ``send_task``.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import Dist, Fleet, Procs
from benchmarks.scaling import WORKER_COUNTS, ScalePoint
from benchmarks.taskqueue import TaskQueue, TaskQueueResult
from benchmarks.taskqueue import run as run_queue

log = logging.getLogger(__name__)

# CPU of these processes is not a system's own: the harness sends for every system, the paper
# broker and the poller serve every system, Redis is shown in a column of its own.
SHARED_ROLES = ("harness", "paper-broker", "poller", "redis")
PER_CORE_MARGIN = 0.10  # the goal: tradebot within 10% of the best tasks per CPU-second


class Taskiq(TaskQueue):
    """taskiq-redis's RedisStreamBroker: a stream, a consumer group, blocking XREADGROUP."""

    name = "taskiq"
    # an idle taskiq worker does not exit on SIGTERM (taskiq 0.13, taskiq-redis 1.2: the receiver
    # cancels its pending read, yet the stream broker's loop goes on with an empty XREADGROUP every
    # 2 s); every task has finished when the harness stops a pool, so it kills sooner
    stop_timeout = 3.0

    def __init__(self, procs: Procs, fleet: Fleet, redis_url: str, r: redis.Redis) -> None:
        from taskiq.kicker import AsyncKicker

        from benchmarks import tq_tasks

        super().__init__(procs, fleet, redis_url, r)
        self.results = tq_tasks.RESULTS
        self.loop = asyncio.new_event_loop()
        self.broker = tq_tasks.make_broker(redis_url)
        # creates the consumer group (at "$") before the first task: a task XADDed before the
        # first worker's startup made the group would never be delivered
        self.loop.run_until_complete(self.broker.startup())
        self.kicker: Any = AsyncKicker(tq_tasks.TASK, self.broker, {})

    def command(self, processes: int) -> list[str]:
        return [sys.executable, "-m", "taskiq", "worker", "benchmarks.tq_tasks:worker_broker",
                "--workers", str(processes), "--max-async-tasks", "1", "--max-prefetch", "0",
                "--max-threadpool-threads", "1", "--ack-type", "when_saved", "--log-level", "WARNING",
                "--shutdown-timeout", "5"]

    def enqueue(self, prepared: Any) -> None:
        self.loop.run_until_complete(self.kicker.kiq(*prepared))

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.broker.shutdown())
            self.loop.close()


class Celery(TaskQueue):
    """Celery on kombu's Redis transport (LPUSH / BRPOP), acks_late, prefork pool."""

    name = "celery"

    def __init__(self, procs: Procs, fleet: Fleet, redis_url: str, r: redis.Redis) -> None:
        from benchmarks import celery_tasks

        super().__init__(procs, fleet, redis_url, r)
        self.results, self.queue, self.task = celery_tasks.RESULTS, celery_tasks.QUEUE, celery_tasks.TASK
        self.app = celery_tasks.make_app(redis_url)

    def command(self, processes: int) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "benchmarks.celery_tasks", "worker", "--pool", "prefork",
                "--concurrency", str(processes), "--queues", self.queue, "--prefetch-multiplier", "1",
                "-O", "fair", "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel", "WARNING", "--hostname", f"bench-x{processes}@%h"]

    def enqueue(self, prepared: Any) -> None:
        self.app.send_task(self.task, args=prepared, queue=self.queue)

    def close(self) -> None:
        self.app.close()


PEERS: tuple[type[TaskQueue], ...] = (Taskiq, Celery)

# the paragraph above the peers table in docs/benchmarks.md
ABOUT = (
    "The order task of section 4 (`benchmarks/peer_task.py`: cached price, submit 1 share, follow to final) on "
    "each peer, on the same Redis, paper broker and poller, measured by the same code (`benchmarks/taskqueue.py`). "
    "Latency = send (right before XADD / enqueue) -> the task starts the broker call (tradebot's `submitted_at`), "
    "2 worker processes, zero-latency broker; throughput = section 3's backlog method at each N with a 50 ms broker; "
    "CPU = psutil user+system per task at the largest N over the system's own processes (tradebot: router + workers; "
    "a queue: its main process + workers), without the paper broker, the poller and the harness (which sends for "
    "every system); Redis beside it. Every peer runs one task at a time per process, acks after the task ran and "
    "logs nothing per task (tradebot logs each order at INFO). Dramatiq: RedisBroker defaults, `--threads 1`; its "
    "consumers poll (an idle one sleeps 5 ms doubling up to 1 s between fetches). taskiq: `RedisStreamBroker` with "
    "`xread_count=1` (its default 100 lets one process take 100 tasks of a backlog), `--max-async-tasks 1 "
    "--max-prefetch 0 --max-threadpool-threads 1 --ack-type when_saved` (sync task in a thread); a blocking "
    "XREADGROUP woken by the XADD, then one XAUTOCLAIM pipeline after every read. Celery: prefork `--concurrency N "
    "--prefetch-multiplier 1 -O fair --without-gossip --without-mingle --without-heartbeat`, `acks_late`; the main "
    "process blocks in BRPOP (woken by the LPUSH), records each delivery in the `unacked` hash and hands it to a "
    "child over a pipe. tradebot does more per order (routing and validation, done markers, ledger, fleet-wide rate "
    "limiter, atomic journal + XACK) and has two hops (source -> router -> worker) where a queue has one."
)


@dataclass
class PeersResult:
    runs: dict[str, TaskQueueResult] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # queue -> why it could not be measured

    def to_dict(self) -> dict:
        return {"runs": {k: v.to_dict() for k, v in self.runs.items()}, "errors": self.errors}


def run(r: redis.Redis, redis_url: str, procs: Procs, work_dir: Path, quick: bool, *,
        counts: tuple[int, ...] = WORKER_COUNTS, extra_pids: dict[str, int] | None = None) -> PeersResult:
    out = PeersResult()
    for queue in PEERS:
        r.flushall()  # a fresh market cache: this fleet's poller must fill it, not find the last one's
        try:
            out.runs[queue.name] = run_queue(r, redis_url, procs, work_dir, quick, counts=counts,
                                             extra_pids=extra_pids, queue=queue)
        except Exception as exc:  # one peer failing (an import, a worker that died) must not lose the other
            log.exception("peer %s failed", queue.name)
            out.errors[queue.name] = f"{type(exc).__name__}: {exc}"
        finally:
            procs.stop_all()  # taskqueue.run stops its own; anything left of this peer goes here
    return out


# --------------------------------------------------------------------------- the peers table

@dataclass
class System:
    """One row of the peers table."""

    name: str
    to_submit: dict[float, Dist] = field(default_factory=dict)  # rate -> send -> broker call (ms)
    throughput: dict[int, float] = field(default_factory=dict)  # workers -> tasks/s
    workers: int = 0  # the N of the CPU columns (the largest measured)
    own_cpu_ms: float = float("nan")  # per task, the system's own processes
    redis_cpu_ms: float = float("nan")
    error: str = ""

    @property
    def per_core(self) -> float:
        """Tasks per CPU-second of the system's own processes."""
        return 1000.0 / self.own_cpu_ms if self.own_cpu_ms > 0 else float("nan")


def _with_scaling(system: System, points: list[ScalePoint]) -> System:
    system.throughput = {p.workers: p.throughput for p in points}
    if points:
        last = max(points, key=lambda p: p.workers)
        system.workers = last.workers
        system.own_cpu_ms = sum(v for k, v in last.cpu_ms_per_order.items() if k not in SHARED_ROLES)
        system.redis_cpu_ms = last.cpu_ms_per_order.get("redis", float("nan"))
    return system


def systems(results: dict[str, Any]) -> list[System]:
    """tradebot (sections 2 and 3), Dramatiq (section 4) and the peers, whichever ran."""
    out: list[System] = []
    pipe, points = results.get("pipeline"), results.get("scaling") or []
    if pipe or points:
        ours = System("tradebot", {x.rate: x.stages["overhead"] for x in (pipe.rates if pipe else [])})
        out.append(_with_scaling(ours, points))
    peers = results.get("peers")
    queues = [results.get("taskqueue"), *(peers.runs.values() if peers else [])]
    for q in queues:
        if q is not None:
            out.append(_with_scaling(System(q.name, {rate: d["to_submit"] for rate, d in q.latency.items()}),
                                     q.scaling))
    for name, error in (peers.errors.items() if peers else ()):
        out.append(System(name, error=error))
    return out


def goal(rows: list[System]) -> tuple[bool | None, str]:
    """tradebot ahead of each peer on latency (p50 and p99 at every rate both measured) and within
    10% of the best (itself included) on tasks per CPU-second."""
    ours = next((s for s in rows if s.name == "tradebot"), None)
    others = [s for s in rows if s.name != "tradebot" and not s.error]
    if ours is None or not others:
        return None, "needs the pipeline, scaling and taskqueue/peers sections"
    behind = []
    for peer in others:
        for rate, d in sorted(peer.to_submit.items()):
            mine = ours.to_submit.get(rate)
            if mine is not None and not (mine.p50 < d.p50 and mine.p99 < d.p99):
                behind.append(f"{peer.name} at {rate:g}/s")
    compared = [s for s in [ours, *others] if s.per_core == s.per_core]
    best = max(compared, key=lambda s: s.per_core) if compared else None
    ratio = ours.per_core / best.per_core if best else float("nan")
    per_core_met = ratio >= 1 - PER_CORE_MARGIN
    latency_text = "ahead of every peer" if not behind else "not ahead of " + ", ".join(behind)
    per_core_text = (f"tradebot {ours.per_core:.0f} tasks/CPU-s vs best {best.name} {best.per_core:.0f} "
                     f"(= {ratio:.2f})" if best else "n/a")
    met = None if best is None else (not behind and per_core_met)
    return met, f"latency: {latency_text}; per core: {per_core_text}"
