"""Redis Cluster with real servers from the pip-shipped binary on free ports (three masters, the
slots split between them): the URL form, hash-tagged keys, and the fleet's e2e invariants on it:
every signal one journal entry or one DLQ entry, no second order, positions = journaled fills."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from redis.crc import key_slot

from bot.alpaca.client import AlpacaClient
from bot.cli import cli
from bot.config import ConfigError, Settings
from bot.embedded_redis import find_redis_server
from bot.journal import read_journal
from bot.keys import Keys
from bot.listener import Listener, ListenerConfig
from bot.order_events import OrderEvents
from bot.paper.testing import PaperBrokerServer
from bot.poller import Poller
from bot.reconcile import ReconcileConfig, Reconciler
from bot.redisconn import connect, parse_cluster_url
from bot.router import Router
from bot.worker import Worker, WorkerConfig
from test_sentinel import _answers
from waiting import wait_for

SYMBOL = "NVDA"
SLOTS = 16384


def test_cluster_urls_parse_and_bad_ones_are_one_line() -> None:
    target = parse_cluster_url("redis+cluster://u:pw@h1:7000,h2:7001")
    assert target.hosts == (("h1", 7000), ("h2", 7001)) and target.username == "u" and target.password == "pw"
    assert parse_cluster_url("rediss+cluster://h1/").ssl and parse_cluster_url("redis+cluster://h1").hosts == (
        ("h1", 6379),)
    for bad in ("redis+cluster://:pw@h1:x", "redis+cluster://:pw@h1:7000/3", "redis+cluster://:pw@:7000"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"REDIS_URL": bad})
        assert "pw" not in str(caught.value) and "\n" not in str(caught.value)


def test_on_a_cluster_every_key_and_the_default_source_stream_share_one_slot() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis+cluster://127.0.0.1:7000"})
    keys = settings.keys
    assert settings.source_streams == ("{tradebot}:nvda",) and keys.signals == "{tradebot}:signals"
    names = [keys.signals, keys.orders, keys.dlq, keys.ledger, keys.halt, keys.prices("NVDA"), keys.account,
             keys.done("{tradebot}:nvda", "1-0"), keys.routed("{tradebot}:nvda", "1-0"), keys.order_state("c"),
             keys.order_wake("c"), keys.ratelimit("orders"), keys.heartbeat("w"), keys.reconcile,
             *settings.source_streams]
    assert len({key_slot(n.encode()) for n in names}) == 1
    assert Settings.from_env({}).keys.signals == "tradebot:signals"  # one node: the keys DESIGN.md names
    assert Settings.from_env({"REDIS_URL": "redis+cluster://h:1", "TRADEBOT_PREFIX": "{acct2}"}).keys.orders == \
        "{acct2}:orders"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"REDIS_URL": "redis+cluster://h:1", "TRADEBOT_SOURCE_STREAMS": "nvda"})
    assert "e.g. {tradebot}:nvda" in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- a real cluster

def _port_pair() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port >= 55000:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class RedisCluster:
    nodes: list[subprocess.Popen[bytes]]
    ports: list[int]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)


def _ready(ports: list[int]) -> bool:
    for port in ports:
        try:
            with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
                info = client.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info or "cluster_known_nodes:3" not in info:
                    return False
        except redis.RedisError:
            return False
    return True


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    ports = [_port_pair() for _ in range(3)]
    nodes = []
    try:
        for port in ports:
            folder = tmp_path / str(port)
            folder.mkdir()
            with open(folder / "server.log", "ab") as log:
                nodes.append(subprocess.Popen(
                    [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"],
                    stdout=log, stderr=subprocess.STDOUT))
        wait_for(lambda: all(_answers(p) for p in ports), 30, "three cluster nodes")
        share = SLOTS // len(ports)
        for i, port in enumerate(ports):
            with redis.Redis(port=port) as client:
                end = SLOTS if i == len(ports) - 1 else (i + 1) * share
                client.execute_command("CLUSTER", "ADDSLOTS", *range(i * share, end))
                if i:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])
        wait_for(lambda: _ready(ports), 60, "the cluster to agree (cluster_state:ok, 3 nodes)")
        yield RedisCluster(nodes, ports)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
            node.wait(10)


def test_the_fleet_on_a_three_master_cluster(cluster: RedisCluster) -> None:
    env = {"REDIS_URL": cluster.url, "TRADEBOT_SYMBOLS": SYMBOL}
    r = connect(cluster.url)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    with PaperBrokerServer(always_open=True, seed=9, symbols=(SYMBOL,), rate_limit=100000) as broker:
        broker.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
        settings = Settings.from_env({**env, "ALPACA_BASE_URL": broker.base_url, "ALPACA_DATA_URL": broker.base_url,
                                      "ALPACA_API_KEY": broker.api_key, "ALPACA_SECRET_KEY": broker.secret_key,
                                      "TRADEBOT_RATE_LIMIT": "60000"})
        keys, source = settings.keys, settings.source_streams[0]
        # the fleet's keys sit on one node; the cluster really is three (a key elsewhere is MOVED)
        assert len({key_slot(k.encode()) // (SLOTS // 3) for k in (keys.signals, "a", "b", "c", "d")}) > 1
        client = AlpacaClient(api_key=broker.api_key, secret_key=broker.secret_key, base_url=broker.base_url,
                              data_url=broker.base_url)
        listener_client = AlpacaClient(api_key=broker.api_key, secret_key=broker.secret_key,
                                       base_url=broker.base_url, data_url=broker.base_url)
        events = OrderEvents(r, keys)
        loops = [Poller(client, r, keys, [SYMBOL], interval=0.3, account_interval=0.5, clock_interval=1,
                        max_backoff=0.3),
                 Listener(url=broker.stream_url, api_key=broker.api_key, secret_key=broker.secret_key, r=r,
                          events=events, client=listener_client,
                          config=ListenerConfig(holder="l1", probe_after=0.5, probe_timeout=1.0, lease_ttl=3.0),
                          reconciler=Reconciler(r, keys, listener_client)),
                 Router(settings, consumer="router-1", block_ms=50, from_start=True, backoff_cap_s=0.3),
                 *(Worker(settings, WorkerConfig(consumer=f"w{n}", block_ms=50, backoff_max=0.3, strategy="fixed",
                                                 fixed_qty=Decimal(1), own_replay_first=0.3, own_replay_max=1.0))
                   for n in (1, 2))]
        threads = [threading.Thread(target=loop.run, args=(stop,), daemon=True) for loop in loops]
        runner = CliRunner()
        try:
            for thread in threads:
                thread.start()
            wait_for(lambda: r.exists(keys.prices(SYMBOL)) and events.listener_health().live, 30,
                     "the market cache and the listener")
            sides = ["b", "b", "s", "b", "s", "b", "b", "s", "b", "s", "b", "b"]
            for side in sides:
                r.xadd(source, {"ticker": SYMBOL, "direction": side})
            poison = runner.invoke(cli, ["signal", "NVDA", "b"], env=env)  # through the CLI too
            assert poison.exit_code == 0, poison.output
            r.xadd(source, {"ticker": "ZZZZ", "direction": "b"})  # not traded: the DLQ
            total = len(sides) + 2
            wait_for(lambda: len(read_journal(r, keys)) + r.xlen(keys.dlq) >= total, 60, "every signal recorded")
            status = runner.invoke(cli, ["status", "--json"], env=env)
            assert status.exit_code == 0, status.output
            assert json.loads(status.output)["redis"]["ok"] is True
            listed = runner.invoke(cli, ["dlq", "list", "--json"], env=env)
            assert listed.exit_code == 0 and "ZZZZ" in listed.output, listed.output
            orders = runner.invoke(cli, ["orders", "--last", "50", "--json"], env=env)
            assert orders.exit_code == 0 and len(json.loads(orders.output)) == total - 1, orders.output
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        with broker.client() as http:
            placed = http.get("/v2/orders", params={"status": "all", "limit": 500}).json()
            held = {p["symbol"]: Decimal(p["qty"]) for p in http.get("/v2/positions").json()}
        coids = [o["client_order_id"] for o in placed]
        assert len(coids) == len(set(coids))  # no second order
        entries = read_journal(r, keys, last=1000)
        assert len({(e.source_stream, e.source_id) for e in entries}) == len(entries) == total - 1
        assert r.xlen(keys.dlq) == 1
        report = Reconciler(r, keys, client, ReconcileConfig(settle=0)).run(apply=True)
        filled = sum(((e.filled_qty or Decimal(0)) * (1 if e.side == "buy" else -1) for e in entries), Decimal(0))
        assert held.get(SYMBOL, Decimal(0)) == filled and report.position_drift == []
        assert {e.client_order_id for e in entries if e.order_id} == set(coids)
        assert {e["client_order_id"] for _, e in r.xrange(keys.order_events)} == set(coids)  # events recorded
        client.close()
        listener_client.close()
    r.close()
    assert not any(thread.is_alive() for thread in threads)


def test_keys_spread_over_slots_by_prefix() -> None:
    """One account is one slot (compatibility, not sharding); several prefixes spread."""
    slots = {key_slot(Keys(f"acct{i}", hash_tag=True).signals.encode()) for i in range(8)}
    assert len(slots) == 8
