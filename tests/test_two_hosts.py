"""Workers on another host, proven (issue 14 point 5).

Two "hosts" on this machine, as README "Scaling out" describes them: a normal fleet (router,
poller, listener, workers) in the root network namespace, and `tradebot up --only worker` under
a supervisord of its own in a network namespace (own hostname, so its consumers are
``worker-NN@host2-<pid>``), joined by a veth pair with RFC 5737 addresses. Redis and the paper
broker run in the root namespace on the root side of the veth, shared by both hosts.

Signals flow at a steady rate into the one consumer group; mid-run the link is cut while the
second host holds entries: the first host's workers reclaim them (XAUTOCLAIM past a short
claim-idle) and journal them. Restored, the second host's workers rejoin and journal new
signals. Throughout: every signal ends as exactly one journal or DLQ entry, no client_order_id
twice at the broker, every broker order journaled, broker position = journaled fills.
"""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis
from netns import Link, NetnsUnavailable, second_host
from test_fleet import TRADEBOT, base_env, kill_everything, tradebot
from waiting import wait_for

from bot import fleet
from bot.embedded_redis import find_redis_server, free_port
from bot.keys import Keys
from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY
from bot.signals import client_order_id

pytestmark = pytest.mark.slow

KEYS = Keys("tradebot")
SOURCE = "nvda"
SYMBOL = "NVDA"
CLAIM_IDLE = 3.0  # seconds: the workers' --claim-idle (default 30)
BLOCK_MS = 200  # the workers' --block-ms
# a worker's Redis socket timeout is its BLOCK + 10 s (bot/worker/pipeline.py): the link stays cut
# until the second host has been silent longer, so its commands in flight time out and it reconnects
SILENT_MS = BLOCK_MS + 10_000 + 1_000
RATE = 10.0  # signals per second (MAX_SIGNALS last 45 s: a slow machine still has signals to rejoin on)
MIN_SIGNALS = 200
MAX_SIGNALS = 450  # the paper broker lists at most 500 orders at once
HEADERS = {"APCA-API-KEY-ID": DEMO_API_KEY, "APCA-API-SECRET-KEY": DEMO_SECRET_KEY}
# a fixed size, a short claim-idle, and a short BLOCK (a stop, and a lost reply, cost less)
WORKER_FLAGS = f"--strategy fixed --fixed-qty 1 --claim-idle {CLAIM_IDLE:g} --block-ms {BLOCK_MS}"


# ----------------------------------------------------------------------------- the two hosts

@pytest.fixture
def host2() -> Iterator[Link]:
    with contextlib.ExitStack() as stack:
        try:
            link = stack.enter_context(second_host("tb"))
        except NetnsUnavailable as exc:
            pytest.skip(f"no second host on this machine: {exc}")
        yield link


@dataclass
class Shared:
    """Redis and the paper broker, in the root namespace on the veth's root-side address."""

    redis_url: str
    broker_url: str


