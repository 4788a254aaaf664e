"""The price poller against the paper broker (in process, and one real server run) and
httpx.MockTransport for faults and bad data; the cache is a real Redis."""
from __future__ import annotations

import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner
from redis.backoff import NoBackoff
from redis.retry import Retry
from waiting import wait_for

from bot.alpaca.client import AlpacaClient
from bot.alpaca.models import OrderRequest, Snapshot
from bot.config import ConfigError, Settings
from bot.embedded_redis import EmbeddedRedis, free_port
from bot.keys import Keys
from bot.market import MarketCache, NoPrice, StalePrice, write_prices
from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY
from bot.paper.testing import PaperBrokerServer, paper_transport
from bot.poller import Poller, TickSchedule

KEYS = Keys("tb")
T0 = 1_800_000_000.0
BASE = "http://paper"
SYMBOLS_20 = ["NVDA", "AAPL", "MSFT", "AMZN", "GOOG", "META", "TSLA", "AMD", "INTC", "NFLX",
              "ORCL", "IBM", "CSCO", "ADBE", "CRM", "QCOM", "TXN", "AVGO", "PYPL", "UBER"]


class FakeTime:
    """Injected wall clock and monotonic clock; tests move them by hand."""

    def __init__(self, wall: float = T0, mono: float = 1000.0) -> None:
        self.wall = wall
        self.mono = mono

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def make_client(transport: httpx.BaseTransport) -> AlpacaClient:
    return AlpacaClient(api_key=DEMO_API_KEY, secret_key=DEMO_SECRET_KEY, base_url=BASE, data_url=BASE,
                        transport=transport, max_retries=0)


@pytest.fixture
def paper() -> Iterator[tuple[AlpacaClient, Any, Any]]:
    """(client, exchange, transport) over an in-process paper broker that is always open."""
    transport, exchange = paper_transport(always_open=True, seed=7)
    client = make_client(transport)
    try:
        yield client, exchange, transport
    finally:
        client.close()
        transport.close()


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


def make_poller(client: AlpacaClient, r: redis.Redis, clock: FakeTime, symbols=("NVDA", "AAPL"), **kw: Any) -> Poller:
    return Poller(client, r, KEYS, symbols, now=clock.now, monotonic=clock.monotonic, **kw)


def cache_at(r: redis.Redis, clock: FakeTime) -> MarketCache:
    return MarketCache(r, KEYS, max_price_age=5.0, now=clock.now)



# ---------------------------------------------------------------------- against the paper broker


def test_first_tick_fills_every_hash_and_the_next_refreshes_prices(r, paper, clock):
    client, exchange, _ = paper
    poller = make_poller(client, r, clock)
    assert poller.tick() is True
    cache = cache_at(r, clock)
    assert cache.missing(["NVDA", "AAPL"]) == []
    assert cache.wait_ready(["NVDA", "AAPL"], timeout=0) is True
    first = cache.price("NVDA")
    assert first.polled_at == T0 and first.bid is not None and first.ask is not None
    assert cache.account().cash == Decimal(100000)
    assert cache.positions() == {} and cache.positions_polled_at() == T0
    assert cache.clock().is_open is True

    exchange.set_price("NVDA", "123.45")
    clock.advance(1.0)
    assert poller.tick() is True
    second = cache.price("NVDA")
    assert second.polled_at == T0 + 1 > first.polled_at
    assert second.bid != first.bid and abs(second.mid - Decimal("123.45")) < Decimal("0.10")
    assert poller.ticks == 2 and poller.errors == 0


