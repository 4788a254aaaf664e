"""An order POST delayed in the network past the client's timeout: the lookup answers 404, then the
order lands. The delays leave seconds of margin on each side of the 3 s read timeout, so that a
loaded machine (a second suite beside this one) cannot reorder the lookup and the landing. The fleet must neither hide it (no `skipped`, no dead letter while it may exist) nor
place it twice (not even through `tradebot dlq replay`). Real sockets: a paper broker on a free port
that holds the POST (submit_delay) while the worker's 3 s read timeout runs out, a real Redis, the
price poller and the router in threads."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import redis

from bot.alpaca.client import AlpacaClient
from bot.config import Settings
from bot.journal import JournalEntry, read_journal
from bot.keys import Keys
from bot.ops.dlq import dlq_replay
from bot.order_events import OrderEvents
from bot.paper.testing import PaperBrokerServer
from bot.poller import Poller
from bot.router import Router
from bot.worker import CLIENT_KNOBS, Worker, WorkerConfig
from waiting import wait_for

KEYS = Keys("tbu")
SYMBOL = "NVDA"
READ_TIMEOUT = float(CLIENT_KNOBS["timeout"].read)


@dataclass
class Scene:
    r: redis.Redis
    rb: redis.Redis
    broker: PaperBrokerServer
    settings: Settings
    clients: list[AlpacaClient] = field(default_factory=list)

    def client(self, **knobs: Any) -> AlpacaClient:
        built = AlpacaClient(api_key=self.broker.api_key, secret_key=self.broker.secret_key,
                             base_url=self.broker.base_url, data_url=self.broker.base_url, **knobs)
        self.clients.append(built)
        return built

    def worker(self, client: Any = None, **config: Any) -> Worker:
        options: dict[str, Any] = dict(consumer="w1", block_ms=20, strategy="fixed", fixed_qty=Decimal(1),
                                       own_replay_first=0.5, own_replay_max=1.0, claim_idle=120.0)
        options.update(config)
        return Worker(self.settings, WorkerConfig(**options), r=self.r, rb=self.rb,
                      client=client or self.client(**CLIENT_KNOBS))

    def send_source(self) -> str:
        """A signal on the source stream, through the router to the workers."""
        entry_id = self.r.xadd("nvda", {"ticker": SYMBOL, "direction": "b"})
        return str(entry_id)

    def broker_orders(self) -> list[dict[str, Any]]:
        with self.broker.client() as http:
            return http.get("/v2/orders", params={"status": "all", "limit": 500}).json()

    def journal(self) -> list[JournalEntry]:
        return read_journal(self.r, KEYS)


@pytest.fixture
def scene(r: redis.Redis, rb: redis.Redis, redis_url: str) -> Iterator[Scene]:
    with PaperBrokerServer(always_open=True, seed=21, symbols=(SYMBOL,), rate_limit=100000) as broker:
        broker.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
        settings = Settings(redis_url=redis_url, prefix=KEYS.prefix, symbols=(SYMBOL,), source_streams=("nvda",),
                            alpaca_base_url=broker.base_url, alpaca_data_url=broker.base_url,
                            rate_limit_per_minute=60000)
        built = Scene(r, rb, broker, settings)
        stop = threading.Event()
        poller = Poller(built.client(), r, KEYS, [SYMBOL], interval=0.2, account_interval=0.5, clock_interval=1)
        router = Router(settings, client=rb, consumer="router-1", block_ms=50, from_start=True)
        threads = [threading.Thread(target=poller.run, args=(stop,), daemon=True),
                   threading.Thread(target=router.run, args=(stop,), daemon=True)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: r.exists(KEYS.prices(SYMBOL)) and r.exists(KEYS.account), what="the market cache")
            yield built
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            for client in built.clients:
                client.close()


def run_until(worker: Worker, condition: Callable[[], Any], timeout: float = 90.0, what: str = "") -> None:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(condition, timeout, what)
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()


class HaltAfterFirstPost:
    """The worker's client; the kill switch goes on right after its first POST (which times out)."""

    def __init__(self, inner: AlpacaClient, r: redis.Redis) -> None:
        self.inner, self.r, self.posts = inner, r, 0

    def submit_order(self, request: Any, **kw: Any) -> Any:
        self.posts += 1
        try:
            return self.inner.submit_order(request, **kw)
        finally:
            self.r.set(KEYS.halt, "operator: stop everything")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def assert_books_agree(scene: Scene, signals: int) -> None:
    orders = scene.broker_orders()
    entries = scene.journal()
    assert len(entries) + scene.r.xlen(KEYS.dlq) == signals  # every signal: one journal or one DLQ entry
    journaled = [e.order_id for e in entries if e.order_id]
    assert sorted(journaled) == sorted(o["id"] for o in orders)  # every broker order journaled, once
    assert len(orders) == len({o["client_order_id"] for o in orders})
    filled = sum((e.filled_qty or Decimal(0)) for e in entries)
    with scene.broker.client() as http:
        positions = {p["symbol"]: Decimal(p["qty"]) for p in http.get("/v2/positions").json()}
    assert positions.get(SYMBOL, Decimal(0)) == filled


