"""Section 1, the floor: what Redis itself costs from Python (redis-py + hiredis) on this machine.

- ping: one PING round trip.
- loop: one client doing XADD, XREADGROUP COUNT 1 '>', XACK back to back (3 round trips).
- hop: a producer XADDs (200/s), a consumer in ANOTHER process blocked in XREADGROUP receives it
  and XACKs: XADD sent -> entry in the consumer's hands. This is what one stream hop of the
  pipeline costs at least (the pipeline has two: source -> router, signals -> worker).

Run as ``python -m benchmarks.floor consume URL STREAM COUNT OUT`` it is that consumer.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.common import Dist, Procs, wait_for


@dataclass
class FloorResult:
    ping: Dist
    loop: Dist
    hop: Dist

    @property
    def round_trip_ms(self) -> float:
        """The floor round trip the pipeline is compared with: PING p50."""
        return self.ping.p50

    def to_dict(self) -> dict:
        return {"ping": self.ping.to_dict(), "loop": self.loop.to_dict(), "hop": self.hop.to_dict()}


def run(r: redis.Redis, redis_url: str, procs: Procs, work_dir: Path, quick: bool) -> FloorResult:
    n = 500 if quick else 5000
    for _ in range(200):  # warm the connection, the allocator, the branch predictors
        r.ping()
    pings = []
    for _ in range(n):
        t0 = time.perf_counter()
        r.ping()
        pings.append((time.perf_counter() - t0) * 1000)

    stream, group = "bench:floor:loop", "g"
    r.delete(stream)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    loops = []
    for i in range(n + 200):
        t0 = time.perf_counter()
        r.xadd(stream, {"i": i}, maxlen=1000, approximate=True)
        reply = r.xreadgroup(group, "c", {stream: ">"}, count=1)
        entry_id = reply[0][1][0][0]
        r.xack(stream, group, entry_id)
        if i >= 200:
            loops.append((time.perf_counter() - t0) * 1000)
    r.delete(stream)

    hops = _hop(r, redis_url, procs, work_dir, count=300 if quick else 2000)
    return FloorResult(Dist.of(pings), Dist.of(loops), Dist.of(hops))


def _hop(r: redis.Redis, redis_url: str, procs: Procs, work_dir: Path, count: int) -> list[float]:
    stream, group = "bench:floor:hop", "g"
    r.delete(stream)
    r.xgroup_create(stream, group, id="$", mkstream=True)
    out = work_dir / "hop.json"
    consumer = procs.start("floor-consumer", [sys.executable, "-m", "benchmarks.floor", "consume", redis_url,
                                              stream, str(count), str(out)], env=_env())
    try:
        wait_for(lambda: _consumers(r, stream, group) >= 1, 120, "the floor consumer", procs=procs, watch=[consumer])
        sent: dict[str, float] = {}
        period = 1 / 200
        start = time.perf_counter()
        for i in range(count):
            pause = start + i * period - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            before = time.time()
            entry_id = r.xadd(stream, {"i": i})
            sent[entry_id.decode() if isinstance(entry_id, bytes) else entry_id] = before
        wait_for(lambda: out.exists(), 60, "the floor consumer's results", procs=procs, watch=[consumer])
        received = json.loads(out.read_text())
    finally:
        procs.stop([consumer])
        r.delete(stream)
    return [(received[i] - sent[i]) * 1000 for i in sent if i in received][50:]


def _consumers(r: redis.Redis, stream: str, group: str) -> int:
    try:
        return len(r.xinfo_consumers(stream, group))
    except redis.ResponseError:
        return 0


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def consume(url: str, stream: str, count: int, out: str) -> None:
    r = redis.Redis.from_url(url, socket_timeout=30)
    r.xreadgroup("g", "c", {stream: "0"}, count=1)  # a history read registers the consumer (a blocked one is not listed)
    received: dict[str, float] = {}
    while len(received) < count:
        reply = r.xreadgroup("g", "c", {stream: ">"}, count=1, block=2000)
        now = time.time()
        if not reply:
            continue
        entry_id = reply[0][1][0][0]
        r.xack(stream, "g", entry_id)
        received[entry_id.decode()] = now
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps(received))
    tmp.rename(out)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "consume":
        consume(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit("usage: python -m benchmarks.floor consume URL STREAM COUNT OUT")
