"""Worker processes for real: `python -m bot.cli worker` subprocesses against a real paper broker
(uvicorn on a free port) and a real Redis, with the poller filling the cache from a thread.

Crash and stop are real signals: SIGKILL between submit and ack, SIGTERM while an order is open.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest
import redis

from bot.alpaca.client import AlpacaClient
from bot.journal import read_journal
from bot.keys import Keys
from bot.paper.testing import PaperBrokerServer
from bot.poller import Poller
from bot.signals import Signal
from bot.streams import consumers
from bot.worker import client_order_id
from waiting import wait_for

SYMBOL = "NVDA"
PREFIX = "tbp"
KEYS = Keys(PREFIX)
REPO = Path(__file__).resolve().parent.parent



@dataclass
class Fleet:
    broker: PaperBrokerServer
    redis_url: str
    r: redis.Redis
    logs: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def spawn(self, consumer: str, *flags: str) -> subprocess.Popen:
        env = {**os.environ, "TRADEBOT_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
        for name in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "REDIS_URL", "TRADEBOT_PREFIX"):
            env.pop(name, None)  # without a key pair the paper broker's demo pair is used
        command = [sys.executable, "-m", "bot.cli", "worker", "--redis-url", self.redis_url, "--prefix", PREFIX,
                   "--symbols", SYMBOL, "--consumer", consumer, "--alpaca-base-url", self.broker.base_url,
                   "--block-ms", "200", "--strategy", "fixed", "--fixed-qty", "3", *flags]
        log = open(self.logs / f"{consumer}.log", "wb")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        log.close()
        self.procs[consumer] = proc
        return proc

    def log_of(self, consumer: str) -> str:
        return (self.logs / f"{consumer}.log").read_text(errors="replace")

    def signal(self, side: str = "buy") -> str:
        now = time.time()
        source_id = f"{int(now * 1000)}-0"
        self.r.xadd(KEYS.signals, Signal(SYMBOL, side, None, "nvda", source_id, now).to_fields())
        return source_id

    def broker_orders(self) -> int:
        return sum(self.broker.exchange.order_counts().values())

    def pending(self) -> int:
        try:
            return int(self.r.xpending(KEYS.signals, KEYS.workers_group)["pending"])
        except redis.ResponseError:  # no group yet
            return 0


@pytest.fixture
def fleet(r: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    # the broker's own rate window is lifted: the poller thread polls far more often than Alpaca allows
    with PaperBrokerServer(always_open=True, seed=3, cash="100000", symbols=(SYMBOL,), rate_limit=100000) as broker:
        broker.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
        client = AlpacaClient(api_key=broker.api_key, secret_key=broker.secret_key, base_url=broker.base_url,
                              data_url=broker.base_url)
        poller = Poller(client, r, KEYS, [SYMBOL], interval=0.2, account_interval=0.2, clock_interval=1.0)
        stop = threading.Event()
        thread = threading.Thread(target=poller.run, args=(stop,), name="poller", daemon=True)
        thread.start()
        fleet = Fleet(broker, redis_url, r, tmp_path)
        try:
            yield fleet
        finally:
            for proc in fleet.procs.values():
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
            stop.set()
            thread.join(timeout=10)
            client.close()


def test_worker_killed_between_submit_and_ack_is_finished_by_another_with_one_order(fleet: Fleet):
    fleet.broker.exchange.fill_delay = 4.0  # the order sits open at the broker
    first = fleet.spawn("doomed", "--claim-idle", "30", "--order-timeout", "30")
    source_id = fleet.signal("buy")
    wait_for(lambda: fleet.broker_orders() == 1, 20, "the first worker's order at the broker")
    first.send_signal(signal.SIGKILL)  # after submit, before journal and ack
    first.wait(timeout=10)
    assert read_journal(fleet.r, KEYS) == [] and fleet.pending() == 1

    fleet.spawn("rescuer", "--claim-idle", "1", "--order-timeout", "30")
    wait_for(lambda: len(read_journal(fleet.r, KEYS)) == 1, 25, "the rescuer's journal entry")
    [entry] = read_journal(fleet.r, KEYS)
    coid = client_order_id("nvda", source_id)
    assert (entry.outcome, entry.consumer, entry.client_order_id, entry.deliveries) == ("filled", "rescuer", coid, 2)
    assert entry.filled_qty == Decimal(3)
    assert fleet.broker_orders() == 1  # the reclaimed signal found its order: no second one
    [order] = [o for o in fleet.broker.exchange.list_orders(_all_orders()) if o["client_order_id"] == coid]
    assert order["id"] == entry.order_id and order["status"] == "filled"
    wait_for(lambda: fleet.pending() == 0, 5, "the ack")
    assert "reclaimed" in fleet.log_of("rescuer") and "exists" in fleet.log_of("rescuer")


def test_sigterm_finishes_the_order_in_hand_then_leaves_the_group(fleet: Fleet):
    # the order sits open for 4 s (well inside the 15 s stop grace): the check and the SIGTERM below
    # must come while it is open, also when this process is slow to be scheduled
    fleet.broker.exchange.fill_delay = 4.0
    worker = fleet.spawn("graceful", "--claim-idle", "30", "--order-timeout", "30")
    fleet.signal("buy")
    wait_for(lambda: fleet.broker_orders() == 1, 20, "the worker's order at the broker")
    assert fleet.broker.exchange.order_counts() != {"filled": 1}  # still open when the stop comes
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, fleet.log_of("graceful")
    [entry] = read_journal(fleet.r, KEYS)
    assert (entry.outcome, entry.consumer) == ("filled", "graceful")
    assert fleet.pending() == 0
    assert "graceful" not in [c["name"] for c in consumers(fleet.r, KEYS.signals, KEYS.workers_group)]
    assert "SIGTERM received" in fleet.log_of("graceful")


@pytest.mark.slow
def test_sigterm_with_an_order_that_will_not_fill_ends_inside_stopwaitsecs(fleet: Fleet):
    fleet.broker.exchange.fill_delay = 120.0  # the order sits open; its own --order-timeout is 60 s
    worker = fleet.spawn("stuck", "--claim-idle", "30", "--order-timeout", "60")
    fleet.signal("buy")
    wait_for(lambda: fleet.broker_orders() == 1, 20, "the worker's order at the broker")
    worker.send_signal(signal.SIGTERM)
    # supervisord's stopwaitsecs=30 is the hard bound; the stop grace cancels the order at ~10 s
    assert worker.wait(timeout=28) == 0, fleet.log_of("stuck")
    [entry] = read_journal(fleet.r, KEYS)
    assert (entry.outcome, entry.reason) == ("canceled", "canceled unfilled: the worker was stopping")
    assert fleet.pending() == 0 and fleet.broker.exchange.order_counts() == {"canceled": 1}


def test_bad_flags_stop_the_worker_with_a_clear_message(redis_url: str):
    result = subprocess.run([sys.executable, "-m", "bot.cli", "worker", "--redis-url", redis_url, "--strategy",
                             "fixed", "--fixed-qty", "lots"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--fixed-qty 'lots' is not a number" in result.stderr


def _all_orders():
    from bot.paper.exchange import OrderQuery

    return OrderQuery(status="all", limit=500)


@pytest.mark.parametrize("flags, quote_age, grace", [
    ((), 7.0, 15.0),  # TRADEBOT_MAX_QUOTE_AGE from the environment; the default stop grace
    (("--max-quote-age", "9", "--stop-grace", "3"), 9.0, 3.0),  # flags win
])
def test_worker_command_passes_quote_age_and_stop_grace_to_the_worker(redis_url: str, monkeypatch, flags, quote_age,
                                                                        grace):
    from click.testing import CliRunner

    import processes.worker as command

    built: list = []

    class RecordingWorker:  # stands in for bot.worker.Worker: records what the command built, runs nothing
        def __init__(self, settings, config) -> None:
            built.append((settings, config))
            self.loop = types.SimpleNamespace(on_round=None)  # the command hangs its heartbeat here
            self.client = types.SimpleNamespace(requests_by_route=lambda: [])  # ... and reads its requests

        def run(self, stop) -> None:
            pass

    monkeypatch.setattr(command, "Worker", RecordingWorker)
    for name in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "REDIS_URL", "TRADEBOT_MAX_QUOTE_AGE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(command.main, ["--redis-url", redis_url, "--alpaca-base-url", "http://127.0.0.1:9",
                                               "--consumer", "w-cli", *flags], env={"TRADEBOT_MAX_QUOTE_AGE": "7"})
    assert result.exit_code == 0, result.output
    [(settings, config)] = built
    assert settings.max_quote_age == config.max_quote_age == quote_age
    assert config.stop_grace == grace and config.consumer == "w-cli"
