"""Reconciliation against a real paper broker and a real Redis: orders of ours never journaled are
adopted (out of the DLQ too), orders of others are external, positions are checked against the
books, stale reservations released; `tradebot reconcile` prints it and exits 1 on drift."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from bot.alpaca.client import AlpacaClient
from bot.cli import cli
from bot.journal import JournalEntry, read_journal, record_outcome
from bot.keys import Keys
from bot.ledger import Ledger
from bot.paper.testing import PaperBrokerServer
from bot.reconcile import ReconcileConfig, Reconciler, signal_of
from bot.signals import client_order_id
from bot.streams import dead_letter

KEYS = Keys("tbr")
SYMBOL = "NVDA"
NOW_CONFIG = ReconcileConfig(settle=0.0)  # judge every final order at once (no worker runs here)


@pytest.fixture
def broker() -> Iterator[PaperBrokerServer]:
    with PaperBrokerServer(always_open=True, seed=9, symbols=(SYMBOL,), rate_limit=100000) as server:
        server.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
        yield server


@pytest.fixture
def client(broker: PaperBrokerServer) -> Iterator[AlpacaClient]:
    with AlpacaClient(api_key=broker.api_key, secret_key=broker.secret_key, base_url=broker.base_url,
                      data_url=broker.base_url, sleep=lambda _s: None) as built:
        yield built


def place(broker: PaperBrokerServer, coid: str, side: str = "buy", qty: str = "3") -> dict[str, Any]:
    with broker.client() as http:
        response = http.post("/v2/orders", json={"symbol": SYMBOL, "qty": qty, "side": side, "type": "market",
                                                 "time_in_force": "day", "client_order_id": coid})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "filled"
    return response.json()


def journal(r: redis.Redis, coid: str, side: str, filled: str) -> None:
    stream, source_id = signal_of(coid) or ("", "")
    entry = JournalEntry(source_stream=stream, source_id=source_id, ticker=SYMBOL, side=side, outcome="filled",
                         client_order_id=coid, order_id="o", status="filled", qty=Decimal(filled),
                         filled_qty=Decimal(filled), filled_avg_price=Decimal("100"))
    r.xgroup_create(KEYS.signals, KEYS.workers_group, id="0", mkstream=True) if not r.exists(KEYS.signals) else None
    assert record_outcome(r, KEYS, entry, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id="0-1")


BASE_MS = int(time.time() * 1000) - 10_000


def coid(n: int) -> str:
    return client_order_id("nvda", f"{BASE_MS + n}-0")


def test_signal_of_reads_back_what_client_order_id_makes() -> None:
    assert signal_of(client_order_id("nvda", "1719410000000-3")) == ("nvda", "1719410000000-3")
    assert signal_of(client_order_id("my-stream.x", "5-0")) == ("my-stream.x", "5-0")
    assert signal_of(client_order_id("s" * 60, "5-0")) is None  # the hashed form names no stream
    assert signal_of("manual-order-1") is None and signal_of("tb-garbage") is None


def test_an_order_of_ours_without_a_journal_entry_is_adopted_once(broker: PaperBrokerServer, client: AlpacaClient,
                                                                 r: redis.Redis) -> None:
    lost = coid(1)  # its journal entry went with Redis's last second
    kept = coid(2)
    place(broker, lost)
    place(broker, kept)
    journal(r, kept, "buy", "3")
    reconciler = Reconciler(r, KEYS, client, NOW_CONFIG)
    report = reconciler.run(apply=False)
    assert [row["client_order_id"] for row in report.adopted] == [lost]
    assert report.position_drift == []  # a report counts what it would adopt
    assert len(read_journal(r, KEYS)) == 1  # a report changes nothing
    report = reconciler.run(apply=True, since=time.time() - 3600)
    assert [row["client_order_id"] for row in report.adopted] == [lost]
    entries = read_journal(r, KEYS)
    adopted = [e for e in entries if e.client_order_id == lost]
    assert len(adopted) == 1 and adopted[0].adopted and adopted[0].outcome == "filled"
    assert adopted[0].filled_qty == 3 and adopted[0].consumer == "reconcile"
    assert r.exists(KEYS.done(*signal_of(lost)))  # type: ignore[misc]
    assert r.exists(KEYS.reconciled)
    again = reconciler.run(apply=True, since=time.time() - 3600)
    assert again.adopted == [] and again.position_drift == [] and len(read_journal(r, KEYS)) == 2


def test_an_order_that_landed_after_its_signal_was_dead_lettered_leaves_the_dlq(
        broker: PaperBrokerServer, client: AlpacaClient, r: redis.Redis) -> None:
    late = coid(3)
    stream, source_id = signal_of(late)  # type: ignore[misc]
    r.xgroup_create(KEYS.signals, KEYS.workers_group, id="0", mkstream=True)
    assert dead_letter(r, KEYS, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id="0-1",
                       source_stream=stream, source_id=source_id, reason="delivered 6 times",
                       deliveries=6, raw_fields={"ticker": SYMBOL, "side": "buy"})
    assert r.xlen(KEYS.dlq) == 1
    place(broker, late)  # the delayed POST lands
    report = Reconciler(r, KEYS, client, NOW_CONFIG).run(apply=True)
    assert report.adopted[0]["removed_from_dlq"]
    assert r.xlen(KEYS.dlq) == 0
    assert [e.client_order_id for e in read_journal(r, KEYS)] == [late]  # one record of the signal: the journal


def test_orders_of_others_are_external_and_count_in_positions(broker: PaperBrokerServer, client: AlpacaClient,
                                                             r: redis.Redis) -> None:
    place(broker, "dashboard-1", qty="5")
    reconciler = Reconciler(r, KEYS, client, NOW_CONFIG)
    report = reconciler.run(apply=True)
    assert [row["client_order_id"] for row in report.external] == ["dashboard-1"]
    assert report.adopted == [] and report.position_drift == []
    assert json.loads(r.hget(KEYS.external, report.external[0]["order_id"]))["filled_qty"] == "5"
    assert reconciler.run(apply=True, since=time.time() - 3600).position_drift == []


def test_positions_the_books_cannot_explain_are_drift(broker: PaperBrokerServer, client: AlpacaClient,
                                                      r: redis.Redis) -> None:
    journal(r, coid(4), "buy", "7")  # the journal says 7 bought; the broker never saw it
    place(broker, coid(5), qty="2")
    journal(r, coid(5), "buy", "2")
    reconciler = Reconciler(r, KEYS, client, NOW_CONFIG)
    (drift,) = reconciler.run(apply=True).position_drift
    assert drift == {"symbol": SYMBOL, "broker": "2", "expected": "9", "journaled": "9", "external": "0",
                     "baseline": "0"}
    assert json.loads(r.hget(KEYS.reconcile, "drift"))[0]["symbol"] == SYMBOL  # for status and alerts
    cached = json.loads(r.hget(KEYS.positions, SYMBOL))
    assert Decimal(cached["qty"]) == 2  # the cache corrected from the broker


def test_a_baseline_explains_positions_from_before_the_fleet(broker: PaperBrokerServer, client: AlpacaClient,
                                                            r: redis.Redis) -> None:
    place(broker, coid(6), qty="4")  # bought before the fleet kept a journal
    reconciler = Reconciler(r, KEYS, client, ReconcileConfig(settle=3600))  # judges no order
    assert reconciler.run(apply=False).position_drift != []
    assert reconciler.set_baseline() == {SYMBOL: "4"}
    assert reconciler.run(apply=False).position_drift == []


def test_young_orders_are_left_to_the_workers(broker: PaperBrokerServer, client: AlpacaClient,
                                              r: redis.Redis) -> None:
    place(broker, coid(7))
    report = Reconciler(r, KEYS, client, ReconcileConfig(settle=3600)).run(apply=True)
    assert report.adopted == [] and read_journal(r, KEYS) == []


def test_stale_reservations_are_released(broker: PaperBrokerServer, client: AlpacaClient, r: redis.Redis) -> None:
    reconciler = Reconciler(r, KEYS, client, NOW_CONFIG)
    reconciler.run(apply=True)  # fills the account cache the ledger reserves against
    clock = [time.time() - 900]
    ledger = Ledger(r, KEYS, now=lambda: clock[0])
    ledger.reserve_buy(coid(8), SYMBOL, Decimal(100), qty=Decimal(1))  # a crash before the POST, 15 min ago
    fresh = coid(9)
    clock[0] = time.time()
    ledger.reserve_buy(fresh, SYMBOL, Decimal(100), qty=Decimal(1))  # a worker's order in flight
    report = reconciler.run(apply=True)
    assert report.released == [coid(8)]
    assert not Ledger(r, KEYS).exists(coid(8)) and Ledger(r, KEYS).exists(fresh)


def test_the_reconcile_command(broker: PaperBrokerServer, r: redis.Redis, redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "TRADEBOT_PREFIX": KEYS.prefix, "ALPACA_BASE_URL": broker.base_url,
           "ALPACA_API_KEY": broker.api_key, "ALPACA_SECRET_KEY": broker.secret_key}
    place(broker, coid(10))
    runner = CliRunner()
    result = runner.invoke(cli, ["reconcile", "--json", "--settle", "0"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {"adopted", "external", "position_drift", "released"} <= set(report)
    assert len(report["adopted"]) == 1 and not report["applied"]
    result = runner.invoke(cli, ["reconcile", "--apply", "--settle", "0"], env=env)
    assert result.exit_code == 0 and "adopted: buy NVDA" in result.output
    journal(r, coid(11), "sell", "1")  # a sell the broker never saw: drift
    result = runner.invoke(cli, ["reconcile", "--settle", "0"], env=env)
    assert result.exit_code == 1 and "DRIFT NVDA" in result.output
    assert broker.secret_key not in result.output
    bad = runner.invoke(cli, ["reconcile", "--since", "-5"], env=env)
    assert bad.exit_code == 2
