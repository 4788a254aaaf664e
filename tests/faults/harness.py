"""A fault-test harness that runs the real fleet: a real redis-server (AOF on, tmp dir, free port),
the paper broker with its fault injection, and the poller, router, workers and generator as OS
processes (`python -m bot.cli ...`), each in its own process group with its output in a log file.

``Fleet`` starts, kills, restarts and stops them; ``check_invariants`` checks what every fault
scenario must leave behind:

(a) every source entry is exactly one journal entry or one DLQ entry, none missing, none twice,
    nothing still pending in either consumer group;
(b) the broker holds at most one order per signal, and only orders of known signals, each one
    journaled with its order id;
(c) per symbol, the broker's position equals the journaled fills (buys minus sells).

Waits are condition polls with deadlines (``wait_for``). The few sleeps are schedules that ARE the
scenario (kill every 2 s, Redis away for 2 s, a 3 s window of 429s), never a synchronisation.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import httpx
import redis

from bot.embedded_redis import EmbeddedRedis, free_port
from bot.keys import Keys
from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY
from bot.worker import client_order_id

# Variables of the developer's shell that must not leak into a hermetic fleet.
_FOREIGN_ENV = ("REDIS_URL", "TRADEBOT_", "ALPACA_", "PAPER_BROKER_")
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL at teardown
LOG_TAIL_LINES = 40


class HarnessError(AssertionError):
    """A condition the scenario waited for did not come true in time (with diagnostics)."""


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
             diagnose: Callable[[], str] | None = None) -> Any:
    """Poll ``condition`` until it returns something truthy; HarnessError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (redis.RedisError, httpx.HTTPError, OSError) as exc:  # the thing may be restarting
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            extra = f"\n{diagnose()}" if diagnose else ""
            raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """One fleet process; ``start()`` again after a kill starts a new incarnation (same log file)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)  # exit codes of finished incarnations

    def start(self) -> "Proc":
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._reap()
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"==== start #{self.starts}: {' '.join(self.argv[2:])}\n".encode())
            log.flush()
            # own session = own process group: a kill reaches every child, never the test runner
            self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (no wait)."""
        if self.alive:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def crash(self, timeout: float = 10.0) -> None:
        """SIGKILL and wait until it is gone."""
        self.kill(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout)
        self._reap()

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM the group, then SIGKILL after ``grace`` seconds; the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait(10)
        code = self.popen.returncode
        self._reap()
        return code

    def _reap(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            self.exits.append(self.popen.returncode)
            self.popen = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# --------------------------------------------------------------------------- the fleet


@dataclass
class FleetOptions:
    symbols: tuple[str, ...] = ("NVDA", "AAPL")
    source_streams: tuple[str, ...] = ("nvda",)
    prefix: str = "tradebot"
    redis_password: str | None = None
    api_key: str | None = None  # None: the paper broker's demo pair
    secret_key: str | None = None
    cash: str = "10000000"
    seed: int = 7
    rate_limit: int = 60000  # trading requests per minute for the fleet's limiter: not the bottleneck here


class Fleet:
    """The processes of one scenario, all under ``root`` (a tmp dir). Use as a context manager:
    leaving it stops every process (SIGTERM, then SIGKILL) and the redis-server, even on failure."""

    def __init__(self, root: Path, options: FleetOptions | None = None) -> None:
        self.root = root
        self.options = options or FleetOptions()
        self.keys = Keys(self.options.prefix)
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(root / "redis", password=self.options.redis_password, appendonly=True)
        self.broker_port = free_port()
        self.procs: dict[str, Proc] = {}
        self.redis_restarts = 0
        self._clients: list[redis.Redis] = []
        self._http: httpx.Client | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            # pytest shows this captured output with the failure: the last lines of every log
            print(f"\n==== fleet logs ({self.log_dir})\n{self.tails()}")
        self.close()

    def close(self) -> None:
        # workers and router first, the generator too; broker and Redis last
        order = sorted(self.procs.values(), key=lambda p: p.name == "paper-broker")
        for proc in order:
            try:
                proc.stop()
            except Exception:  # keep stopping the others
                proc.kill(signal.SIGKILL)
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self._http is not None:
            self._http.close()
            self._http = None
        self.redis.stop()

    @property
    def api_key(self) -> str:
        return self.options.api_key or DEMO_API_KEY

    @property
    def secret_key(self) -> str:
        return self.options.secret_key or DEMO_SECRET_KEY

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.broker_port}"

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def env(self, **extra: str) -> dict[str, str]:
        """The environment every fleet process gets (nothing inherited that could point elsewhere)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
        o = self.options
        env.update(
            REDIS_URL=self.redis_url,
            TRADEBOT_SYMBOLS=",".join(o.symbols),
            TRADEBOT_SOURCE_STREAMS=",".join(o.source_streams),
            TRADEBOT_PREFIX=o.prefix,
            ALPACA_BASE_URL=self.broker_url,
            ALPACA_DATA_URL=self.broker_url,
            TRADEBOT_RATE_LIMIT=str(o.rate_limit),
            TRADEBOT_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        if o.api_key and o.secret_key:
            env.update(ALPACA_API_KEY=o.api_key, ALPACA_SECRET_KEY=o.secret_key)
        env.update(extra)
        return env

    def add(self, name: str, command: str, *args: str, env: Mapping[str, str] | None = None,
            start: bool = True) -> Proc:
        proc = Proc(name, [sys.executable, "-m", "bot.cli", command, *args],
                    dict(env) if env is not None else self.env(), self.log_dir / f"{name}.log")
        self.procs[name] = proc
        return proc.start() if start else proc

    # ---------------------------------------------------------------- Redis

    def start_redis(self) -> None:
        self.redis.start()

    def restart_redis(self, down_for: Callable[[], None] | None = None) -> None:
        """Graceful stop (AOF flushed), ``down_for()`` while it is away, start on the same port and dir."""
        self.redis.stop()
        if down_for is not None:
            down_for()
        self.redis.start(timeout=30)
        self.redis_restarts += 1

    def client(self, decode: bool = True) -> redis.Redis:
        client = redis.Redis.from_url(self.redis_url, decode_responses=decode, socket_timeout=10)
        self._clients.append(client)
        return client

    # ---------------------------------------------------------------- the paper broker

    def start_broker(self, *flags: str, rate_limit: int = 100_000) -> Proc:
        """The paper broker; its X-RateLimit-* budget is high by default: the fleet honours those
        headers (a spent budget pauses every process until the minute ends), which is not what
        most scenarios are about."""
        o = self.options
        proc = self.add("paper-broker", "paper-broker", "--port", str(self.broker_port), "--always-open",
                        "--seed", str(o.seed), "--cash", o.cash, "--symbols", ",".join(o.symbols),
                        "--rate-limit", str(rate_limit), *flags)
        wait_for(lambda: self.admin("GET", "/_paper/stats") is not None or not proc.alive, 30,
                 "the paper broker to answer", diagnose=proc.tail)
        if not proc.alive:
            raise HarnessError(f"paper broker exited:\n{proc.tail()}")
        return proc

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.broker_url, timeout=30.0)
        return self._http

    def admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = self.http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def faults_off(self) -> None:
        self.admin("POST", "/_paper/faults", {"fault_500": 0, "fault_429": 0, "fault_hang": 0})

    def broker_get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """An authenticated API read (turn faults off first: these requests are not retried)."""
        response = self.http.get(path, params=params, headers={"APCA-API-KEY-ID": self.api_key,
                                                               "APCA-API-SECRET-KEY": self.secret_key})
        response.raise_for_status()
        return response.json()

    def broker_orders(self) -> list[dict[str, Any]]:
        """Every order the broker holds, paged oldest first (pages overlap by a microsecond; deduped)."""
        seen: dict[str, dict[str, Any]] = {}
        after: str | None = None
        while True:
            params: dict[str, Any] = {"status": "all", "limit": 500, "direction": "asc"}
            if after:
                params["after"] = after
            page = self.broker_get("/v2/orders", params)
            new = [o for o in page if o["id"] not in seen]
            for order in page:
                seen[order["id"]] = order
            if len(page) < 500 or not new:
                return list(seen.values())
            after = _just_before(page[-1]["created_at"])

    def broker_positions(self) -> dict[str, Decimal]:
        return {p["symbol"]: Decimal(p["qty"]) for p in self.broker_get("/v2/positions")}

    # ---------------------------------------------------------------- the bot's processes

    def start_poller(self, *flags: str) -> Proc:
        return self.add("poller", "poller", "--interval", "0.2", "--account-interval", "1", *flags)

    def start_router(self, *flags: str) -> Proc:
        # a stable consumer name, like supervisord's router@host: a restarted router replays its own PEL
        return self.add("router", "router", "--from-start", "--block-ms", "200", "--claim-idle", "2",
                        "--consumer", "router-0", *flags)

    @staticmethod
    def worker_args(consumer: str, *, claim_idle: float = 2.0, max_deliveries: int = 10,
                    order_timeout: float = 3.0, extra: Iterable[str] = ()) -> list[str]:
        return ["--consumer", consumer, "--claim-idle", str(claim_idle), "--max-deliveries", str(max_deliveries),
                "--order-timeout", str(order_timeout), "--strategy", "fixed", "--fixed-qty", "1",
                "--block-ms", "200", *extra]

    def start_worker(self, name: str, *args: str) -> Proc:
        return self.add(name, "worker", *(args or self.worker_args(name)))

    def restart(self, name: str, argv_tail: list[str] | None = None) -> Proc:
        proc = self.procs[name]
        if argv_tail is not None:
            proc.argv = [*proc.argv[:4], *argv_tail]
        return proc.start()

    def start_generator(self, count: int, rate: float, seed: int = 1, name: str = "generator") -> Proc:
        return self.add(name, "generate", "--always-open", "--rate", str(rate), "--count", str(count),
                        "--seed", str(seed))

    def wait_market_ready(self, timeout: float = 30.0) -> None:
        """Until the poller filled prices, account and clock (workers wait for them too)."""
        r = self.client()

        def ready() -> bool:
            return all(r.exists(self.keys.prices(s)) for s in self.options.symbols) and bool(
                r.exists(self.keys.account)) and bool(r.exists(self.keys.clock))

        wait_for(ready, timeout, "the poller to fill the market cache", diagnose=self.tails)

    # ---------------------------------------------------------------- diagnosis

    def tails(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for proc in self.procs.values():
            state = "running" if proc.alive else f"exited {proc.returncode}" if proc.popen else "stopped"
            parts.append(f"---- {proc.name} ({state}, {proc.starts} start(s)) {proc.log_path}\n{proc.tail(lines)}")
        redis_log = self.redis.data_dir / "redis.log"
        if redis_log.exists():
            parts.append("---- redis-server\n" + "\n".join(redis_log.read_text(errors="replace").splitlines()[-10:]))
        return "\n".join(parts)

    def log_texts(self) -> dict[str, str]:
        return {p.name: p.log_text() for p in self.procs.values()}


def _just_before(stamp: str) -> str:
    """An RFC 3339 time one microsecond before ``stamp`` (so orders created at ``stamp`` are re-read)."""
    from datetime import timedelta

    from bot.alpaca.models import ts

    moment = ts(stamp)
    assert moment is not None
    return (moment - timedelta(microseconds=1)).isoformat()


# --------------------------------------------------------------------------- the invariants


Origin = tuple[str, str]  # (source stream, source entry id)


@dataclass
class Outcome:
    """What the fleet made of the signals: the figures reported by a scenario."""

    sources: list[Origin]
    journal: list[dict[str, str]]
    dlq: list[dict[str, str]]
    orders: list[dict[str, Any]] = field(default_factory=list)
    positions: dict[str, Decimal] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def by_outcome(self) -> Counter:
        return Counter(e.get("outcome", "?") for e in self.journal)

    @property
    def journal_reasons(self) -> Counter:
        """Why signals were not filled, by kind."""
        return Counter(_reason_class(e.get("reason", "")) for e in self.journal if e.get("outcome") != "filled")

    @property
    def dlq_reasons(self) -> Counter:
        return Counter(_reason_class(e.get("reason", "")) for e in self.dlq)

    def figures(self) -> dict[str, Any]:
        """Only asked for after check_invariants passed: lost and duplicates are 0 by then."""
        return {"signals": len(self.sources), "journaled": len(self.journal), "dead_lettered": len(self.dlq),
                "outcomes": dict(self.by_outcome), "not_filled_because": dict(self.journal_reasons),
                "orders": len(self.orders),
                "positions": {k: str(v) for k, v in self.positions.items()},
                "lost": 0, "duplicates": 0}


def _reason_class(reason: str) -> str:
    """A reason without its numbers and details, to count reasons by kind."""
    head = re.sub(r"\d+(\.\d+)?", "N", reason).split(":", 1)[0].split("(")[0].strip()
    return head[:70]


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def read_stream(rb: redis.Redis, stream: str, batch: int = 1000) -> list[tuple[str, dict[bytes, bytes]]]:
    """Every entry of ``stream`` (bytes client), oldest first."""
    out: list[tuple[str, dict[bytes, bytes]]] = []
    start = "-"
    while True:
        rows = rb.xrange(stream, min=start, max="+", count=batch)
        if not rows:
            return out
        out.extend((_s(i), f) for i, f in rows)
        last = _s(rows[-1][0])
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"
        if len(rows) < batch:
            return out


def collect(fleet: Fleet, source_streams: Iterable[str] | None = None) -> Outcome:
    rb = fleet.client(decode=False)
    keys = fleet.keys
    streams = tuple(source_streams or fleet.options.source_streams)
    sources = [(s, i) for s in streams for i, _ in read_stream(rb, s)]
    text = lambda fields: {_s(k): _s(v) for k, v in fields.items()}  # noqa: E731
    journal = [{**text(f), "_id": i} for i, f in read_stream(rb, keys.orders)]
    dlq = [{**text(f), "_id": i} for i, f in read_stream(rb, keys.dlq)]
    return Outcome(sources, journal, dlq)


def pending_counts(fleet: Fleet, source_streams: Iterable[str] | None = None) -> dict[str, int]:
    """Entries still pending per consumer group (0 everywhere once the fleet drained)."""
    r = fleet.client()
    keys = fleet.keys
    counts: dict[str, int] = {}
    pairs = [(s, keys.router_group) for s in (source_streams or fleet.options.source_streams)]
    pairs.append((keys.signals, keys.workers_group))
    for stream, group in pairs:
        try:
            counts[f"{stream}/{group}"] = int(r.xpending(stream, group)["pending"])
        except redis.ResponseError:  # no group (yet): nothing pending in it
            counts[f"{stream}/{group}"] = 0
    return counts


def wait_drained(fleet: Fleet, timeout: float, source_streams: Iterable[str] | None = None,
                 expected_sources: int | None = None) -> None:
    """Until every source entry has its journal or DLQ entry and nothing is pending anywhere."""
    streams = tuple(source_streams or fleet.options.source_streams)
    r = fleet.client()
    keys = fleet.keys

    def drained() -> bool:
        sources = sum(int(r.xlen(s)) for s in streams)
        if expected_sources is not None and sources < expected_sources:
            return False
        done = int(r.xlen(keys.orders)) + int(r.xlen(keys.dlq))
        return done >= sources and not any(pending_counts(fleet, streams).values())

    def diagnose() -> str:
        try:
            sources = sum(int(r.xlen(s)) for s in streams)
            status = (f"sources={sources} journal={r.xlen(keys.orders)} dlq={r.xlen(keys.dlq)} "
                      f"signals={r.xlen(keys.signals)} pending={pending_counts(fleet, streams)}")
        except redis.RedisError as exc:
            status = f"redis: {exc}"
        return f"{status}\n{fleet.tails()}"

    wait_for(drained, timeout, "the fleet to drain (journal + DLQ == sources, nothing pending)",
             interval=0.2, diagnose=diagnose)


def check_invariants(fleet: Fleet, source_streams: Iterable[str] | None = None,
                     extra_origins: Iterable[Origin] = ()) -> Outcome:
    """Assert (a), (b), (c) of the module docstring; returns what was found (for the figures).

    ``extra_origins``: entries written straight onto another stream (e.g. junk on tradebot:signals)
    that must end in the DLQ under their own stream and id."""
    streams = tuple(source_streams or fleet.options.source_streams)
    outcome = collect(fleet, streams)
    problems: list[str] = []

    # (a) exactly one journal or DLQ entry per source entry; nothing pending
    sources = set(outcome.sources) | set(extra_origins)
    records: Counter = Counter()
    where: dict[Origin, list[str]] = defaultdict(list)
    for kind, entries in (("journal", outcome.journal), ("dlq", outcome.dlq)):
        for entry in entries:
            origin = (entry.get("source_stream", ""), entry.get("source_id", ""))
            records[origin] += 1
            where[origin].append(f"{kind} {entry['_id']}")
    missing = sorted(sources - set(records))
    doubled = sorted(o for o, n in records.items() if n > 1)
    foreign = sorted(set(records) - sources)
    if missing:
        problems.append(f"(a) {len(missing)} source entries have no journal/DLQ entry (lost): {missing[:10]}")
    if doubled:
        problems.append(f"(a) {len(doubled)} signals recorded more than once: "
                        + "; ".join(f"{o}: {where[o]}" for o in doubled[:10]))
    if foreign:
        problems.append(f"(a) {len(foreign)} journal/DLQ entries name no source entry: {foreign[:10]}")
    pending = {k: v for k, v in pending_counts(fleet, streams).items() if v}
    if pending:
        problems.append(f"(a) entries still pending after the drain: {pending}")
    for entry in outcome.dlq:
        if not entry.get("reason"):
            problems.append(f"DLQ entry {entry['_id']} has no reason")

    # (b) at most one broker order per signal, only for known signals, each journaled with its id
    fleet.faults_off()
    outcome.stats = fleet.admin("GET", "/_paper/stats")
    outcome.orders = fleet.broker_orders()
    if len(outcome.orders) != outcome.stats.get("orders"):
        problems.append(f"(b) listed {len(outcome.orders)} orders but the broker counts {outcome.stats.get('orders')}")
    coid_origin = {client_order_id(s, i): (s, i) for s, i in outcome.sources}
    per_signal: dict[Origin, list[dict[str, Any]]] = defaultdict(list)
    for order in outcome.orders:
        origin = coid_origin.get(order.get("client_order_id", ""))
        if origin is None:
            problems.append(f"(b) broker order {order['id']} has client_order_id {order.get('client_order_id')!r} "
                            "of no source entry")
            continue
        per_signal[origin].append(order)
    for origin, orders in per_signal.items():
        if len(orders) > 1:
            problems.append(f"(b) signal {origin} has {len(orders)} broker orders: {[o['id'] for o in orders]}")
    journal_by_origin = {(e.get("source_stream"), e.get("source_id")): e for e in outcome.journal}
    for origin, orders in per_signal.items():
        entry = journal_by_origin.get(origin)
        order = orders[0]
        if entry is None:
            where_text = "dead-lettered" if origin in records else "unrecorded"
            problems.append(f"(b) broker order {order['id']} ({order['status']}, filled {order['filled_qty']}) "
                            f"for signal {origin} is not in the journal ({where_text})")
        elif entry.get("order_id") != order["id"]:
            problems.append(f"(b) journal of {origin} names order {entry.get('order_id')!r}, the broker has "
                            f"{order['id']}")
        elif Decimal(entry.get("filled_qty") or "0") != Decimal(order.get("filled_qty") or "0"):
            problems.append(f"(b) journal of {origin} says filled {entry.get('filled_qty')!r}, the broker "
                            f"{order.get('filled_qty')!r} ({order['status']})")

    # (c) broker positions == journaled fills
    outcome.positions = fleet.broker_positions()
    journaled: dict[str, Decimal] = defaultdict(Decimal)
    for entry in outcome.journal:
        filled = Decimal(entry.get("filled_qty") or "0")
        journaled[entry.get("ticker", "?")] += filled if entry.get("side") == "buy" else -filled
    for symbol in sorted(set(journaled) | set(outcome.positions)):
        held, booked = outcome.positions.get(symbol, Decimal(0)), journaled.get(symbol, Decimal(0))
        if held != booked:
            problems.append(f"(c) {symbol}: the broker holds {held}, the journal's fills add up to {booked}")

    if problems:
        raise AssertionError("invariants violated:\n  " + "\n  ".join(problems[:40])
                             + f"\n{json.dumps(outcome.figures(), default=str)}")
    return outcome


# --------------------------------------------------------------------------- bad input


GOOD = "good"


def bad_payloads(count: int, seed: int, symbols: tuple[str, ...], good_every: int = 5) -> list[tuple[str, dict]]:
    """``count`` source entries (class name, fields) from a seeded generator: every ``good_every``-th
    is a good signal, the others each one class of bad input. Deterministic for a given seed."""
    rng = random.Random(seed)
    makers = list(_BAD_MAKERS.items())
    out: list[tuple[str, dict]] = []
    for n in range(count):
        if n % good_every == 0:
            out.append((GOOD, {"ticker": rng.choice(symbols), "direction": rng.choice(["b", "buy", "s", "sell"])}))
            continue
        name, make = makers[rng.randrange(len(makers))]
        out.append((name, make(rng, symbols)))
    return out


def _junk(rng: random.Random, low: int = 1, high: int = 40) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(low, high)))


def _text(rng: random.Random, low: int = 1, high: int = 12) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.:/é€\u202e\t"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


_BAD_MAKERS: dict[str, Callable[[random.Random, tuple[str, ...]], dict]] = {
    "missing ticker": lambda rng, s: {"direction": rng.choice("bs")},
    "missing direction": lambda rng, s: {"ticker": rng.choice(s)},
    "no known field": lambda rng, s: {_text(rng): _text(rng)},
    "unknown ticker": lambda rng, s: {"ticker": rng.choice(["ZZZZ", "nvda1", "", " ", "NV DA", "GME"]),
                                      "direction": "b"},
    "bad direction": lambda rng, s: {"ticker": rng.choice(s), "direction": rng.choice(
        ["x", "", "bb", "long", "0", "1", "B S", "-1", "sel"])},
    "bad qty": lambda rng, s: {"ticker": rng.choice(s), "direction": rng.choice("bs"), "qty": rng.choice(
        ["-1", "0", "abc", "1e3", "NaN", "inf", "1_000", "0x10", "", "2000000", "0.0000000001", "1,5"])},
    "binary junk value": lambda rng, s: {"ticker": _junk(rng), "direction": _junk(rng)},
    "binary junk name": lambda rng, s: {_junk(rng): _junk(rng), b"direction": b"b"},
    "non-utf8 ticker": lambda rng, s: {"ticker": rng.choice(s).encode() + b"\xff\xfe", "direction": "b"},
    "oversized value": lambda rng, s: {"ticker": rng.choice(s) * rng.randint(20, 200), "direction": "b"},
    "oversized name": lambda rng, s: {"x" * rng.randint(65, 500): "1", "ticker": rng.choice(s), "direction": "s"},
    "huge entry": lambda rng, s: {"ticker": rng.choice(s), "direction": "b", "blob": _junk(rng, 30_000, 120_000)},
    "too many fields": lambda rng, s: {**{f"f{i}": str(i) for i in range(rng.randint(17, 120))},
                                       "ticker": rng.choice(s), "direction": "b"},
    "json blob": lambda rng, s: {"payload": json.dumps({"ticker": rng.choice(s), "direction": "b"})},
    "injection-ish": lambda rng, s: {"ticker": rng.choice(["NVDA\r\nXADD x * a b", "NVDA';--", "$(reboot)",
                                                           "NVDA\x00"]), "direction": "b"},
}


def add_entries(rb: redis.Redis, stream: str, entries: list[tuple[str, dict]], batch: int = 200) -> dict[Origin, str]:
    """XADD the entries (pipelined); origin -> class name."""
    classes: dict[Origin, str] = {}
    for start in range(0, len(entries), batch):
        chunk = entries[start:start + batch]
        pipe = rb.pipeline(transaction=False)
        for _, fields in chunk:
            pipe.xadd(stream, fields)
        ids = pipe.execute()
        for (name, _), entry_id in zip(chunk, ids):
            classes[(stream, _s(entry_id))] = name
    return classes


# --------------------------------------------------------------------------- scenarios
# Each runner starts its own fleet under ``root``, does its damage, waits for the drain, checks the
# invariants and returns the figures (tests/test_faults.py runs them short, tests/test_soak.py long).


def start_core(fleet: Fleet, workers: int, *, broker_flags: Iterable[str] = (), worker_extra: Iterable[str] = (),
               claim_idle: float = 2.0, order_timeout: float = 3.0, max_deliveries: int = 10) -> list[str]:
    """Redis, paper broker, poller, router and ``workers`` workers (w0, w1...); their names."""
    fleet.start_redis()
    fleet.start_broker(*broker_flags)
    fleet.start_poller()
    fleet.start_router()
    names = [f"w{i}" for i in range(workers)]
    for name in names:
        fleet.start_worker(name, *Fleet.worker_args(name, claim_idle=claim_idle, order_timeout=order_timeout,
                                                   max_deliveries=max_deliveries, extra=worker_extra))
    fleet.wait_market_ready()
    return names


def assert_alive(fleet: Fleet, names: Iterable[str]) -> None:
    dead = {n: fleet.procs[n].returncode for n in names if not fleet.procs[n].alive}
    if dead:
        raise AssertionError(f"processes exited (exit codes {dead}):\n{fleet.tails()}")


def count_in_logs(fleet: Fleet, names: Iterable[str], *needles: str) -> int:
    return sum(text.count(needle) for name, text in fleet.log_texts().items() if name in names for needle in needles)


def redelivered(outcome: Outcome) -> int:
    """Journal entries whose signal was delivered more than once (a crash or reclaim in between)."""
    return sum(1 for e in outcome.journal if (e.get("deliveries") or "1").isdigit() and int(e["deliveries"] or 1) > 1)


def run_worker_crashes(root: Path, *, signals: int, rate: float, workers: int = 3, kill_every: float = 2.0,
                       min_kills: int = 5, router_every: int = 0, seed: int = 11,
                       drain_timeout: float = 90.0) -> dict[str, Any]:
    """SIGKILL a random worker every ``kill_every`` s while ``signals`` flow; restart it at once, on odd
    kills under its old consumer name (it replays its own PEL, like supervisord's worker-NN), on even
    kills under a new name (its pending entries wait for another worker's XAUTOCLAIM). With
    ``router_every`` = N, every N-th kill hits the router instead (restarted under its stable name)."""
    rng = random.Random(seed)
    with Fleet(root, FleetOptions(seed=seed)) as fleet:
        # order latency and a fill delay keep workers inside the submit -> follow -> journal window,
        # where a kill hurts most
        names = start_core(fleet, workers, broker_flags=("--latency", "orders=0.01-0.05", "--fill-delay", "0.1"))
        # a thin NVDA book (2 shares a side): signals asking for 5 fill partially
        fleet.admin("POST", "/_paper/price", {"symbol": "NVDA", "price": 100, "spread": 0.02, "bid_size": 2,
                                              "ask_size": 2})
        rb = fleet.client(decode=False)
        generator = fleet.start_generator(signals, rate, seed=seed)
        kills = same_name = new_name = router_kills = events = extra = 0
        next_kill = time.monotonic() + kill_every
        while generator.alive or kills < min_kills:
            if time.monotonic() >= next_kill:  # the kill cadence is a schedule, not a synchronisation
                next_kill += kill_every
                events += 1
                # every other tick some signals with a quantity (partial fills on the thin book); every
                # third tick orders take longer than --order-timeout to fill (the worker cancels them),
                # until the next tick
                if events % 2:
                    add_entries(rb, fleet.options.source_streams[0],
                                [("qty", {"ticker": "NVDA", "direction": rng.choice("bs"), "qty": "5"})] * 3)
                    extra += 3
                fleet.admin("POST", "/_paper/fill_delay", {"fill_delay": 4.0 if events % 3 == 0 else 0.1})
                if router_every and events % router_every == 0:
                    fleet.procs["router"].crash()
                    fleet.restart("router")
                    router_kills += 1
                    continue
                name = rng.choice(names)
                fleet.procs[name].crash()
                kills += 1
                if kills % 2:
                    same_name += 1
                    fleet.restart(name)
                else:
                    new_name += 1
                    fleet.restart(name, Fleet.worker_args(f"{name}-r{kills}"))
            time.sleep(0.02)
        fleet.admin("POST", "/_paper/fill_delay", {"fill_delay": 0.1})
        assert generator.exits == [0] or generator.returncode == 0, f"generator failed:\n{generator.tail()}"
        wait_drained(fleet, drain_timeout, expected_sources=signals + extra)
        outcome = check_invariants(fleet)
        assert_alive(fleet, ["paper-broker", "poller", "router", *names])
        return {**outcome.figures(), "workers": workers, "kills": kills, "router_kills": router_kills,
                "restarts_same_consumer": same_name, "restarts_new_consumer": new_name,
                "signals_with_qty": extra, "redelivered_signals": redelivered(outcome),
                "orders_found_after_crash": count_in_logs(fleet, names, "exists (", "already exists"),
                "reclaims": count_in_logs(fleet, names, ": reclaimed ")}


def run_redis_restarts(root: Path, *, signals: int, rate: float, restarts: int = 2, down_for: float = 2.0,
                       workers: int = 2, seed: int = 12, drain_timeout: float = 120.0) -> dict[str, Any]:
    """Stop redis-server (gracefully: AOF flushed) ``restarts`` times while signals flow, keep it away
    ``down_for`` seconds, start it again on the same port and data dir. No process may exit."""
    with Fleet(root, FleetOptions(seed=seed)) as fleet:
        names = start_core(fleet, workers, broker_flags=("--latency", "orders=0.01-0.03"))
        generator = fleet.start_generator(signals, rate, seed=seed)
        r = fleet.client()
        for n in range(1, restarts + 1):
            # restart when a share of the signals is journaled: mid-flow, whatever the machine's speed
            share = signals * n // (restarts + 1)
            wait_for(lambda: int(r.xlen(fleet.keys.orders)) >= share, 60, f"{share} journal entries",
                     diagnose=fleet.tails)
            fleet.restart_redis(lambda: time.sleep(down_for))  # the outage's length is the scenario
        wait_for(lambda: not generator.alive, drain_timeout, "the generator to send every signal",
                 diagnose=fleet.tails)
        assert generator.returncode == 0 or generator.exits == [0], f"generator failed:\n{generator.tail()}"
        wait_drained(fleet, drain_timeout, expected_sources=signals)
        outcome = check_invariants(fleet)
        assert_alive(fleet, ["paper-broker", "poller", "router", *names])
        restarted = {n: p.starts for n, p in fleet.procs.items() if p.starts > 1}
        assert not restarted, f"processes had to be restarted: {restarted}"
        return {**outcome.figures(), "workers": workers, "redis_restarts": fleet.redis_restarts,
                "outage_seconds_each": down_for, "process_restarts": 0,
                "redis_errors_logged": count_in_logs(fleet, fleet.procs, "Redis unavailable", "Redis error",
                                                     "ConnectionError")}


class PriceAgeSampler:
    """Samples, in a thread, the age of the cached prices (now - polled_at); ``max_price_age`` is the
    worst seen. Use as a context manager: the thread stops on leaving it."""

    def __init__(self, fleet: Fleet, interval: float = 0.25) -> None:
        import threading

        self.client = fleet.client()
        self.keys = [fleet.keys.prices(s) for s in fleet.options.symbols]
        self.interval = interval
        self.max_price_age = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="price-age-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                stamps = [self.client.hget(key, "polled_at") for key in self.keys]
            except redis.RedisError:
                continue
            now = time.time()
            for stamp in stamps:
                if stamp:
                    self.max_price_age = max(self.max_price_age, now - float(stamp))

    def __enter__(self) -> "PriceAgeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_broker_faults(root: Path, *, signals: int, rate: float, fault_500: float = 0.08, fault_429: float = 0.08,
                      fault_hang: float = 0.04, hang_seconds: float = 16.0, storm_window: float = 3.0,
                      hung_posts: int = 2, workers: int = 3, seed: int = 13,
                      drain_timeout: float = 180.0) -> dict[str, Any]:
    """The broker answers fault_500 + fault_429 + fault_hang of all requests (trading, orders and
    market data alike) with a 500 (before or after the order took effect), a 429 (Retry-After 1)
    or a hang past the workers' 15 s read timeout (the request takes effect; its answer comes late).

    Two windows mid-flow make the worst cases certain rather than likely:
    - hung POSTs: every order request hangs until ``hung_posts`` of them did; the worker times out
      with the order placed but unseen, and must settle it by its client_order_id, not send another;
    - a 429 storm: for ``storm_window`` seconds EVERY request is answered 429; the fleet must honour
      Retry-After / X-RateLimit-Reset (a fleet-wide pause), not hammer the broker.
    """
    flags = ("--fault-500", str(fault_500), "--fault-429", str(fault_429), "--fault-hang", str(fault_hang),
             "--hang-seconds", str(hang_seconds), "--fault-500-when", "random", "--retry-after", "1")
    normal = {"fault_500": fault_500, "fault_429": fault_429, "fault_hang": fault_hang}
    with Fleet(root, FleetOptions(seed=seed)) as fleet:
        # a short claim-idle: an entry left pending (the broker failed) is retried by the XAUTOCLAIM of
        # its own worker or another after 5 s; entries in hand stay fresh (the keeper), however long
        # a hung request takes, so a living worker's entry is never taken over
        names = start_core(fleet, workers, broker_flags=flags, claim_idle=5.0, order_timeout=5.0,
                           max_deliveries=8)
        generator = fleet.start_generator(signals, rate, seed=seed)
        with PriceAgeSampler(fleet) as sampler:
            if hung_posts:
                hang_some_posts(fleet, hung_posts, normal)
            storm = honour_429_storm(fleet, storm_window, normal)
            wait_for(lambda: not generator.alive, drain_timeout, "the generator to finish", diagnose=fleet.tails)
            wait_drained(fleet, drain_timeout, expected_sources=signals)
        outcome = check_invariants(fleet)  # turns the faults off before reading the broker
        assert_alive(fleet, ["paper-broker", "poller", "router", *names])
        unresolved = [e for e in outcome.journal if e.get("outcome") != "filled" and not e.get("reason")]
        assert not unresolved, f"journal entries without a reason: {unresolved[:5]}"
        stats = outcome.stats
        buys = [e for e in outcome.journal if e.get("side") == "buy"]
        return {**outcome.figures(), **storm, "workers": workers, "requests": stats["requests"],
                "responses_by_status": stats["by_status"], "faults_injected": stats["faults_injected"],
                "dlq_reasons": dict(outcome.dlq_reasons),
                "max_price_age_s": round(sampler.max_price_age, 1),
                "buy_signals": len(buys),
                "buys_filled": sum(1 for e in buys if e.get("outcome") in ("filled", "partially_filled")),
                # a POST that timed out or got a 500: settled by a lookup by client_order_id, never re-sent blindly
                "posts_with_unknown_outcome": count_in_logs(fleet, names, "outcome unknown after POST"),
                "posts_resent_after_lookup_found_nothing": count_in_logs(fleet, names, ": not found in "),
                "orders_found_by_lookup": count_in_logs(fleet, names, "already exists", "exists (",
                                                        "the earlier POST landed")}


def hang_some_posts(fleet: Fleet, count: int, normal: Mapping[str, float]) -> None:
    """Every order-group request hangs until ``count`` of them did, then back to ``normal``."""
    def hangs() -> int:
        return int(fleet.admin("GET", "/_paper/stats")["faults_injected"].get("hang", 0))

    target = hangs() + count
    # only the order group hangs meanwhile, so every hang counted is an order request (mostly POSTs: a
    # market IOC order is final in its POST's answer, nothing else of that group is asked for)
    fleet.admin("POST", "/_paper/faults", {**normal, "fault_hang": {"orders": 1, "all": 0}})
    try:
        wait_for(lambda: hangs() >= target, 30, f"{count} hung order requests", diagnose=fleet.tails)
    finally:
        fleet.admin("POST", "/_paper/faults", dict(normal))


def honour_429_storm(fleet: Fleet, window: float, normal: Mapping[str, float]) -> dict[str, Any]:
    """Answer EVERY request 429 (Retry-After 1) for ``window`` seconds and count what the fleet sends."""
    before = fleet.admin("GET", "/_paper/stats")
    started = time.monotonic()
    fleet.admin("POST", "/_paper/faults", {"fault_500": 0, "fault_429": 1, "fault_hang": 0})
    try:
        time.sleep(window)  # the window's length is the scenario; the request count below is what is checked
    finally:
        fleet.admin("POST", "/_paper/faults", dict(normal))
    elapsed = time.monotonic() - started
    after = fleet.admin("GET", "/_paper/stats")
    sent = after["requests"] - before["requests"]
    # honoured: about one request per process per Retry-After second; ignoring it would be hundreds
    limit = int(15 * elapsed) + 10
    assert sent <= limit, (
        f"{sent} requests in a {elapsed:.1f}s window of nothing but 429s (limit {limit}): the fleet does not "
        f"honour Retry-After; by route: {_delta(before['by_route'], after['by_route'])}")
    return {"storm_window_s": round(elapsed, 1), "storm_window_requests": sent, "storm_window_limit": limit}


def _delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


# what the DLQ reason of each bad-input class must say (a substring)
EXPECTED_REASON = {
    "missing ticker": "missing field 'ticker'",
    "missing direction": "missing field 'direction'",
    "no known field": "missing field 'ticker'",
    "unknown ticker": "ticker",
    "bad direction": "direction",
    "bad qty": "qty",
    "binary junk value": "",
    "binary junk name": "",
    "non-utf8 ticker": "not UTF-8",
    "oversized value": "bytes (max",
    "oversized name": "bytes (max",
    "huge entry": "bytes (max",
    "too many fields": "fields (max",
    "json blob": "missing field 'ticker'",
    "injection-ish": "ticker",
}


def run_bad_input(root: Path, *, entries: int, seed: int = 14, workers: int = 2, good_every: int = 5,
                  drain_timeout: float = 120.0) -> dict[str, Any]:
    """XADD ``entries`` seeded payloads (every ``good_every``-th a good signal, the rest one class of
    bad input each) on the source stream, plus a few junk entries straight onto tradebot:signals (the
    workers' own input). No process may crash; each bad entry lands in the DLQ with a precise
    reason; every good one is journaled (and the buys trade)."""
    with Fleet(root, FleetOptions(seed=seed)) as fleet:
        # a 10,000-entry backlog may take longer than the default 60 s signal age to work off
        names = start_core(fleet, workers, worker_extra=("--max-signal-age", "3600"))
        rb = fleet.client(decode=False)
        payloads = bad_payloads(entries, seed, fleet.options.symbols, good_every)
        classes = add_entries(rb, fleet.options.source_streams[0], payloads)
        # a foreign writer on the internal stream: unusable signals the workers must dead-letter
        junk = [("junk on signals", {"ticker": "NVDA"}), ("junk on signals", {b"\xff": b"\x00\xfe"}),
                ("junk on signals", {"ticker": "NVDA", "side": "buy", "source_stream": "nvda",
                                     "source_id": "not-an-id", "routed_at": "x"})]
        internal = add_entries(rb, fleet.keys.signals, junk)
        wait_drained(fleet, drain_timeout, expected_sources=entries)
        outcome = check_invariants(fleet, extra_origins=set(internal))
        assert_alive(fleet, ["paper-broker", "poller", "router", *names])

        problems: list[str] = []
        dlq_by_origin = {(e["source_stream"], e["source_id"]): e for e in outcome.dlq}
        journal_by_origin = {(e["source_stream"], e["source_id"]): e for e in outcome.journal}
        for origin, name in classes.items():
            if name == GOOD:
                if origin not in journal_by_origin:
                    problems.append(f"good signal {origin} is not journaled: {dlq_by_origin.get(origin)}")
                continue
            entry = dlq_by_origin.get(origin)
            if entry is None:
                problems.append(f"bad entry {origin} ({name}) is not in the DLQ: {journal_by_origin.get(origin)}")
            elif EXPECTED_REASON[name] not in entry.get("reason", "") or not entry.get("reason"):
                problems.append(f"bad entry {origin} ({name}): DLQ reason {entry.get('reason')!r} does not say "
                                f"{EXPECTED_REASON[name]!r}")
        for origin in internal:
            if origin not in dlq_by_origin:
                problems.append(f"junk on {fleet.keys.signals} {origin} is not in the DLQ")
        good_buys = [journal_by_origin[o] for o, n in classes.items() if n == GOOD and o in journal_by_origin
                     and journal_by_origin[o]["side"] == "buy"]
        if any(e["outcome"] != "filled" for e in good_buys):
            problems.append(f"good buys not filled: {[e for e in good_buys if e['outcome'] != 'filled'][:5]}")
        assert not problems, "\n".join(problems[:30])
        per_class = Counter(classes.values())
        return {**outcome.figures(), "entries": entries, "good": per_class[GOOD],
                "bad": entries - per_class[GOOD], "junk_on_signals_stream": len(internal),
                "classes": dict(per_class), "good_buys_filled": len(good_buys)}