def test_one_market_data_request_per_tick_for_20_symbols(r, paper, clock):
    client, _, _ = paper
    poller = make_poller(client, r, clock, symbols=SYMBOLS_20, account_interval=5.0, clock_interval=30.0)
    poller.tick()
    first = poller.last_tick_requests  # snapshots + account + positions + clock
    per_tick = []
    for _ in range(3):
        clock.advance(1.0)
        poller.tick()
        per_tick.append(poller.last_tick_requests)
    clock.advance(2.0)  # 5 s since the first account poll: account and positions are due again
    poller.tick()
    print(f"\nrequests per tick, 20 symbols: first tick {first}, then {per_tick}, account tick "
          f"{poller.last_tick_requests}")
    assert first == 4
    assert per_tick == [1, 1, 1]
    assert poller.last_tick_requests == 3
    assert all(cache_at(r, clock).price(s).bid is not None for s in SYMBOLS_20)


def test_positions_vanish_when_closed_after_a_refresh_request(r, paper, clock):
    client, _, _ = paper
    poller = make_poller(client, r, clock, account_interval=60.0)
    poller.tick()
    cache = cache_at(r, clock)
    assert cache.position("NVDA") is None

    bought = client.submit_order(OrderRequest(symbol="NVDA", side="buy", qty=Decimal(2), client_order_id="t-buy"))
    wait_for(lambda: client.get_order(bought.id).status == "filled")
    cache.request_refresh()
    clock.advance(1.0)
    poller.tick()  # account not due for 60 s: only the request makes it refresh
    held = cache.position("NVDA")
    assert held is not None and held.qty == Decimal(2)
    assert cache.account().cash < Decimal(100000)

    sold = client.submit_order(OrderRequest(symbol="NVDA", side="sell", qty=Decimal(2), client_order_id="t-sell"))
    wait_for(lambda: client.get_order(sold.id).status == "filled")
    clock.advance(1.0)
    poller.tick()
    assert cache.position("NVDA") is not None  # no request, not due: still the cached view
    cache.request_refresh()
    poller.tick()
    assert cache.position("NVDA") is None
    assert cache.positions() == {}
    assert "NVDA" not in r.hkeys(KEYS.positions)
    assert not r.exists(KEYS.refresh_request)
    assert poller.refreshes == 2


def test_refresh_requests_are_served_between_ticks(r, paper):
    client, _, _ = paper
    # prices every 30 s, account every 60 s: only refresh requests can explain more account polls
    poller = Poller(client, r, KEYS, ["NVDA"], interval=30.0, account_interval=60.0, refresh_min_interval=0.3)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        cache = MarketCache(r, KEYS)
        cache.wait_ready(["NVDA"], timeout=30)
        first = cache.positions_polled_at()
        for n in (1, 2):  # the second ask comes right after a refresh: held until the interval allows
            client.submit_order(OrderRequest(symbol="NVDA", side="buy", qty=Decimal(1), client_order_id=f"t-{n}"))
            wait_for(lambda n=n: client.get_position("NVDA").qty == n)
            cache.request_refresh()
            wait_for(lambda n=n: cache.position("NVDA") is not None and cache.position("NVDA").qty == n)
            # the poller thread counts a refresh after its positions reached Redis: await the count too
            wait_for(lambda n=n: poller.refreshes >= n, what=f"refresh {n} to be counted")
        assert cache.positions_polled_at() > first
        assert poller.refreshes == 2 and poller.ticks == 1
        assert not r.exists(KEYS.refresh_request)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