def test_a_delayed_post_then_a_halt_is_adopted_not_skipped(scene: Scene) -> None:
    scene.broker.set_faults(submit_delay=READ_TIMEOUT + 5.0)
    client = HaltAfterFirstPost(scene.client(**CLIENT_KNOBS), scene.r)
    worker = scene.worker(client=client, resolve_after=60.0)
    scene.send_source()
    run_until(worker, lambda: scene.journal(), what="the signal journaled")
    (entry,) = scene.journal()
    assert entry.outcome == "filled" and entry.adopted, entry  # found at the broker, never journaled skipped
    assert len(scene.broker_orders()) == 1 and scene.r.xlen(KEYS.dlq) == 0
    assert scene.r.hlen(KEYS.unresolved) == 0
    assert_books_agree(scene, 1)


def test_a_delayed_post_past_max_deliveries_is_adopted_not_dead_lettered(scene: Scene) -> None:
    scene.broker.set_faults(submit_delay=READ_TIMEOUT + 5.0)
    worker = scene.worker(max_deliveries=1, submit_attempts=1, resolve_after=60.0)
    scene.send_source()
    run_until(worker, lambda: scene.journal(), what="the signal journaled")
    (entry,) = scene.journal()
    assert entry.outcome == "filled" and entry.adopted
    assert scene.r.xlen(KEYS.dlq) == 0 and len(scene.broker_orders()) == 1
    assert_books_agree(scene, 1)


def dead_letter_then_its_order_lands(scene: Scene) -> tuple[str, dict[str, str]]:
    """resolve_after shorter than the network's delay: the signal is dead-lettered, then its order
    lands. The dead letter (id, fields)."""
    scene.broker.set_faults(submit_delay=READ_TIMEOUT + 10.0)
    worker = scene.worker(max_deliveries=1, submit_attempts=1, resolve_after=0.2)
    scene.send_source()
    run_until(worker, lambda: scene.r.xlen(KEYS.dlq) == 1, what="the dead letter")
    (dead_id, dead), = scene.r.xrange(KEYS.dlq)
    wait_for(lambda: len(scene.broker_orders()) == 1, 60, "the delayed POST to land")
    scene.broker.set_faults(submit_delay=0)
    return dead_id, dead


def test_a_dead_letter_whose_order_landed_late_is_replayed_without_a_second_order(scene: Scene) -> None:
    dead_id, dead = dead_letter_then_its_order_lands(scene)
    assert "had an unknown outcome; no such order at the broker" in dead["reason"]
    dlq_replay(scene.rb, KEYS, dead_id, scene.settings)  # the operator replays it
    replayer = scene.worker()
    run_until(replayer, lambda: scene.journal(), what="the replay journaled")
    (entry,) = scene.journal()
    assert entry.adopted and entry.outcome == "filled" and entry.client_order_id == dead.get("raw_client_order_id",
                                                                                               entry.client_order_id)
    orders = scene.broker_orders()
    assert len(orders) == 1 and orders[0]["client_order_id"] == entry.client_order_id  # 0 second orders
    assert scene.r.xlen(KEYS.dlq) == 0
    # a replay takes its dead letter's place (the DLQ entry moves to the source stream): one record
    assert_books_agree(scene, 1)


def test_a_late_order_is_adopted_out_of_the_dlq_by_reconciliation(scene: Scene) -> None:
    from bot.reconcile import ReconcileConfig, Reconciler

    dead_letter_then_its_order_lands(scene)
    report = Reconciler(scene.r, KEYS, scene.client(), ReconcileConfig(settle=0)).run(apply=True)
    assert len(report.adopted) == 1 and report.adopted[0].get("removed_from_dlq")
    assert scene.r.xlen(KEYS.dlq) == 0 and report.position_drift == []
    assert_books_agree(scene, 1)


def test_the_listener_record_spares_the_lookup(scene: Scene) -> None:
    # an earlier delivery's order known from its events: the redelivery adopts it without a REST lookup
    worker = scene.worker()
    events = OrderEvents(scene.r, KEYS)
    client = scene.client()
    scene.send_source()
    run_until(worker, lambda: scene.journal(), what="the signal journaled")
    (entry,) = scene.journal()
    state = client.get_order_by_client_id(entry.client_order_id)
    assert state is not None
    from bot.order_events import OrderEvent

    events.record(OrderEvent.backfill(state.raw))
    assert worker.triage.lookup(entry.client_order_id) == events.state(entry.client_order_id)


def test_a_broker_slower_than_every_timeout_neither_wedges_nor_leaves_orders_unjournaled(scene: Scene) -> None:
    from bot.ops import collect_status, render_status

    scene.broker.set_faults(submit_delay=READ_TIMEOUT + 5.0)  # every POST lands after the client gave up
    worker = scene.worker(resolve_after=120.0)
    signals = 3
    for _ in range(signals):
        scene.send_source()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: scene.r.hlen(KEYS.unresolved) >= 1, 60, "an unknown outcome")
        shown = render_status(collect_status(scene.settings))
        assert "UNRESOLVED" in shown  # status says what is wrong
        # the orders land meanwhile: each is found by a lookup and journaled; nothing waits forever
        wait_for(lambda: len(scene.journal()) == signals, 120, "every signal journaled while the broker is slow")
        scene.broker.set_faults(submit_delay=0)
    finally:
        stop.set()
        thread.join(30)
    assert all(e.outcome == "filled" for e in scene.journal())
    assert len(scene.broker_orders()) == signals  # the same client_order_id sent again never made a second
    assert scene.r.hlen(KEYS.unresolved) == 0
    assert_books_agree(scene, signals)
