"""Redis Sentinel with real servers from the pip-shipped binary on free ports (a master, a replica,
three sentinels): the URL form, and a fleet that trades through a kill -9 of the master, following
the failover by itself: 0 duplicate broker orders, and after reconciliation broker positions equal
journaled fills."""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from bot.alpaca.client import AlpacaClient
from bot.codec import display
from bot.config import ConfigError, Settings
from bot.embedded_redis import find_redis_server, free_port
from bot.journal import read_journal
from bot.keys import Keys
from bot.paper.testing import PaperBrokerServer
from bot.poller import Poller
from bot.reconcile import ReconcileConfig, Reconciler
from bot.redisconn import connect, parse_sentinel_url
from bot.router import Router
from bot.worker import Worker, WorkerConfig
from waiting import wait_for

SERVICE = "tbmaster"
KEYS = Keys("tbsen")
SYMBOL = "NVDA"


def test_sentinel_urls_parse_and_bad_ones_are_one_line() -> None:
    target = parse_sentinel_url("redis+sentinel://:pw@h1:26379,h2:26380/mymaster/2?sentinel_password=spw")
    assert target.hosts == (("h1", 26379), ("h2", 26380)) and target.service == "mymaster" and target.db == 2
    assert target.password == "pw" and target.sentinel_password == "spw" and not target.ssl
    assert parse_sentinel_url("rediss+sentinel://h1/svc").hosts == (("h1", 26379),)
    for bad in ("redis+sentinel://h1:26379", "redis+sentinel://h1:x/svc", "redis+sentinel://:pw@h1:1/svc/x/y"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({"REDIS_URL": bad})
        assert "pw" not in str(caught.value) and "\n" not in str(caught.value)


@dataclass
class Cluster:
    master: subprocess.Popen[bytes]
    replica: subprocess.Popen[bytes]
    sentinels: list[subprocess.Popen[bytes]]
    master_port: int
    replica_port: int
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{SERVICE}"

    def master_address(self) -> tuple[str, int] | None:
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as client:
                    host, found = client.sentinel_get_master_addr_by_name(SERVICE)
                    return host.decode() if isinstance(host, bytes) else str(host), int(found)
            except (redis.RedisError, TypeError):
                continue
        return None


def _server(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as sink:
        return subprocess.Popen([find_redis_server(), *args], stdout=sink, stderr=subprocess.STDOUT)


def _link_up(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=0.5, decode_responses=True) as client:
            return client.info("replication").get("master_link_status") == "up"
    except redis.RedisError:
        return False


def _answers(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    master_port, replica_port = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no",
              "--repl-diskless-sync-delay", "0"]  # Valkey/Redis 7 wait 5 s before a first sync otherwise
    master = _server(["--port", str(master_port), "--dir", str(tmp_path), *common], tmp_path / "master.log")
    replica = _server(["--port", str(replica_port), "--dir", str(tmp_path), *common,
                       "--replicaof", "127.0.0.1", str(master_port)], tmp_path / "replica.log")
    sentinels, ports = [], []
    try:
        wait_for(lambda: _answers(master_port) and _answers(replica_port), 30, "master and replica")
        wait_for(lambda: _link_up(replica_port), 30, "the replica in sync with the master")
        for n in range(3):
            port = free_port()
            conf = tmp_path / f"sentinel-{n}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {tmp_path}\n"
                            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                            f"sentinel failover-timeout {SERVICE} 5000\n"
                            f"sentinel parallel-syncs {SERVICE} 1\n")
            sentinels.append(_server([str(conf), "--sentinel"], tmp_path / f"sentinel-{n}.log"))
            ports.append(port)
        built = Cluster(master, replica, sentinels, master_port, replica_port, ports)
        wait_for(lambda: all(_answers(p) for p in ports) and built.master_address() == ("127.0.0.1", master_port),
                 30, "the sentinels")
        yield built
    finally:
        for process in [master, replica, *sentinels]:
            if process.poll() is None:
                process.kill()
            process.wait(10)


def test_a_fleet_follows_a_failover_by_itself(cluster: Cluster) -> None:
    url = cluster.url
    r = connect(url)
    rb = connect(url, decode=False)
    rw = connect(url)
    written: list[str] = []
    writing = threading.Event()  # set: the writer stops
    stop = threading.Event()
    threads: list[threading.Thread] = []
    with PaperBrokerServer(always_open=True, seed=8, symbols=(SYMBOL,), rate_limit=100000) as broker:
        broker.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
        settings = Settings(redis_url=url, prefix=KEYS.prefix, symbols=(SYMBOL,), source_streams=("nvda",),
                            alpaca_base_url=broker.base_url, alpaca_data_url=broker.base_url,
                            alpaca_api_key=broker.api_key, alpaca_secret_key=broker.secret_key,
                            rate_limit_per_minute=60000)
        client = AlpacaClient(api_key=broker.api_key, secret_key=broker.secret_key, base_url=broker.base_url,
                              data_url=broker.base_url)
        loops = [Poller(client, r, KEYS, [SYMBOL], interval=0.3, account_interval=0.5, clock_interval=1,
                        max_backoff=0.3),
                 Router(settings, consumer="router-1", block_ms=50, from_start=True, backoff_cap_s=0.3),
                 Worker(settings, WorkerConfig(consumer="w1", block_ms=50, backoff_max=0.3, strategy="fixed",
                                               fixed_qty=Decimal(1), own_replay_first=0.3, own_replay_max=1.0))]
        threads = [threading.Thread(target=loop.run, args=(stop,), daemon=True) for loop in loops]
        try:
            for thread in threads:
                thread.start()
            wait_for(lambda: r.exists(KEYS.prices(SYMBOL)), what="the market cache")
            for _ in range(5):
                written.append(r.xadd("nvda", {"ticker": SYMBOL, "direction": "b"}))
            wait_for(lambda: len(read_journal(r, KEYS)) == 5, 60, "five journaled on the first master")
            writer = threading.Thread(target=_keep_writing, args=(rw, written, writing), daemon=True)
            writer.start()  # signals keep flowing through the kill (a second client: its own connection)
            wait_for(lambda: len(written) >= 8, 30, "signals flowing")
            cluster.master.send_signal(signal.SIGKILL)
            wait_for(lambda: cluster.master_address() == ("127.0.0.1", cluster.replica_port), 60,
                     "the sentinels to promote the replica")
            count_at_promotion = len(written)
            wait_for(lambda: len(written) >= count_at_promotion + 3, 60, "writes on the new master")
            writing.set()
            writer.join(30)
            # what the new master has: an entry acked by the old master and never replicated is
            # lost by the asynchronous replication itself (the Redis docs' warning), not by the fleet
            present = {display(i) for i, _ in r.xrange("nvda")}
            replication_lost = [i for i in written if i not in present]
            survived = sorted(present)
            wait_for(lambda: {e.source_id for e in read_journal(r, KEYS, last=1000)} >= set(survived), 90,
                     "every signal the new master has, journaled")
            print(f"\nsentinel failover: {len(written)} signals written, {len(replication_lost)} lost by the "
                  f"asynchronous replication, {len(survived)} on the new master, all journaled")
        finally:
            writing.set()
            stop.set()
            for thread in threads:
                thread.join(30)
        with broker.client() as http:
            orders = http.get("/v2/orders", params={"status": "all", "limit": 500}).json()
            held = {p["symbol"]: Decimal(p["qty"]) for p in http.get("/v2/positions").json()}
        coids = [o["client_order_id"] for o in orders]
        assert len(coids) == len(set(coids))  # 0 duplicate broker orders
        report = Reconciler(r, KEYS, client, ReconcileConfig(settle=0)).run(apply=True)
        entries = read_journal(r, KEYS, last=1000)
        journaled = [e.source_id for e in entries]
        assert len(journaled) == len(set(journaled))  # one entry per signal, the redelivered ones included
        # lost by the fleet: 0 (every signal the new master has is journaled); a lost signal whose order
        # reached the broker before the kill is journaled too, adopted by the reconciliation
        assert set(survived) <= set(journaled) <= set(survived) | set(replication_lost)
        filled = sum(((e.filled_qty or Decimal(0)) for e in entries), Decimal(0))
        assert held.get(SYMBOL, Decimal(0)) == filled and report.position_drift == []
        assert {e.client_order_id for e in entries if e.order_id} == set(coids)  # every order journaled
        client.close()
    r.close()
    rb.close()
    rw.close()
    assert not any(thread.is_alive() for thread in threads)


def _keep_writing(r: redis.Redis, written: list[str], done: threading.Event) -> None:
    """A signal every 50 ms; the ids Redis acknowledged are kept (a failed XADD is not a signal)."""
    while not done.wait(0.05):
        try:
            written.append(display(r.xadd("nvda", {"ticker": SYMBOL, "direction": "b"})))
        except redis.RedisError:
            done.wait(0.1)  # the client's next connection asks the sentinels again