class RecordingTransport(httpx.BaseTransport):
    """Passes through, recording the path of every request."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return self.inner.handle_request(request)

    def refresh_requests(self) -> list[str]:
        return [path for path in self.paths if path in ("/v2/account", "/v2/positions")]


def test_asks_within_the_min_interval_coalesce_into_one_more_refresh(r, paper, clock):
    _, exchange, inner = paper
    recording = RecordingTransport(inner)
    client = make_client(recording)
    try:
        poller = make_poller(client, r, clock, account_interval=60.0, refresh_min_interval=1.0)
        poller.tick()  # the first tick refreshes on its own (account due at once)
        clock.advance(5.0)
        cache = cache_at(r, clock)
        recording.paths.clear()
        served = []
        for _ in range(5):  # a fill and its ask every 0.125 s: five asks within 0.5 s
            exchange.submit({"symbol": "NVDA", "side": "buy", "type": "market", "time_in_force": "day", "qty": "1"})
            cache.request_refresh()
            served.append(poller.serve_refresh())
            clock.advance(0.125)
        assert served == [True, False, False, False, False]  # the first at once, the rest held
        assert recording.refresh_requests() == ["/v2/account", "/v2/positions"]
        assert cache.position("NVDA").qty == 1  # the held asks' fills are not reflected yet ...
        assert poller.serve_refresh() is False  # 0.625 s after the refresh: still held
        clock.advance(0.375)  # 1.0 s after it: the merged asks get one refresh
        assert poller.serve_refresh() is True
        assert cache.position("NVDA").qty == 5  # ... and now are, all of them
        assert recording.refresh_requests() == ["/v2/account", "/v2/positions"] * 2  # 2 refreshes for 5 asks, not 5
        assert poller.refreshes == 2 and not r.exists(KEYS.refresh_request)
        clock.advance(5.0)
        assert poller.serve_refresh() is False  # nothing pending: nothing sent
        assert len(recording.refresh_requests()) == 4
    finally:
        client.close()


@pytest.mark.parametrize("min_interval, refreshes", [(0.0, 5), (1.0, 2)])
def test_five_quick_asks_cost_five_refreshes_at_min_interval_0_and_two_at_1(r, paper, clock, min_interval, refreshes):
    _, _, inner = paper
    recording = RecordingTransport(inner)
    client = make_client(recording)
    try:
        poller = make_poller(client, r, clock, account_interval=60.0, refresh_min_interval=min_interval)
        poller.tick()
        clock.advance(5.0)
        recording.paths.clear()
        for _ in range(5):
            cache_at(r, clock).request_refresh()
            poller.serve_refresh()
            clock.advance(0.1)
        clock.advance(1.0)
        poller.serve_refresh()  # the held ask, if any
        assert poller.refreshes == refreshes and len(recording.refresh_requests()) == 2 * refreshes
    finally:
        client.close()


def test_a_held_ask_is_served_by_the_tick_once_the_interval_allows(r, paper, clock):
    client, _, _ = paper
    poller = make_poller(client, r, clock, account_interval=60.0, refresh_min_interval=1.5)
    poller.tick()  # refreshes account and positions at once (first tick)
    cache_at(r, clock).request_refresh()
    clock.advance(1.0)
    poller.tick()
    assert poller.last_tick_requests == 1 and poller.refreshes == 0  # prices only: the ask is held
    assert not r.exists(KEYS.refresh_request)  # taken by the tick: pending in the poller, not lost
    clock.advance(1.0)
    poller.tick()
    assert poller.last_tick_requests == 3 and poller.refreshes == 1  # prices + account + positions


def test_a_failed_refresh_between_ticks_is_left_to_the_next_tick(r, paper, clock):
    _, _, inner = paper
    flaky = FlakyTransport(inner)
    client = make_client(flaky)
    try:
        poller = make_poller(client, r, clock, account_interval=60.0, refresh_min_interval=1.0)
        poller.tick()
        clock.advance(5.0)
        cache_at(r, clock).request_refresh()
        flaky.failures = 1
        assert poller.serve_refresh() is False and flaky.refused == 1 and poller.refreshes == 0
        clock.advance(2.0)
        sent = client.request_count
        assert poller.serve_refresh() is False  # not retried between ticks: the tick's backoff decides
        assert client.request_count == sent and flaky.refused == 1
        assert poller.tick() is True and poller.refreshes == 1  # still pending: the tick serves it
    finally:
        client.close()


def test_min_interval_must_not_be_negative(r, paper):
    client, _, _ = paper
    with pytest.raises(ValueError, match="refresh_min_interval"):
        Poller(client, r, KEYS, ["NVDA"], refresh_min_interval=-1)


def test_stale_and_absent_prices_are_detected(r, paper, clock):
    client, _, _ = paper
    make_poller(client, r, clock).tick()
    assert cache_at(r, clock).price("NVDA").age == 0
    clock.advance(5.5)  # the poller stopped ticking
    with pytest.raises(StalePrice, match=r"5\.5s old"):
        cache_at(r, clock).price("NVDA")
    with pytest.raises(NoPrice):
        cache_at(r, clock).price("MSFT")


# ---------------------------------------------------------------------- faults


class FlakyTransport(httpx.BaseTransport):
    """Raises ConnectError for the next ``failures`` requests, then passes through."""

    def __init__(self, inner: httpx.BaseTransport, failures: int = 0) -> None:
        self.inner = inner
        self.failures = failures
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.failures > 0:
            self.failures -= 1
            self.refused += 1
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)


def test_broker_down_for_a_while_then_back(r, paper, clock, caplog):
    _, exchange, inner = paper
    flaky = FlakyTransport(inner)
    client = make_client(flaky)
    try:
        poller = make_poller(client, r, clock, max_backoff=4.0)
        assert poller.tick() is True
        cache = cache_at(r, clock)
        before = cache.price("NVDA")

        flaky.failures = 1000
        delays = []
        for _ in range(5):
            clock.advance(1.5)
            assert poller.tick() is False  # survives, never raises
            delays.append(poller.backoff_delay())
        assert poller.errors >= 5 and poller.consecutive_failures == 5
        assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]  # capped exponential
        kept = cache_at(r, clock)
        assert r.hget(KEYS.prices("NVDA"), "bid") == str(before.bid)  # last values kept ...
        with pytest.raises(StalePrice):  # ... and their age shows
            kept.price("NVDA")
        assert "BrokerUnavailable" in (poller.last_error or "")

        flaky.failures = 0
        exchange.set_price("NVDA", "150")
        clock.advance(1.0)
        with caplog.at_level(logging.INFO, logger="bot.poller"):
            assert poller.tick() is True
        assert poller.consecutive_failures == 0
        assert "recovered after 5 failed tick(s)" in caplog.text
        resumed = cache_at(r, clock).price("NVDA")
        assert resumed.polled_at == clock.wall and abs(resumed.mid - Decimal(150)) < Decimal("0.10")
    finally:
        client.close()


def test_a_refresh_request_that_fails_stays_pending(r, paper, clock):
    _, _, inner = paper
    flaky = FlakyTransport(inner)
    client = make_client(flaky)
    try:
        poller = make_poller(client, r, clock, account_interval=60.0)
        poller.tick()
        first = cache_at(r, clock).positions_polled_at()
        cache_at(r, clock).request_refresh()
        flaky.failures = 2  # the snapshots and the account request of the next tick
        clock.advance(1.0)
        assert poller.tick() is False and poller.refreshes == 0
        assert cache_at(r, clock).positions_polled_at() == first
        clock.advance(1.0)
        assert poller.tick() is True  # account not due for 60 s: served because still pending
        assert poller.refreshes == 1 and cache_at(r, clock).positions_polled_at() == clock.wall
        clock.advance(1.0)
        poller.tick()
        assert poller.last_tick_requests == 1  # served once, not again
    finally:
        client.close()


def test_run_loop_survives_an_outage_and_resumes(r, paper):
    _, _, inner = paper
    flaky = FlakyTransport(inner, failures=6)
    client = make_client(flaky)
    poller = Poller(client, r, KEYS, ["NVDA"], interval=0.02, account_interval=0.05, clock_interval=0.05,
                    max_backoff=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        MarketCache(r, KEYS).wait_ready(["NVDA"], timeout=30)
        wait_for(lambda: poller.consecutive_failures == 0)
    finally:
        stop.set()
        thread.join(timeout=30)
        client.close()
    assert not thread.is_alive()
    assert flaky.refused == 6 and poller.errors >= 1


def test_redis_outage_is_survived_and_recovered(paper, clock, tmp_path):
    client, _, _ = paper
    server = EmbeddedRedis(data_dir=tmp_path, port=free_port(), appendonly=False)
    server.start()
    # no client-side retries: each failed command fails fast (the loop is what must cope)
    conn = redis.Redis.from_url(server.url, decode_responses=True, socket_connect_timeout=0.3, socket_timeout=0.3,
                                retry=Retry(NoBackoff(), 0))
    try:
        poller = make_poller(client, conn, clock)
        assert poller.tick() is True
        server.process.send_signal(signal.SIGSTOP)  # a hung Redis; its port stays ours
        clock.advance(1.0)
        assert poller.tick() is False  # never raises
        assert poller.errors >= 2 and "TimeoutError" in (poller.last_error or "")
        poller.monotonic = time.monotonic  # the between-ticks wait survives too (a short real wait)
        poller.wait_until(time.monotonic() + 0.05, threading.Event())
        poller.monotonic = clock.monotonic
        server.process.send_signal(signal.SIGCONT)
        clock.advance(1.0)
        assert poller.tick() is True
        assert float(conn.hget(KEYS.prices("NVDA"), "polled_at")) == clock.wall
    finally:
        server.process.send_signal(signal.SIGCONT)
        conn.close()
        server.stop()


def scripted_broker(snapshots: dict[str, Any], on_request: Callable[[httpx.Request], None] = lambda _: None):
    account = {"id": "a", "status": "ACTIVE", "currency": "USD", "cash": "10", "buying_power": "10", "equity": "10"}
    clock = {"timestamp": "2026-06-24T10:00:00-04:00", "is_open": True, "next_open": "2026-06-25T09:30:00-04:00",
             "next_close": "2026-06-24T16:00:00-04:00"}
    routes = {"/v2/stocks/snapshots": snapshots, "/v2/account": account, "/v2/positions": [], "/v2/clock": clock}

    def handle(request: httpx.Request) -> httpx.Response:
        on_request(request)
        return httpx.Response(200, json=routes[request.url.path])
    return httpx.MockTransport(handle)


def quote(bp: float, ap: float, p: float | None = 100.0) -> dict[str, Any]:
    data: dict[str, Any] = {"latestQuote": {"t": "2026-06-24T14:00:00Z", "bp": bp, "bs": 1, "ap": ap, "as": 2}}
    if p is not None:
        data["latestTrade"] = {"t": "2026-06-24T14:00:00Z", "p": p, "s": 5}
    return data


def test_bad_market_data_is_skipped_not_zeroed(r, clock, caplog):
    write_prices(r, KEYS, {}, T0)  # nothing yet
    good = {"NVDA": quote(100.1, 100.2), "AAPL": quote(50.0, 50.1)}
    client = make_client(scripted_broker(good))
    make_poller(client, r, clock).tick()
    client.close()
    # next: NVDA quoted 0/0 (no active book), AAPL missing, MSFT half quoted
    bad = {"NVDA": quote(0, 0), "MSFT": quote(0, 300.5, p=None)}
    client = make_client(scripted_broker(bad))
    poller = make_poller(client, r, clock, symbols=("NVDA", "AAPL", "MSFT"))
    clock.advance(1.0)
    with caplog.at_level(logging.WARNING, logger="bot.poller"):
        poller.tick()
        poller.tick()
    client.close()
    nvda = r.hgetall(KEYS.prices("NVDA"))
    assert nvda["bid"] == "100.1" and nvda["ask"] == "100.2" and float(nvda["polled_at"]) == T0
    assert r.hget(KEYS.prices("AAPL"), "bid") == "50.0"
    msft = r.hgetall(KEYS.prices("MSFT"))
    assert msft["ask"] == "300.5" and "bid" not in msft and "last" not in msft
    assert caplog.text.count("price of NVDA not written") == 1  # warned once, not every tick
    assert "price of AAPL not written (the cached one ages): missing" in caplog.text


def test_as_of_is_the_send_time_and_older_polls_never_overwrite(r, clock):
    # the request takes 2 s: as_of must be when it was sent, polled_at when it came back
    def slow(request: httpx.Request) -> None:
        clock.advance(2.0)
    client = make_client(scripted_broker({"NVDA": quote(10.0, 10.1)}, on_request=slow))
    poller = make_poller(client, r, clock, symbols=("NVDA",))
    poller.poll_prices()
    stored = r.hgetall(KEYS.prices("NVDA"))
    assert float(stored["as_of"]) == T0 and float(stored["polled_at"]) == T0 + 2

    # another (newer) poll sent at T0+10 already landed; this poller's poll was sent at T0+2
    newer = {"NVDA": quote(11.0, 11.1)}
    write_prices(r, KEYS, {"NVDA": Snapshot.from_json("NVDA", newer["NVDA"])}, T0 + 10.5, as_of=T0 + 10)
    poller.poll_prices()
    client.close()
    assert r.hget(KEYS.prices("NVDA"), "bid") == "11.0"


# ---------------------------------------------------------------------- the schedule


def test_schedule_has_no_drift_and_skips_missed_slots():
    schedule = TickSchedule(start=100.0, interval=1.0)
    assert schedule.deadline == 100.0
    assert schedule.advance(100.3) == 0 and schedule.deadline == 101.0  # on time
    assert schedule.advance(101.9) == 0 and schedule.deadline == 102.0  # a slow tick still on time
    assert schedule.advance(104.5) == 2 and schedule.deadline == 105.0  # overran: 103 and 104 skipped
    schedule.postpone(108.2)  # backoff keeps the grid
    assert schedule.deadline == 109.0
    schedule.postpone(100.0)  # never moves back
    assert schedule.deadline == 109.0


def test_overrun_tick_is_counted_and_logged(r, clock, caplog):
    stop = threading.Event()

    def slow_then_stop(request: httpx.Request) -> None:
        if request.url.path == "/v2/stocks/snapshots":
            clock.advance(2.5)  # the tick takes 2.5 intervals
            stop.set()  # one tick is enough
    client = make_client(scripted_broker({"NVDA": quote(10.0, 10.1)}, on_request=slow_then_stop))
    poller = make_poller(client, r, clock, symbols=("NVDA",))
    with caplog.at_level(logging.WARNING, logger="bot.poller"):
        poller.run(stop)
    client.close()
    assert poller.ticks == 1 and poller.overruns == 1
    assert "tick took 2.500s, longer than the 1.000s interval: skipping 2 missed tick(s)" in caplog.text


# ---------------------------------------------------------------------- the command


def test_poller_command_help():
    from bot.cli import cli

    result = CliRunner().invoke(cli, ["poller", "--help"])
    assert result.exit_code == 0, result.output
    for flag in ("--redis-url", "--symbols", "--prefix", "--interval", "--account-interval", "--clock-interval",
                 "--refresh-min-interval", "--alpaca-base-url", "--alpaca-data-url"):
        assert flag in result.output
    negative = CliRunner().invoke(cli, ["poller", "--refresh-min-interval", "-1"])
    assert negative.exit_code == 2 and "--refresh-min-interval" in negative.output


def test_poller_command_credentials():
    local = Settings.from_env({"ALPACA_BASE_URL": "http://127.0.0.1:9"})
    assert local.with_demo_credentials("to poll").alpaca_api_key == DEMO_API_KEY
    with pytest.raises(ConfigError, match=r"ALPACA_API_KEY.* required to poll"):
        Settings.from_env({}).with_demo_credentials("to poll")


def test_the_poller_client_takes_its_tokens_from_the_fleet_wide_bucket(r, paper):
    from processes.price_poller import POLLER_MAX_RETRIES, poller_client

    _, _, transport = paper
    settings = Settings.from_env({"ALPACA_BASE_URL": BASE, "TRADEBOT_PREFIX": "tb"}).with_demo_credentials()
    with poller_client(settings, r, threading.Event(), transport=transport) as client:
        assert client.max_retries == POLLER_MAX_RETRIES
        client.get_snapshots(["NVDA"])
        client.get_clock()
    # one token out of each shared bucket: the workers' limiter sees the poller's requests
    assert float(r.hget(KEYS.ratelimit("data"), "tokens")) < 10
    assert float(r.hget(KEYS.ratelimit("trading"), "tokens")) < 10


def test_a_stop_request_ends_the_tick_between_its_calls(r, paper, clock):
    client, _, _ = paper
    stop = threading.Event()

    class StopsDuringPrices:
        """SIGTERM arrives while the prices request is in flight."""

        request_count = 0

        def get_snapshots(self, symbols):
            stop.set()
            self.request_count += 1
            return client.get_snapshots(symbols)

        def __getattr__(self, name):  # account, positions, clock: must not be called any more
            raise AssertionError(f"{name} called after the stop request")

    poller = make_poller(StopsDuringPrices(), r, clock, stop_event=stop)
    assert poller.tick() is True
    assert poller.last_tick_requests == 1 and poller.errors == 0
    # the answer in hand is still written; account, positions and clock wait for the next start
    assert cache_at(r, clock).missing(["NVDA", "AAPL"]) == [KEYS.account, KEYS.positions, KEYS.clock]


def test_poller_process_fills_the_cache_and_stops_on_sigterm(r, redis_url):
    with PaperBrokerServer(always_open=True, seed=5) as broker:
        env = {**os.environ, "REDIS_URL": redis_url, "TRADEBOT_SYMBOLS": "NVDA,AAPL", "TRADEBOT_PREFIX": "tb",
               "ALPACA_BASE_URL": broker.base_url}
        for name in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "ALPACA_DATA_URL"):
            env.pop(name, None)  # no key pair: the demo pair of the local paper broker
        process = subprocess.Popen([sys.executable, "-m", "bot.cli", "poller", "--interval", "0.2",
                                    "--refresh-min-interval", "0.5"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # a new process: interpreter start, imports and a first poll, on a machine that may be busy
            assert MarketCache(r, KEYS).wait_ready(["NVDA", "AAPL"], timeout=60) is True
            # the clock is the tick's last request, written after what wait_ready waits for
            assert wait_for(lambda: r.hget(KEYS.clock, "is_open"), what="the poller to write the clock") == "1"
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, stderr
    assert "SIGTERM received, stopping" in stderr
    assert DEMO_SECRET_KEY not in stderr


# ---------------------------------------------------------------------- measurement (printed, not asserted)


def test_measure_requests_per_tick_and_price_age_against_a_real_server(r):
    with PaperBrokerServer(always_open=True, seed=3) as broker:
        client = AlpacaClient(api_key=broker.api_key, secret_key=broker.secret_key, base_url=broker.base_url,
                              data_url=broker.base_url, max_retries=0)
        poller = Poller(client, r, KEYS, SYMBOLS_20, interval=1.0)
        stop = threading.Event()
        thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
        requests: list[int] = []
        ages: list[float] = []
        thread.start()
        try:
            cache = MarketCache(r, KEYS)
            cache.wait_ready(SYMBOLS_20, timeout=30)
            started = time.monotonic()
            seen_ticks = poller.ticks
            while time.monotonic() - started < 2.05:
                ages.append(max(cache.price(s).age for s in SYMBOLS_20))
                if poller.ticks != seen_ticks:
                    seen_ticks = poller.ticks
                    requests.append(poller.last_tick_requests)
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(timeout=30)
            client.close()
        assert not thread.is_alive()
        data_requests = broker.stats()["by_group"].get("data")
    print(f"\nreal server, 20 symbols, 1 s interval: {poller.ticks} ticks, requests per tick after the first "
          f"{requests}, data requests in total {data_requests}, price age mean {statistics.mean(ages):.3f}s "
          f"max {max(ages):.3f}s over {len(ages)} samples, overruns {poller.overruns}, errors {poller.errors}")
    assert poller.errors == 0 and ages
