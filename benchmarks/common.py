"""What every benchmark section shares: statistics, the process registry (each child in its own
process group, all stopped in a finally), the fleet's environment, the paper broker, the load
feeder, waiting on conditions, and per-process RSS/CPU readings."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bot.embedded_redis import free_port
from bot.keys import Keys
from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY

log = logging.getLogger(__name__)

# 20 tickers for the scaling and poller sections (all 1-5 letters: the paper broker creates them).
SYMBOLS_20 = ("NVDA", "AAPL", "MSFT", "AMZN", "GOOG", "META", "TSLA", "AMD", "INTC", "NFLX",
              "ORCL", "CRM", "ADBE", "QCOM", "AVGO", "TXN", "IBM", "CSCO", "PYPL", "UBER")
SOURCE_STREAM = "nvda"  # the fleet's default source stream
# The paper broker has no account limit; the fleet's limiter and the broker's X-RateLimit headers
# must not throttle a benchmark (a 200/min header budget would pause the limiter after 200 requests).
UNLIMITED_PER_MINUTE = 100_000_000
BENCH_CASH = "2000000000"  # $2B: within the ledger's exact range (micro-dollars < 2**53)
BIG_LIMIT = "1000000000000"  # risk limits (order notional, position value) out of the way


# --------------------------------------------------------------------------- statistics

def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Dist:
    """A latency distribution in milliseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Dist:
        vals = [v for v in values_ms if v is not None and not math.isnan(v)]
        if not vals:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(len(vals), percentile(vals, 50), percentile(vals, 95), percentile(vals, 99),
                   sum(vals) / len(vals), max(vals))

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "p50": self.p50, "p95": self.p95, "p99": self.p99, "mean": self.mean, "max": self.max}


def ms(seconds: float | None) -> float:
    return math.nan if seconds is None else seconds * 1000.0


def fmt_ms(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


# --------------------------------------------------------------------------- processes

class BenchError(RuntimeError):
    """A benchmark could not run (a process died, a condition never came true)."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])


class Procs:
    """Every child process a benchmark starts. Each runs in its own session (process group), so a
    stop reaches its children too (dramatiq's forked workers, uvicorn); ``stop_all`` runs in a
    finally."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.running: list[Proc] = []
        self._seq = 0

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str]) -> Proc:
        self._seq += 1
        log_path = self.log_dir / f"{self._seq:03d}-{name}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(name, popen, log_path)
        self.running.append(proc)
        log.debug("started %s pid %d: %s", name, popen.pid, " ".join(cmd))
        return proc

    def stop(self, procs: Iterable[Proc], timeout: float = 15.0) -> None:
        """SIGTERM each process group, wait, then SIGKILL what is left."""
        procs = [p for p in procs if p in self.running]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored SIGTERM for %.0fs: killing it", proc.name, proc.pid, timeout)
            _signal_group(proc, signal.SIGKILL)  # stragglers in the group (forked children)
            try:
                proc.popen.wait(5)
            except subprocess.TimeoutExpired:
                log.error("%s (pid %d) survived SIGKILL", proc.name, proc.pid)
            self.running.remove(proc)

    def stop_all(self) -> None:
        self.stop(list(reversed(self.running)))

    def check_alive(self, procs: Iterable[Proc]) -> None:
        for proc in procs:
            if not proc.alive():
                raise BenchError(f"{proc.name} (pid {proc.pid}) exited with {proc.popen.returncode}; "
                                 f"last log lines:\n{proc.tail()}")


def _signal_group(proc: Proc, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.popen.pid, sig)  # start_new_session: the group id is the child's pid


