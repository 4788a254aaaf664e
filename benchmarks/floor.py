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
    reads_sequential: Dist | None = None  # the worker's six pre-trade reads, one round trip each
    reads_pipelined: Dist | None = None  # the same six reads in one pipeline (one round trip)
    lua: Dist | None = None  # one ledger reservation script call

    @property
    def pipeline_floor_ms(self) -> float:
        """Two stream hops + one pipelined read + one Lua call (p50s): the floor of source XADD ->
        order submitted."""
        if self.reads_pipelined is None or self.lua is None:
            return float("nan")
        return 2 * self.hop.p50 + self.reads_pipelined.p50 + self.lua.p50

    @property
    def round_trip_ms(self) -> float:
        """The floor round trip the pipeline is compared with: PING p50."""
        return self.ping.p50

    def to_dict(self) -> dict:
        out = {"ping": self.ping.to_dict(), "loop": self.loop.to_dict(), "hop": self.hop.to_dict(),
               **({"lua": self.lua.to_dict()} if self.lua else {})}
        if self.reads_sequential and self.reads_pipelined:
            out |= {"reads_sequential": self.reads_sequential.to_dict(),
                    "reads_pipelined": self.reads_pipelined.to_dict()}
        return out


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
    sequential, pipelined = _pre_trade_reads(redis_url, n)
    return FloorResult(Dist.of(pings), Dist.of(loops), Dist.of(hops), Dist.of(sequential), Dist.of(pipelined),
                       Dist.of(_lua_call(redis_url, n)))


def _lua_call(redis_url: str, n: int) -> list[float]:
    """One ledger reservation of one share, as a worker makes it before a buy (the script reads the
    cached account and the ledger and writes the reservation), each with its own client_order_id and
    released before the next, untimed."""
    from decimal import Decimal

    from bot.keys import Keys
    from bot.ledger import Ledger
    from bot.redisconn import connect

    keys = Keys("bench-floor-lua")
    c = connect(redis_url)
    c.hset(keys.account, mapping={"cash": "1000000000", "buying_power": "1000000000", "equity": "1000000000",
                                  "status": "ACTIVE", "trading_blocked": "0", "account_blocked": "0",
                                  "polled_at": repr(time.time()), "as_of": repr(time.time())})
    c.hset(keys.positions, mapping={"_polled_at": repr(time.time()), "_as_of": repr(time.time())})
    ledger = Ledger(c, keys)
    calls = []
    for i in range(n + 100):
        t0 = time.perf_counter()
        ledger.reserve_buy(f"floor-{i}", "NVDA", Decimal("120.03"), qty=Decimal(1))
        if i >= 100:
            calls.append((time.perf_counter() - t0) * 1000)
        ledger.release(f"floor-{i}")  # untimed: a worker's ledger holds only the orders in flight
    c.delete(keys.account, keys.positions, keys.ledger)
    c.close()
    return calls


def _pre_trade_reads(redis_url: str, n: int) -> tuple[list[float], list[float]]:
    """What the worker reads before it submits (done marker, halt, clock, price, account, position),
    through the fleet's own connection settings (bot.redisconn.connect, decoded): one round trip per
    read as bot/worker.py does it today, versus all six in one pipeline."""
    from bot.keys import Keys
    from bot.redisconn import connect

    keys = Keys("bench-floor")
    c = connect(redis_url)
    c.hset(keys.clock, mapping={"is_open": "1", "next_open": "2030-01-02T09:30:00-05:00",
                                "next_close": "2030-01-01T16:00:00-05:00", "timestamp": "2030-01-01T10:00:00-05:00",
                                "polled_at": "1.0", "as_of": "1.0"})
    c.hset(keys.prices("NVDA"), mapping={"bid": "120.01", "ask": "120.03", "bid_size": "100", "ask_size": "200",
                                         "last": "120.02", "quote_time": "1.0", "polled_at": "1.0", "as_of": "1.0"})
    c.hset(keys.account, mapping={"cash": "100000", "buying_power": "100000", "equity": "100000",
                                  "status": "ACTIVE", "trading_blocked": "0", "account_blocked": "0",
                                  "polled_at": "1.0", "as_of": "1.0"})
    c.hset(keys.positions, mapping={"NVDA": '{"qty": "10", "qty_available": "10", "avg_entry_price": "100", '
                                            '"market_value": "1200", "side": "long"}',
                                    "_polled_at": "1", "_as_of": "1"})

    def reads(target):  # type: ignore[no-untyped-def]
        target.exists(keys.done("nvda", "1-0"))
        target.get(keys.halt)
        target.hgetall(keys.clock)
        target.hgetall(keys.prices("NVDA"))
        target.hgetall(keys.account)
        target.hget(keys.positions, "NVDA")

    sequential, pipelined = [], []
    for i in range(n + 100):
        t0 = time.perf_counter()
        reads(c)
        t1 = time.perf_counter()
        pipe = c.pipeline(transaction=False)
        reads(pipe)
        pipe.execute()
        t2 = time.perf_counter()
        if i >= 100:
            sequential.append((t1 - t0) * 1000)
            pipelined.append((t2 - t1) * 1000)
    c.delete(keys.clock, keys.prices("NVDA"), keys.account, keys.positions)
    c.close()
    return sequential, pipelined


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
    # a history read registers the consumer (a blocked one is not listed)
    r.xreadgroup("g", "c", {stream: "0"}, count=1)
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