@pytest.fixture
def shared(host2: Link, tmp_path: Path) -> Iterator[Shared]:
    redis_port, broker_port = free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with open(tmp_path / "redis.log", "wb") as sink:
            processes.append(subprocess.Popen(
                [find_redis_server(), "--bind", host2.root_ip, "--port", str(redis_port), "--dir", str(tmp_path),
                 "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        with open(tmp_path / "paper-broker.log", "wb") as sink:
            # every order call takes 0.1 s: an entry is in hand long enough to be caught by the cut
            processes.append(subprocess.Popen(
                [*TRADEBOT, "paper-broker", "--host", host2.root_ip, "--port", str(broker_port), "--always-open",
                 "--seed", "14", "--rate-limit", "100000", "--latency", "orders=0.1"],
                env=base_env(), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        built = Shared(f"redis://{host2.root_ip}:{redis_port}/0", f"http://{host2.root_ip}:{broker_port}")
        wait_for(lambda: _redis_answers(built.redis_url), 30, "redis-server on the veth address")
        wait_for(lambda: _broker_answers(built.broker_url), 30, "the paper broker on the veth address")
        yield built
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)


def _redis_answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _broker_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/account", headers=HEADERS, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Fleets:
    host1_var: Path
    host2_var: Path
    env: dict[str, str] = field(repr=False)


@pytest.fixture
def fleets(host2: Link, shared: Shared, tmp_path: Path) -> Iterator[Fleets]:
    env = base_env(REDIS_URL=shared.redis_url, ALPACA_BASE_URL=shared.broker_url, ALPACA_DATA_URL=shared.broker_url,
                   ALPACA_API_KEY=DEMO_API_KEY, ALPACA_SECRET_KEY=DEMO_SECRET_KEY, TRADEBOT_SYMBOLS=SYMBOL,
                   TRADEBOT_SOURCE_STREAMS=SOURCE, TRADEBOT_RATE_LIMIT="100000", TRADEBOT_WORKER_FLAGS=WORKER_FLAGS)
    built = Fleets(tmp_path / "host1", tmp_path / "host2", env)
    try:
        yield built
    finally:
        with contextlib.suppress(Exception):
            host2.restore()  # a failure may have left the link cut: let the workers stop gracefully
        for var_dir in (built.host2_var, built.host1_var):
            if fleet.read_pid(fleet.FleetPaths.of(var_dir)):
                with contextlib.suppress(Exception):
                    tradebot("down", "--var-dir", str(var_dir), env=env, timeout=60)
            kill_everything(var_dir)
        host2.kill_all()


# ----------------------------------------------------------------------------- the signals

class Injector(threading.Thread):
    """XADDs buy/sell signals into the source stream at ``RATE`` until stopped (at most MAX_SIGNALS)."""

    def __init__(self, url: str) -> None:
        super().__init__(name="injector", daemon=True)
        self.r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        self.ids: list[str] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        due = time.monotonic()
        try:
            while not self.halt.is_set() and len(self.ids) < MAX_SIGNALS:
                direction = "b" if len(self.ids) % 2 == 0 else "s"
                self.ids.append(self.r.xadd(SOURCE, {"ticker": SYMBOL, "direction": direction}))
                due += 1 / RATE
                self.halt.wait(max(0.0, due - time.monotonic()))  # pacing, not synchronisation
        except BaseException as exc:
            self.error = exc
        finally:
            self.r.close()

    def finish(self) -> list[str]:
        """Stop once at least MIN_SIGNALS were sent; every id sent."""
        wait_for(lambda: len(self.ids) >= MIN_SIGNALS or not self.is_alive(), 60, f"{MIN_SIGNALS} signals sent")
        self.halt.set()
        self.join(30)
        assert not self.is_alive() and self.error is None, self.error
        return list(self.ids)


def journal(r: redis.Redis) -> list[tuple[str, dict[str, str]]]:
    return r.xrange(KEYS.orders)


def dead_letters(r: redis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in r.xrange(KEYS.dlq)]


def pending_of(r: redis.Redis, consumers: list[str]) -> list[dict]:
    rows: list[dict] = []
    for consumer in consumers:
        rows += r.xpending_range(KEYS.signals, KEYS.workers_group, min="-", max="+", count=1000,
                                 consumername=consumer)
    return rows


def consumers_of(r: redis.Redis, host: str) -> dict[str, dict]:
    with contextlib.suppress(redis.ResponseError):  # no group yet
        return {c["name"]: c for c in r.xinfo_consumers(KEYS.signals, KEYS.workers_group)
                if c["name"].endswith("@" + host)}
    return {}


def source_id_of(r: redis.Redis, entry_id: str) -> str:
    [(_, fields)] = r.xrange(KEYS.signals, min=entry_id, max=entry_id)
    return fields["source_id"]


# ----------------------------------------------------------------------------- the scenario

def test_workers_on_a_second_host_lose_the_link_and_rejoin(host2: Link, shared: Shared, fleets: Fleets) -> None:
    env = fleets.env
    host1_name = socket.gethostname()
    assert host1_name != host2.hostname
    up1 = tradebot("up", "--detach", "--var-dir", str(fleets.host1_var), "--workers", "2", env=env)
    assert up1.returncode == 0, up1.stdout + up1.stderr
    described = json.loads((fleets.host1_var / "fleet.json").read_text())
    assert not described["embedded_redis"] and not described["paper_broker"]  # the shared ones
    r = redis.Redis.from_url(shared.redis_url, decode_responses=True, socket_timeout=10)
    injector = Injector(shared.redis_url)
    try:
        wait_for(lambda: r.exists(KEYS.reconciled) and r.hget(KEYS.prices(SYMBOL), "ask"), 60,
                 "the first host's listener reconciliation and prices")
        # the second host: workers only, under their own supervisord, inside the namespace
        up2 = subprocess.run(host2.command(*TRADEBOT, "up", "--detach", "--only", "worker", "--workers", "2",
                                           "--var-dir", str(fleets.host2_var)),
                             env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert up2.returncode == 0, up2.stdout + up2.stderr
        host2_consumers = [f"worker-{n:02d}@{host2.hostname}" for n in range(2)]

        injector.start()
        # 1. both hosts consume from the one group: the second host's workers show up and journal
        wait_for(lambda: set(consumers_of(r, host2.hostname)) == set(host2_consumers), 60,
                 "the second host's workers in XINFO CONSUMERS")

        def both_journal() -> bool:
            by_host = Counter(f["consumer"].rpartition("@")[2] for _, f in journal(r))
            return by_host[host1_name] >= 3 and by_host[host2.hostname] >= 3

        wait_for(both_journal, 60, "journal entries by the workers of both hosts")

        # 2. cut the link while the second host holds entries (Redis's view, after the cut)
        held = cut_while_holding(r, host2, host2_consumers)
        held_sources = {source_id_of(r, row["message_id"]): row for row in held}

        # 3. the first host's workers reclaim them past claim-idle and journal them
        def reclaimed() -> bool:
            if pending_of(r, host2_consumers):
                return False
            done = {f["source_id"]: f for _, f in journal(r)} | {d["source_id"]: d for d in dead_letters(r)}
            return all(source in done for source in held_sources)

        wait_for(reclaimed, 60, f"the first host to reclaim {sorted(held_sources)} from the cut-off host")

        def silent() -> bool:
            seen = consumers_of(r, host2.hostname)  # still members (consumer-idle is an hour): just unreachable
            return set(seen) == set(host2_consumers) and all(c["idle"] > SILENT_MS for c in seen.values())

        wait_for(silent, 60, "the cut-off host to be silent past its Redis socket timeout")
        by_source = {f["source_id"]: f for _, f in journal(r)}
        for source in held_sources:
            entry = by_source[source]  # journaled (none of them dead-lettered: at most 2 deliveries)
            assert entry["consumer"].endswith("@" + host1_name), entry
            assert int(entry["deliveries"]) >= 2, entry
        assert not pending_of(r, host2_consumers)
        restored_after = r.xrevrange(KEYS.orders, count=1)[0][0]

        # 4. restore: the second host's workers rejoin and take new signals
        host2.restore()
        restored_at = time.monotonic()

        def rejoined() -> bool:
            return {f["consumer"] for _, f in r.xrange(KEYS.orders, min=f"({restored_after}")
                    if f["source_id"] not in held_sources} >= set(host2_consumers)

        wait_for(rejoined, 60, "each of the second host's workers to journal new signals after the restore")
        seen = consumers_of(r, host2.hostname)
        since = (time.monotonic() - restored_at) * 1000
        assert set(seen) == set(host2_consumers) and all(c["idle"] <= since for c in seen.values()), seen

        # 5. the end: every signal once in the journal or the DLQ, nothing pending, nothing doubled
        injected = injector.finish()
        wanted = set(injected)

        def settled() -> bool:
            recorded = {f["source_id"] for _, f in journal(r)} | {d["source_id"] for d in dead_letters(r)}
            return wanted <= recorded and r.xpending(KEYS.signals, KEYS.workers_group)["pending"] == 0

        wait_for(settled, 90, f"all {len(injected)} signals journaled or dead-lettered")
        entries = [f for _, f in journal(r)]
        dlq = dead_letters(r)
        recorded = Counter([f["source_id"] for f in entries] + [d["source_id"] for d in dlq])
        assert set(recorded) == wanted  # 0 lost, nothing from elsewhere
        assert [s for s, n in recorded.items() if n > 1] == []  # exactly once
        assert r.xpending(SOURCE, KEYS.router_group)["pending"] == 0
        assert {f["consumer"] for f in entries} >= set(host2_consumers)

        orders = httpx.get(f"{shared.broker_url}/v2/orders", params={"status": "all", "limit": 500},
                           headers=HEADERS, timeout=10).json()
        assert len(orders) < 500  # the whole list
        coids = [o["client_order_id"] for o in orders]
        assert len(coids) == len(set(coids))  # no client_order_id twice
        assert set(coids) <= {client_order_id(SOURCE, i) for i in injected}  # one order per signal at most
        journaled = {f["order_id"]: f for f in entries if f["order_id"]}
        assert set(journaled) == {o["id"] for o in orders}  # every order journaled, no other order
        for order in orders:
            assert journaled[order["id"]]["client_order_id"] == order["client_order_id"]
        positions = httpx.get(f"{shared.broker_url}/v2/positions", headers=HEADERS, timeout=10).json()
        held_qty = sum((Decimal(p["qty"]) for p in positions if p["symbol"] == SYMBOL), Decimal(0))
        filled = sum(((Decimal(f["filled_qty"] or 0) * (1 if f["side"] == "buy" else -1)) for f in entries),
                     Decimal(0))
        assert held_qty == filled
    finally:
        injector.halt.set()
        r.close()


def cut_while_holding(r: redis.Redis, link: Link, consumers: list[str], attempts: int = 5) -> list[dict]:
    """Cut the link once the second host holds entries; the entries it holds in Redis's view after
    the cut. An entry acked between the look and the cut leaves nothing held: restore and try again."""
    for _ in range(attempts):
        wait_for(lambda: pending_of(r, consumers), 60, "the second host to hold an entry")
        link.cut()
        held = pending_of(r, consumers)
        if held:
            return held
        link.restore()
    raise AssertionError(f"the second host held no entry at any of {attempts} cuts")
