"""Redis losing its last second under a trading fleet, then reconciliation: afterwards every order
at the broker is journaled exactly once and broker positions equal journaled fills.

A real kill -9 of redis-server (AOF everysec) in the middle of the orders, a restart on the same
data, the worker, poller and router riding it out; then the loss of the last second made certain
(the newest journal entries, their done markers and their signals entries deleted, as a restart
without them leaves things) so that reconciliation has something to find every run."""
from __future__ import annotations

import signal
import threading
import time
from decimal import Decimal
from pathlib import Path

import redis

from bot.alpaca.client import AlpacaClient
from bot.config import Settings
from bot.embedded_redis import EmbeddedRedis
from bot.journal import read_journal
from bot.keys import Keys
from bot.paper.testing import PaperBrokerServer
from bot.poller import Poller
from bot.reconcile import ReconcileConfig, Reconciler
from bot.router import Router
from bot.worker import Worker, WorkerConfig
from waiting import wait_for

KEYS = Keys("tbk")
SYMBOL = "NVDA"
SIGNALS = 12
LOST = 3


def test_redis_kill_9_then_reconciliation_agrees_with_the_broker(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    rb = redis.Redis.from_url(server.url, decode_responses=False)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    clients: list[AlpacaClient] = []
    try:
        with PaperBrokerServer(always_open=True, seed=33, symbols=(SYMBOL,), rate_limit=100000,
                               fill_delay=0.2) as broker:
            broker.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
            settings = Settings(redis_url=server.url, prefix=KEYS.prefix, symbols=(SYMBOL,), source_streams=("nvda",),
                                alpaca_base_url=broker.base_url, alpaca_data_url=broker.base_url,
                                rate_limit_per_minute=60000, alpaca_api_key=broker.api_key,
                                alpaca_secret_key=broker.secret_key)

            def client() -> AlpacaClient:
                clients.append(AlpacaClient(api_key=broker.api_key, secret_key=broker.secret_key,
                                            base_url=broker.base_url, data_url=broker.base_url))
                return clients[-1]

            poller = Poller(client(), r, KEYS, [SYMBOL], interval=0.2, account_interval=0.5, clock_interval=1,
                            max_backoff=0.3)
            router = Router(settings, consumer="router-1", block_ms=50, from_start=True, backoff_cap_s=0.3)
            worker = Worker(settings, WorkerConfig(consumer="w1", block_ms=50, backoff_max=0.3, strategy="fixed",
                                                   fixed_qty=Decimal(1), own_replay_first=0.3, own_replay_max=1.0))
            threads = [threading.Thread(target=loop.run, args=(stop,), daemon=True) for loop in (poller, router, worker)]
            for thread in threads:
                thread.start()
            wait_for(lambda: r.exists(KEYS.prices(SYMBOL)), what="the market cache")
            for _ in range(SIGNALS):
                r.xadd("nvda", {"ticker": SYMBOL, "direction": "b"})
            wait_for(lambda: r.xlen(KEYS.orders) >= SIGNALS // 3, what="some orders journaled")
            server.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            server.process.wait(10)  # type: ignore[union-attr]
            server.start()  # the same port and AOF: what reached the file comes back
            wait_for(lambda: _idle(r), 120, "the fleet to finish what survived")

            # the last second lost for certain: the newest journal entries, their markers, their entries
            for entry in read_journal(r, KEYS, last=LOST):
                r.xdel(KEYS.orders, entry.journal_id)
                r.delete(KEYS.done(entry.source_stream, entry.source_id))
            orders_before = _broker_orders(broker)
            report = Reconciler(r, KEYS, client(), ReconcileConfig(settle=0)).run(apply=True)
            assert len(report.adopted) >= LOST

            entries = read_journal(r, KEYS, last=1000)
            journaled = [e.client_order_id for e in entries if e.order_id]
            broker_coids = [o["client_order_id"] for o in _broker_orders(broker)]
            assert len(_broker_orders(broker)) == len(orders_before)  # reconciliation places nothing
            assert sorted(journaled) == sorted(broker_coids)  # every broker order journaled, once
            filled = sum(((e.filled_qty or Decimal(0)) for e in entries if e.side == "buy"), Decimal(0))
            with broker.client() as http:
                held = {p["symbol"]: Decimal(p["qty"]) for p in http.get("/v2/positions").json()}
            assert held.get(SYMBOL, Decimal(0)) == filled
            assert report.position_drift == []
            assert Reconciler(r, KEYS, client(), ReconcileConfig(settle=0)).run(apply=False).clean
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for built in clients:
            built.close()
        r.close()
        rb.close()
        server.stop()
    assert not any(thread.is_alive() for thread in threads)


def _idle(r: redis.Redis) -> bool:
    """Nothing routed is pending and the router has nothing left: the fleet is done."""
    try:
        groups = r.xinfo_groups(KEYS.signals)
        source = r.xinfo_groups("nvda")
    except redis.ResponseError:
        return False
    return all(g["pending"] == 0 and (g.get("lag") in (0, None)) for g in [*groups, *source]) \
        and r.xlen(KEYS.orders) > 0 and _stable(r)


_last: dict[str, tuple[int, float]] = {}


def _stable(r: redis.Redis) -> bool:
    """The journal has not grown for a second (the last order is settled, not in flight)."""
    length = r.xlen(KEYS.orders)
    seen = _last.get("orders")
    now = time.monotonic()
    if seen is None or seen[0] != length:
        _last["orders"] = (length, now)
        return False
    return now - seen[1] >= 1.0


def _broker_orders(broker: PaperBrokerServer) -> list[dict[str, str]]:
    with broker.client() as http:
        return http.get("/v2/orders", params={"status": "all", "limit": 500}).json()
