"""Order events in Redis and the order-updates listener: a real Redis, a real paper broker (its
trade_updates stream over a real socket), the listener in a thread or as a `tradebot listener`
process, and workers that follow orders by the listener's events."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
import redis

from bot.alpaca.client import AlpacaClient
from bot.config import Settings
from bot.journal import read_journal
from bot.keys import Keys
from bot.listener import Listener, ListenerConfig, stream_url
from bot.order_events import OrderEvent, OrderEvents
from bot.paper.testing import PaperBrokerServer
from bot.poller import Poller
from bot.signals import Signal
from bot.worker import Worker, WorkerConfig
from waiting import wait_for

KEYS = Keys("tbl")
SYMBOL = "NVDA"


def order_json(coid: str, status: str, updated: str, filled: str = "0", oid: str = "o-1") -> dict[str, Any]:
    return {"id": oid, "client_order_id": coid, "symbol": SYMBOL, "side": "buy", "status": status,
            "qty": "2", "filled_qty": filled, "filled_avg_price": None if filled == "0" else "100.01",
            "created_at": "2026-12-01T15:00:00.000000Z", "updated_at": updated, "type": "market",
            "time_in_force": "day"}


def event(name: str, status: str, updated: str, filled: str = "0", **extra: Any) -> OrderEvent:
    data = {"event": name, "timestamp": updated, "order": order_json("c1", status, updated, filled), **extra}
    parsed = OrderEvent.from_message(data)
    assert parsed is not None
    return parsed


# ---------------------------------------------------------------------- order events in Redis


def test_record_moves_an_orders_state_forward_only(r: redis.Redis) -> None:
    events = OrderEvents(r, KEYS)
    fill = event("fill", "filled", "2026-12-01T15:00:01.000000Z", "2", price="100.01", qty="2",
                 position_qty="2", execution_id="x-1")
    new = event("new", "new", "2026-12-01T15:00:00.100000Z")
    assert events.record(fill) == (True, True)
    # late and out of order: its stream entry is kept (every event is), the state stays filled
    assert events.record(new) == (True, False)
    state = events.state("c1")
    assert state is not None and state.status == "filled" and state.filled_qty == 2
    assert [e["event"] for _id, e in r.xrange(KEYS.order_events)] == ["fill", "new"]
    assert r.xrange(KEYS.order_events)[0][1]["execution_id"] == "x-1"


def test_a_duplicate_event_changes_nothing_and_a_backfill_only_news(r: redis.Redis) -> None:
    events = OrderEvents(r, KEYS)
    new = event("new", "new", "2026-12-01T15:00:00.100000Z")
    assert events.record(new) == (True, True)
    assert events.record(new) == (False, False)  # the stream sent it twice
    same = OrderEvent.backfill(order_json("c1", "new", "2026-12-01T15:00:00.100000Z"))
    assert events.record(same) == (False, False)  # REST says what the stream said: nothing new
    filled = OrderEvent.backfill(order_json("c1", "filled", "2026-12-01T15:00:02.000000Z", "2"))
    assert events.record(filled) == (True, True)  # the fill event was missed; the back-fill finds it
    assert events.state("c1").status == "filled"  # type: ignore[union-attr]
    assert [e["source"] for _id, e in r.xrange(KEYS.order_events)] == ["stream", "backfill"]


def test_same_instant_events_follow_the_orders_life(r: redis.Redis) -> None:
    # the paper broker reports accepted -> new within one microsecond: the later stage wins the tie
    events = OrderEvents(r, KEYS)
    at = "2026-12-01T15:00:00.100000Z"
    events.record(event("accepted", "accepted", at))
    events.record(event("new", "new", at))
    assert events.state("c1").status == "new"  # type: ignore[union-attr]
    events.record(event("accepted", "accepted", at + "x"))  # a different identity, the same instant
    assert events.state("c1").status == "new"  # type: ignore[union-attr]


def test_a_moved_state_rings_the_orders_doorbell(r: redis.Redis) -> None:
    events = OrderEvents(r, KEYS)
    assert events.wait("c1", 0.05) is False
    events.record(event("new", "new", "2026-12-01T15:00:00.100000Z"))
    assert events.wait("c1", 5) is True
    assert events.wait("c1", 0.05) is False  # one ring per move
    events.record(event("new", "new", "2026-12-01T15:00:00.100000Z"))  # a duplicate rings nothing
    assert events.wait("c1", 0.05) is False


def test_the_event_stream_is_trimmed_by_age(r: redis.Redis) -> None:
    events = OrderEvents(r, KEYS, keep_events=60)
    an_hour_ago = int((time.time() - 3600) * 1000)
    for n in range(300):  # entries of an hour ago (their ids are their times)
        r.xadd(KEYS.order_events, {"event": "old"}, id=f"{an_hour_ago}-{n}")
    for n in range(5):
        events.record(event("fill", "filled", f"2026-12-01T16:00:00.{n:06d}Z", "2", execution_id=str(n)))
    kept = [e["event"] for _id, e in r.xrange(KEYS.order_events)]
    # trimmed with ~ (whole nodes at a time): most of the old ones go, every new one stays
    assert kept.count("fill") == 5 and kept.count("old") < 100, kept.count("old")


def test_listener_health_says_what_is_wrong(r: redis.Redis) -> None:
    clock = [1000.0]
    events = OrderEvents(r, KEYS, stale_after=15, now=lambda: clock[0])
    assert not events.listener_health().live
    assert "no order-updates listener" in events.listener_health().why
    events.mark_listener("L1", "live", heard=True)
    assert events.listener_health().live
    clock[0] += 20
    health = events.listener_health()
    assert not health.live and "last heard from 20s ago" in health.why
    events.mark_listener("L1", "down", error="ConnectionRefusedError")
    assert "down: ConnectionRefusedError" in events.listener_health().why


def test_stream_url_follows_the_base_url() -> None:
    assert stream_url("https://paper-api.alpaca.markets") == "wss://paper-api.alpaca.markets/stream"
    assert stream_url("http://127.0.0.1:9999/") == "ws://127.0.0.1:9999/stream"


# ---------------------------------------------------------------------- the listener


@pytest.fixture
def broker() -> Iterator[PaperBrokerServer]:
    with PaperBrokerServer(always_open=True, seed=3, symbols=(SYMBOL,), rate_limit=100000) as server:
        server.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
        yield server


def rest_client(broker: PaperBrokerServer) -> AlpacaClient:
    return AlpacaClient(api_key=broker.api_key, secret_key=broker.secret_key, base_url=broker.base_url,
                        data_url=broker.base_url, sleep=lambda _s: None)


@contextmanager
def running_listener(broker: PaperBrokerServer, r: redis.Redis, holder: str = "L1",
                     **config: Any) -> Iterator[Listener]:
    options: dict[str, Any] = dict(holder=holder, probe_after=0.5, probe_timeout=1.0, backoff_min=0.05,
                                   backoff_max=0.5, lease_ttl=3.0)
    options.update(config)
    client = rest_client(broker)
    listener = Listener(url=broker.stream_url, api_key=broker.api_key, secret_key=broker.secret_key, r=r,
                        events=OrderEvents(r, KEYS), client=client, config=ListenerConfig(**options))
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), name=f"listener-{holder}", daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(30)
        client.close()
        assert not thread.is_alive(), "the listener did not stop"


def place(broker: PaperBrokerServer, coid: str, qty: str = "2", **extra: Any) -> dict[str, Any]:
    body = {"symbol": SYMBOL, "qty": qty, "side": "buy", "type": "market", "time_in_force": "day",
            "client_order_id": coid, **extra}
    with broker.client() as http:
        response = http.post("/v2/orders", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def live(r: redis.Redis) -> bool:
    return OrderEvents(r, KEYS).listener_health().live


def status_of(r: redis.Redis, coid: str) -> str | None:
    state = OrderEvents(r, KEYS).state(coid)
    return state.status if state is not None else None


def test_listener_records_an_orders_events_as_they_happen(broker: PaperBrokerServer, r: redis.Redis) -> None:
    broker.set_fill_delay(0.3)
    with running_listener(broker, r):
        wait_for(lambda: live(r), what="the listener live")
        place(broker, "c-live")
        wait_for(lambda: status_of(r, "c-live") == "filled", what="the fill recorded")
        entries = [e for _id, e in r.xrange(KEYS.order_events) if e["client_order_id"] == "c-live"]
        assert [e["event"] for e in entries] == ["accepted", "new", "fill"]
        fill = entries[-1]
        assert fill["qty"] == "2" and fill["position_qty"] == "2" and fill["price"] == "100.01"
        assert fill["execution_id"] and fill["source"] == "stream"


def test_listener_backfills_what_it_missed_while_down(broker: PaperBrokerServer, r: redis.Redis) -> None:
    place(broker, "c-before")  # no listener yet: only the back-fill can know it
    with running_listener(broker, r):
        wait_for(lambda: status_of(r, "c-before") == "filled", what="the back-filled order")
    entry = [e for _id, e in r.xrange(KEYS.order_events) if e["client_order_id"] == "c-before"]
    assert [e["source"] for e in entry] == ["backfill"]


def test_a_dropped_fill_is_found_by_the_backfill_after_a_reconnect(broker: PaperBrokerServer,
                                                                   r: redis.Redis) -> None:
    with running_listener(broker, r) as listener:
        wait_for(lambda: live(r), what="the listener live")
        broker.set_stream(drop_events=["fill"])
        place(broker, "c-dropped")
        wait_for(lambda: status_of(r, "c-dropped") in ("new", "accepted"), what="the order's first events")
        assert broker.set_stream()["dropped"] >= 1
        sessions = listener.sessions
        broker.set_stream(drop_events=[], disconnect=True)
        wait_for(lambda: listener.sessions > sessions and live(r), what="a new session")
        wait_for(lambda: status_of(r, "c-dropped") == "filled", what="the fill back-filled")


def test_duplicated_events_are_recorded_once(broker: PaperBrokerServer, r: redis.Redis) -> None:
    broker.set_stream(duplicate=True)
    with running_listener(broker, r):
        wait_for(lambda: live(r), what="the listener live")
        place(broker, "c-dup")
        wait_for(lambda: status_of(r, "c-dup") == "filled", what="the fill")
        wait_for(lambda: broker.set_stream()["duplicated"] >= 3, what="each event sent twice")
    names = [e["event"] for _id, e in r.xrange(KEYS.order_events) if e["client_order_id"] == "c-dup"]
    assert names == ["accepted", "new", "fill"]


def test_a_silent_stream_is_detected_and_reconnected(broker: PaperBrokerServer, r: redis.Redis) -> None:
    with running_listener(broker, r) as listener:
        wait_for(lambda: live(r), what="the listener live")
        sessions = listener.sessions
        broker.set_stream(silent=True)  # connected, answers nothing: not even the listener's probe
        wait_for(lambda: not live(r), what="the listener to notice the silence")
        assert "StreamSilent" in (r.hget(KEYS.listener, "error") or "")
        place(broker, "c-silent")  # happens while nobody hears
        broker.set_stream(silent=False)
        wait_for(lambda: listener.sessions > sessions and live(r), what="a new session")
        wait_for(lambda: status_of(r, "c-silent") == "filled", what="the order missed in silence, back-filled")


def test_bad_keys_keep_the_listener_down_and_say_so(broker: PaperBrokerServer, r: redis.Redis) -> None:
    client = rest_client(broker)
    listener = Listener(url=broker.stream_url, api_key=broker.api_key, secret_key="wrong-secret", r=r,
                        events=OrderEvents(r, KEYS), client=client,
                        config=ListenerConfig(holder="Lbad", backoff_min=0.05, backoff_max=0.2))
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: "did not authorize" in (r.hget(KEYS.listener, "error") or ""), what="the refusal")
        assert not live(r)
        assert "wrong-secret" not in json.dumps(r.hgetall(KEYS.listener))
    finally:
        stop.set()
        thread.join(30)
        client.close()


def test_two_listeners_one_writes_the_other_stands_by(broker: PaperBrokerServer, r: redis.Redis) -> None:
    with running_listener(broker, r, "L1") as first:
        wait_for(lambda: live(r), what="the first listener live")
        with running_listener(broker, r, "L2") as second:
            wait_for(lambda: r.get(KEYS.listener_lease) == "L1", what="L1 holding the lease")
            place(broker, "c-two")
            wait_for(lambda: status_of(r, "c-two") == "filled", what="the fill")
            assert second.sessions == 0 and second.recorded == 0
            names = [e["event"] for _id, e in r.xrange(KEYS.order_events) if e["client_order_id"] == "c-two"]
            assert names == ["accepted", "new", "fill"]  # one writer: each event once
            first_sessions = first.sessions
        assert first.sessions == first_sessions


def test_the_standby_takes_over_when_the_active_listener_stops(broker: PaperBrokerServer, r: redis.Redis) -> None:
    with running_listener(broker, r, "L2") as standby:
        with running_listener(broker, r, "L1"):
            wait_for(lambda: r.get(KEYS.listener_lease) in ("L1", "L2"), what="a lease holder")
        # whoever held it, L2 holds it once L1 is gone
        wait_for(lambda: r.get(KEYS.listener_lease) == "L2" and r.hget(KEYS.listener, "holder") == "L2"
                 and live(r), what="L2 active")
        place(broker, "c-takeover")
        wait_for(lambda: status_of(r, "c-takeover") == "filled", what="the fill through L2")
        assert standby.sessions >= 1


def listener_process(broker: PaperBrokerServer, redis_url: str, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": redis_url, "TRADEBOT_PREFIX": KEYS.prefix, "ALPACA_API_KEY": broker.api_key,
           "ALPACA_SECRET_KEY": broker.secret_key, "ALPACA_BASE_URL": broker.base_url, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "listener", "--name", name, "--lease-ttl", "2",
                             "--probe-after", "1", "--probe-timeout", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_kill_9_of_the_active_listener_process_hands_over_to_the_standby(broker: PaperBrokerServer, r: redis.Redis,
                                                                         redis_url: str) -> None:
    active = listener_process(broker, redis_url, "P1")
    try:
        wait_for(lambda: r.get(KEYS.listener_lease) == "P1" and live(r), 60, "P1 live")
        with running_listener(broker, r, "L2", lease_ttl=2.0) as standby:
            broker.set_fill_delay(1.0)
            place(broker, "c-kill")  # its fill comes after P1 dies
            active.send_signal(signal.SIGKILL)
            active.wait(30)
            wait_for(lambda: r.get(KEYS.listener_lease) == "L2" and live(r), 60, "L2 taking over")
            wait_for(lambda: status_of(r, "c-kill") == "filled", what="the fill recorded by L2")
            assert standby.sessions >= 1
        restarted = listener_process(broker, redis_url, "P1")  # supervisord's restart
        try:
            wait_for(lambda: r.get(KEYS.listener_lease) == "P1" and live(r), 60, "P1 back")
        finally:
            restarted.terminate()
            assert restarted.wait(30) == 0
            out = restarted.stdout.read().decode() if restarted.stdout else ""
            assert broker.secret_key not in out
    finally:
        if active.poll() is None:
            active.kill()
            active.wait(30)


# ---------------------------------------------------------------------- workers follow by events


def test_workers_follow_by_events_with_no_rest_read(broker: PaperBrokerServer, r: redis.Redis,
                                                    rb: redis.Redis, redis_url: str) -> None:
    broker.set_fill_delay(1.0)
    settings = Settings(redis_url=redis_url, prefix=KEYS.prefix, symbols=(SYMBOL,), alpaca_base_url=broker.base_url,
                        alpaca_data_url=broker.base_url, rate_limit_per_minute=60000)
    poller_client = rest_client(broker)
    Poller(poller_client, r, KEYS, [SYMBOL], interval=1, account_interval=1e-9, clock_interval=1e-9).tick()
    worker_client = rest_client(broker)
    worker = Worker(settings, WorkerConfig(consumer="w1", block_ms=20, strategy="fixed", fixed_qty=Decimal(1)),
                    r=r, rb=rb, client=worker_client)
    try:
        with running_listener(broker, r):
            wait_for(lambda: live(r), what="the listener live")
            worker.setup()
            before = broker.stats()["by_route"]
            for n in range(3):
                now = time.time()
                r.xadd(KEYS.signals, Signal(SYMBOL, "buy", None, "nvda", f"{int(now * 1000)}-{n}", now).to_fields())
            wait_for(lambda: len(read_journal(r, KEYS)) == 3 or worker.step() and False, 60, "3 journal entries")
        after = broker.stats()["by_route"]
        entries = read_journal(r, KEYS)
        assert [e.outcome for e in entries] == ["filled"] * 3
        sent = {route: after.get(route, 0) - before.get(route, 0) for route in after}
        assert sent.get("POST /v2/orders") == 3
        assert sent.get("GET /v2/orders/{order_id}", 0) == 0, sent  # followed by events: no REST read
        assert worker.follower.requests == 0
    finally:
        worker.close()
        worker_client.close()
        poller_client.close()


def test_workers_poll_while_the_listener_is_down(broker: PaperBrokerServer, r: redis.Redis, rb: redis.Redis,
                                                 redis_url: str) -> None:
    broker.set_fill_delay(0.3)
    settings = Settings(redis_url=redis_url, prefix=KEYS.prefix, symbols=(SYMBOL,), alpaca_base_url=broker.base_url,
                        alpaca_data_url=broker.base_url, rate_limit_per_minute=60000)
    client = rest_client(broker)
    Poller(client, r, KEYS, [SYMBOL], interval=1, account_interval=1e-9, clock_interval=1e-9).tick()
    worker = Worker(settings, WorkerConfig(consumer="w1", block_ms=20, strategy="fixed", fixed_qty=Decimal(1)),
                    r=r, rb=rb, client=client)
    try:
        worker.setup()
        now = time.time()
        r.xadd(KEYS.signals, Signal(SYMBOL, "buy", None, "nvda", f"{int(now * 1000)}-0", now).to_fields())
        wait_for(lambda: read_journal(r, KEYS) or worker.step() and False, 60, "the journal entry")
        assert [e.outcome for e in read_journal(r, KEYS)] == ["filled"]
        assert worker.follower.requests >= 1  # no listener: polled
    finally:
        worker.close()
        client.close()