def wait_for(condition: Callable[[], Any], timeout: float, what: str, *, interval: float = 0.05,
             procs: Procs | None = None, watch: Iterable[Proc] = ()) -> Any:
    """Poll ``condition`` until it is truthy (returns its value) or ``timeout`` passes (BenchError).
    Processes in ``watch`` must stay alive meanwhile."""
    watch = list(watch)
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if procs is not None and watch:
            procs.check_alive(watch)
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def tradebot_cmd(*args: str) -> list[str]:
    """The `tradebot` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "tradebot"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from bot.cli import main; main()", *args]


# --------------------------------------------------------------------------- the fleet

@dataclass
class Fleet:
    """One benchmark fleet: a paper broker and the tradebot processes around one Redis."""

    procs: Procs
    redis_url: str
    symbols: tuple[str, ...]
    broker_port: int = 0
    broker: Proc | None = None
    poller: Proc | None = None
    router: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    worker_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. retention settings of every process

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.broker_port}"

    @property
    def members(self) -> list[Proc]:
        return [p for p in (self.broker, self.poller, self.router, *self.workers) if p is not None]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADEBOT_", "ALPACA_", "PAPER_BROKER_"))}
        env.update({
            "REDIS_URL": self.redis_url,
            "ALPACA_BASE_URL": self.base_url,
            "ALPACA_DATA_URL": self.base_url,
            "ALPACA_API_KEY": DEMO_API_KEY,
            "ALPACA_SECRET_KEY": DEMO_SECRET_KEY,
            "TRADEBOT_SYMBOLS": ",".join(self.symbols),
            "TRADEBOT_SOURCE_STREAMS": SOURCE_STREAM,
            "TRADEBOT_RATE_LIMIT": str(UNLIMITED_PER_MINUTE),
            "TRADEBOT_MAX_ORDER_NOTIONAL": BIG_LIMIT,
            "TRADEBOT_MAX_POSITION_VALUE": BIG_LIMIT,
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        env.update(extra)
        return env

    # ---------------------------------------------------------------- the paper broker

    def start_broker(self, latency: float = 0.0) -> Proc:
        self.broker_port = free_port()
        self.broker = self.procs.start("paper-broker", tradebot_cmd(
            "paper-broker", "--always-open", "--port", str(self.broker_port), "--cash", BENCH_CASH,
            "--latency", repr(latency), "--rate-limit", str(UNLIMITED_PER_MINUTE), "--seed", "7",
            "--symbols", ",".join(self.symbols)), self.env())
        wait_for(lambda: self._broker_answers(), 120, "the paper broker", procs=self.procs, watch=[self.broker])
        return self.broker

    def _broker_answers(self) -> bool:
        try:
            self.broker_stats()
            return True
        except OSError:
            return False

    def broker_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/_paper/stats", timeout=5) as response:
            return json.loads(response.read())

    def seed_positions(self, qty: int = 100_000) -> None:
        """Buy a large position of every symbol straight at the broker, so that alternating
        buy/sell signals always find shares to sell (no signal is skipped for want of shares)."""
        import httpx

        headers = {"APCA-API-KEY-ID": DEMO_API_KEY, "APCA-API-SECRET-KEY": DEMO_SECRET_KEY}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=10) as client:
            for symbol in self.symbols:
                response = client.post("/v2/orders", json={"symbol": symbol, "qty": str(qty), "side": "buy",
                                                           "type": "market", "time_in_force": "day"})
                if response.status_code != 200 or response.json().get("status") != "filled":
                    raise BenchError(f"seeding {symbol}: {response.status_code} {response.text[:200]}")

    def reset_broker(self, r: redis.Redis, latency: float | None = None) -> None:
        """Give the next measurement a fresh order book: the paper broker's per-request cost grows
        with every order it ever saw (it scans all orders on each request), which would otherwise
        make later points pay for earlier ones. Then re-seed, and wait until the poller's account
        and positions reflect the reset (asked for at once through the refresh request)."""
        from bot.market import MarketCache

        request = urllib.request.Request(f"{self.base_url}/_paper/reset", method="POST", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        if latency is not None:
            self.set_broker_latency(latency)
        self.seed_positions()
        since = time.time()
        keys = Keys()
        cache = MarketCache(r, keys)

        def reflected() -> bool:
            cache.request_refresh()
            account_as_of = r.hget(keys.account, "as_of")
            positions_as_of = r.hget(keys.positions, "_as_of")
            return bool(account_as_of and positions_as_of and float(account_as_of) > since
                        and float(positions_as_of) > since)

        wait_for(reflected, 60, "the poller to reflect the broker reset", interval=0.2, procs=self.procs,
                 watch=self.members)

    def set_broker_latency(self, seconds: float) -> None:
        request = urllib.request.Request(f"{self.base_url}/_paper/latency", method="POST",
                                         data=json.dumps({"latency": seconds}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    # ---------------------------------------------------------------- tradebot processes

    def start_poller(self, r: redis.Redis, interval: float = 1.0) -> Proc:
        self.poller = self.procs.start("poller", tradebot_cmd("poller", "--interval", repr(interval)), self.env())
        keys = Keys()
        wait_for(lambda: all(r.exists(keys.prices(s)) for s in self.symbols) and r.exists(keys.account)
                 and r.exists(keys.clock) and r.exists(keys.positions), 120, "the poller to fill the market cache",
                 procs=self.procs, watch=[self.poller, *([self.broker] if self.broker else [])])
        return self.poller

    def start_router(self, r: redis.Redis, *args: str) -> Proc:
        self.router = self.procs.start("router", tradebot_cmd("router", "--block-ms", "2000", *args), self.env())
        keys = Keys()

        def group_exists() -> bool:
            try:
                return any(_text(g["name"]) == keys.router_group for g in r.xinfo_groups(SOURCE_STREAM))
            except redis.ResponseError:
                return False

        wait_for(group_exists, 120, "the router's consumer group", procs=self.procs, watch=[self.router])
        return self.router

    def add_workers(self, r: redis.Redis, count: int) -> list[Proc]:
        """Start ``count`` more workers and wait until every worker reads the signals stream."""
        started = [self.procs.start(f"worker-{len(self.workers) + i + 1:02d}",
                                    tradebot_cmd("worker", *self.worker_args), self.env())
                   for i in range(count)]
        self.workers.extend(started)
        want = len(self.workers)
        wait_for(lambda: worker_consumers(r) >= want, 60 + 3 * count, f"{want} workers in the group",
                 interval=0.1, procs=self.procs, watch=self.members)
        return started

    def stop_workers(self) -> None:
        self.procs.stop(self.workers)
        self.workers = []


def worker_consumers(r: redis.Redis) -> int:
    keys = Keys()
    try:
        return len(r.xinfo_consumers(keys.signals, keys.workers_group))
    except redis.ResponseError:
        return 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- load

@dataclass
class Sent:
    entry_id: str
    at: float  # time.time() right after XADD returned
    before: float  # time.time() right before XADD was sent


def signal_fields(i: int, symbols: Sequence[str], sides: str) -> dict[str, str]:
    """The i-th signal: round-robin over ``symbols``; ``sides`` 'buy' (always b), 'sell' (always s)
    or 'alternate' (per ticker b, s, b, s...: every sell follows a buy of the same ticker)."""
    ticker = symbols[i % len(symbols)]
    if sides in ("buy", "sell"):
        return {"ticker": ticker, "direction": sides[0]}
    direction = "b" if (i // len(symbols)) % 2 == 0 else "s"
    return {"ticker": ticker, "direction": direction}


def feed(r: redis.Redis, rate: float, count: int, symbols: Sequence[str], sides: str = "buy",
         stream: str = SOURCE_STREAM, start_index: int = 0) -> list[Sent]:
    """XADD ``count`` signals at ``rate`` per second on a fixed schedule (no drift, no catch-up
    bursts beyond the schedule); the time right after each XADD is kept for the join."""
    sent: list[Sent] = []
    period = 1.0 / rate
    start = time.perf_counter()
    for k in range(count):
        due = start + k * period
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        before = time.time()
        entry_id = r.xadd(stream, signal_fields(start_index + k, symbols, sides))
        sent.append(Sent(_text(entry_id), time.time(), before))
    return sent


def burst(r: redis.Redis, count: int, symbols: Sequence[str], sides: str = "buy", stream: str = SOURCE_STREAM,
          start_index: int = 0, batch: int = 200) -> list[Sent]:
    """XADD ``count`` signals as fast as a pipeline goes (a backlog for throughput runs)."""
    sent: list[Sent] = []
    for offset in range(0, count, batch):
        n = min(batch, count - offset)
        pipe = r.pipeline(transaction=False)
        for k in range(n):
            pipe.xadd(stream, signal_fields(start_index + offset + k, symbols, sides))
        before = time.time()
        ids = pipe.execute()
        after = time.time()
        sent.extend(Sent(_text(i), after, before) for i in ids)
    return sent


def journal_rows(r: redis.Redis, after: str = "-") -> list[dict[str, str]]:
    """Journal entries (fields as text, plus ``_id``) after the id ``after`` ("-": all), oldest first."""
    rows = []
    cursor = after if after == "-" else "(" + after
    while True:
        chunk = r.xrange(Keys().orders, min=cursor, count=5000)
        if not chunk:
            break
        for entry_id, fields in chunk:
            rows.append({_text(k): _text(v) for k, v in fields.items()} | {"_id": _text(entry_id)})
        cursor = "(" + _text(chunk[-1][0])
    return rows


def wait_journaled(r: redis.Redis, source_ids: Iterable[str], timeout: float, procs: Procs,
                   watch: Iterable[Proc]) -> dict[str, dict[str, str]]:
    """Wait until every source id has its journal entry; returns them by source id. Reads the
    journal incrementally (every 0.1 s only what is new), so waiting costs little CPU."""
    wanted = set(source_ids)
    watch = list(watch)
    found: dict[str, dict[str, str]] = {}
    last = "-"
    deadline = time.monotonic() + timeout
    while True:
        rows = journal_rows(r, last)
        if rows:
            last = rows[-1]["_id"]
        for row in rows:
            if row.get("source_id") in wanted:
                found[row["source_id"]] = row
        if len(found) >= len(wanted):
            return found
        procs.check_alive(watch)
        if time.monotonic() >= deadline:
            dlq = r.xlen(Keys().dlq)
            raise BenchError(f"only {len(found)} of {len(wanted)} signals journaled after {timeout:.0f}s "
                             f"(dlq has {dlq} entries)")
        time.sleep(0.1)


def command_calls(r: redis.Redis) -> dict[str, int]:
    """Redis INFO commandstats: calls per command so far (this benchmark's own reads included)."""
    out = {}
    for name, stats in r.info("commandstats").items():
        out[name.removeprefix("cmdstat_")] = int(stats["calls"])
    return out


def delta_per(after: dict[str, float], before: dict[str, float], per: int) -> dict[str, float]:
    """(after - before) / per for every key that moved."""
    out = {}
    for key, value in after.items():
        moved = value - before.get(key, 0)
        if moved:
            out[key] = moved / max(1, per)
    return out


def flt(row: dict[str, str], name: str) -> float | None:
    value = row.get(name, "")
    return float(value) if value else None


# --------------------------------------------------------------------------- process readings

def rss_mb(pids: Iterable[int]) -> dict[int, float]:
    """Resident set size per pid in MB (children excluded); a gone pid is skipped."""
    import psutil

    out: dict[int, float] = {}
    for pid in pids:
        try:
            out[pid] = psutil.Process(pid).memory_info().rss / 1e6
        except psutil.Error:
            continue
    return out


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (dramatiq forks its workers)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User+system CPU seconds used so far, per pid."""
    import psutil

    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            continue
    return out


class Sampler:
    """Calls ``probe()`` every ``interval`` seconds (jittered) in a thread while in a ``with``
    block; ``samples`` holds what it returned (None results are dropped)."""

    def __init__(self, probe: Callable[[], Any], interval: float) -> None:
        import threading

        self.probe = probe
        self.interval = interval
        self.samples: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self.errors = 0

    def _run(self) -> None:
        while not self._stop.wait(random.uniform(0.5, 1.5) * self.interval):
            try:
                value = self.probe()
            except Exception:  # a process that just exited, a Redis hiccup: one sample less
                self.errors += 1
                continue
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
