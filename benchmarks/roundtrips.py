"""Redis round trips per order, counted in a real worker process.

The worker runs as ``python -m benchmarks.roundtrips worker OUT ARGS...``: `tradebot worker ARGS`
with redis-py's ``send_packed_command`` wrapped to count every packet the *main thread* sends (one
command, or one whole pipeline: one wait for the server each). The keeper and heartbeat threads
have rounds of their own that no order waits on; they are left out. Twice a second the count goes
to OUT, so the harness reads it before and after a measured window of buys, then of sells.
tests/test_worker.py pins the same count in-process, naming each round trip.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import Procs, feed, wait_for, wait_journaled, worker_consumers
from benchmarks.pipeline import SYMBOLS, WORKER_ARGS, start_fleet

WINDOW_SIGNALS = 200  # per side
RATE = 20.0  # signals/s: well above one per blocking read's timeout, so idle reads are rare


@dataclass
class RoundTripResult:
    per_buy: float
    per_sell: float
    buys: int
    sells: int
    breakdown: dict[str, dict[str, float]]  # side -> first command of each packet -> packets per order

    def to_dict(self) -> dict[str, Any]:
        return {"per_buy": self.per_buy, "per_sell": self.per_sell, "buys": self.buys, "sells": self.sells,
                "breakdown": self.breakdown}


def run(r: redis.Redis, redis_url: str, procs: Procs, work_dir: Path, quick: bool) -> RoundTripResult:
    count = 40 if quick else WINDOW_SIGNALS
    fleet = start_fleet(procs, r, redis_url, latency=0.0, symbols=SYMBOLS, worker_args=WORKER_ARGS)
    out = work_dir / "roundtrips.json"
    worker = procs.start("counted-worker", [sys.executable, "-m", "benchmarks.roundtrips", "worker", str(out),
                                            *WORKER_ARGS], fleet.env())
    fleet.workers.append(worker)
    try:
        wait_for(lambda: worker_consumers(r) >= 1 and out.exists(), 60, "the counted worker", procs=procs,
                 watch=fleet.members)
        index = 0
        warm = feed(r, RATE, 20, SYMBOLS, "alternate", start_index=index)  # connections, scripts
        index += len(warm)
        wait_journaled(r, [s.entry_id for s in warm], 60, procs, fleet.members)
        per_side, breakdown = {}, {}
        for side in ("buy", "sell"):
            time.sleep(0.6)  # the count is dumped twice a second: let the last one cover what came before
            before = _read(out)
            sent = feed(r, RATE, count, SYMBOLS, side, start_index=index)
            index += len(sent)
            wait_journaled(r, [s.entry_id for s in sent], 120, procs, fleet.members)
            time.sleep(0.6)  # the next dump of the count
            after = _read(out)
            per_side[side] = (after["packets"] - before["packets"]) / len(sent)
            breakdown[side] = {name: round((n - before["first_commands"].get(name, 0)) / len(sent), 2)
                               for name, n in after["first_commands"].items()
                               if n != before["first_commands"].get(name, 0)}
        return RoundTripResult(round(per_side["buy"], 2), round(per_side["sell"], 2), count, count, breakdown)
    finally:
        procs.stop(fleet.members)


def _read(out: Path) -> dict[str, Any]:
    return dict(json.loads(out.read_text()))


# --------------------------------------------------------------------------- the counted worker


def _first_command(command: Any) -> str:
    """The name of a packet's first command (``*n``, ``$len``, NAME ...), for the breakdown."""
    head = command if isinstance(command, (bytes, str)) else bytes(command[0]) if command else b""
    data = head.encode() if isinstance(head, str) else bytes(head)
    parts = data.split(b"\r\n")
    return parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?"


def counted_worker(out: Path, args: list[str]) -> None:
    counter: dict[str, Any] = {"packets": 0, "first_commands": {}}
    original = redis.connection.AbstractConnection.send_packed_command
    main = threading.main_thread()

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.current_thread() is main:
            counter["packets"] += 1
            name = _first_command(command)
            counter["first_commands"][name] = counter["first_commands"].get(name, 0) + 1
        original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]

    def dump() -> None:
        while True:
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(counter))
            tmp.replace(out)
            time.sleep(0.5)

    threading.Thread(target=dump, name="round-trip-dump", daemon=True).start()
    from bot.cli import main as tradebot

    sys.argv = ["tradebot", "worker", *args]
    tradebot()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "worker":
        counted_worker(Path(sys.argv[2]), sys.argv[3:])
