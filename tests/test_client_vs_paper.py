"""AlpacaClient against the project's paper broker: over real HTTP on a free loopback port, and
in-process through its sync transport. Checks that both sides speak the same protocol."""
from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from bot.alpaca.client import AlpacaClient
from bot.alpaca.errors import InsufficientFunds, InvalidOrder, NotFound, Unauthorized
from bot.alpaca.models import OrderRequest
from bot.paper.testing import PaperBrokerServer, paper_transport

CASH = Decimal("100000")
SYMBOLS = ("NVDA", "AAPL", "MSFT", "AMD")


@pytest.fixture(scope="module")
def server() -> Iterator[PaperBrokerServer]:
    with PaperBrokerServer(always_open=True, seed=11, cash=CASH) as broker:
        yield broker


@pytest.fixture
def broker(server: PaperBrokerServer) -> PaperBrokerServer:
    server.reset()
    server.set_faults(fault_500=0, fault_429=0, fault_hang=0)
    return server


@pytest.fixture
def client(broker: PaperBrokerServer) -> Iterator[AlpacaClient]:
    with AlpacaClient(api_key=broker.api_key, secret_key=broker.secret_key, base_url=broker.base_url,
                      data_url=broker.base_url, timeout=5.0, max_retries=1, sleep=lambda s: None) as c:
        yield c


def market_buy(coid: str, qty: str = "2", symbol: str = "NVDA") -> OrderRequest:
    return OrderRequest(symbol=symbol, side="buy", client_order_id=coid, qty=Decimal(qty), type="market",
                        time_in_force="ioc")


def resting_limit_buy(coid: str, price: str) -> OrderRequest:
    return OrderRequest(symbol="NVDA", side="buy", client_order_id=coid, qty=Decimal(1), type="limit",
                        time_in_force="day", limit_price=Decimal(price))


# ---------------------------------------------------------------------------- real HTTP


def test_account_positions_clock_asset(client):
    account = client.get_account()
    assert account.cash == CASH and account.status == "ACTIVE" and account.buying_power >= CASH
    assert client.list_positions() == []
    assert client.get_position("NVDA") is None
    clock = client.get_clock()
    assert clock.is_open is True and clock.timestamp.tzinfo is not None
    asset = client.get_asset("NVDA")
    assert asset.symbol == "NVDA" and asset.tradable
    assert client.rate_limit_remaining is not None  # the broker sends X-RateLimit-* headers


def test_snapshots_for_several_symbols_in_one_request(client):
    snaps = client.get_snapshots(SYMBOLS)
    assert client.request_count == 1
    assert sorted(snaps) == sorted(SYMBOLS)
    for snap in snaps.values():
        assert snap.bid is not None and snap.ask is not None and snap.bid <= snap.ask
        assert isinstance(snap.bid, Decimal) and snap.quote_time is not None and snap.last is not None


def test_market_ioc_buy_fills_and_reads_back(broker, client):
    broker.set_price("NVDA", "100.00")
    order = client.submit_order(market_buy("paper-1"))
    assert order.status == "filled" and order.filled_qty == Decimal(2) and order.filled_avg_price is not None
    assert client.get_order(order.id) == order
    assert client.get_order_by_client_id("paper-1") == order
    [position] = client.list_positions()
    assert position.symbol == "NVDA" and position.qty == Decimal(2)
    assert client.get_position("NVDA") == position
    assert client.get_account().cash == CASH - (order.filled_avg_price * 2).quantize(Decimal("0.01"))


def test_duplicate_client_order_id_returns_the_existing_order(broker, client):
    first = client.submit_order(market_buy("paper-dup"))
    again = client.submit_order(market_buy("paper-dup"))
    assert again.id == first.id and again.client_order_id == "paper-dup"
    assert [o.id for o in client.list_orders(status="all")] == [first.id]  # no second order
    assert client.get_position("NVDA").qty == Decimal(2)


def test_list_orders_filters(broker, client):
    client.submit_order(market_buy("paper-a", symbol="NVDA"))
    client.submit_order(market_buy("paper-b", symbol="AAPL"))
    assert {o.client_order_id for o in client.list_orders()} == {"paper-a", "paper-b"}
    assert [o.client_order_id for o in client.list_orders(symbols=["AAPL"])] == ["paper-b"]
    assert client.list_orders(status="open") == []  # both IOC orders are done


def test_cancel_of_a_resting_limit_day_order(broker, client):
    broker.set_price("NVDA", "100.00")
    order = client.submit_order(resting_limit_buy("paper-rest", "50.00"))
    assert not order.is_terminal
    assert [o.id for o in client.list_orders(status="open")] == [order.id]
    client.cancel_order(order.id)
    canceled = client.get_order(order.id)
    assert canceled.status == "canceled" and canceled.canceled_at is not None
    client.cancel_order(order.id)  # no longer cancelable: not an error


def test_refusals_are_typed(broker, client):
    broker.set_price("NVDA", "100.00")
    with pytest.raises(InsufficientFunds):
        client.submit_order(market_buy("paper-big", qty="5000"))
    with pytest.raises(InvalidOrder):
        client.submit_order(OrderRequest(symbol="NVDA", side="buy", client_order_id="paper-bad", qty=Decimal(1),
                                         notional=Decimal(10)))
    with pytest.raises(NotFound):
        client.get_order("00000000-0000-0000-0000-000000000000")
    assert client.get_order_by_client_id("never-sent") is None
    assert client.list_orders() == []


def test_wrong_keys_are_unauthorized(broker):
    with AlpacaClient(api_key="PKWRONG", secret_key="wrong-secret", base_url=broker.base_url,
                      data_url=broker.base_url, max_retries=0) as wrong:
        with pytest.raises(Unauthorized):
            wrong.get_account()
        with pytest.raises(Unauthorized):
            wrong.get_snapshots(["NVDA"])


# ---------------------------------------------------------------------------- in-process transport


@pytest.fixture
def in_process() -> Iterator[tuple[AlpacaClient, Any, Any]]:
    from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY

    transport, exchange = paper_transport(always_open=True, seed=5, cash=CASH)
    client = AlpacaClient(api_key=DEMO_API_KEY, secret_key=DEMO_SECRET_KEY, base_url="http://paper",
                          data_url="http://paper", transport=transport, timeout=5.0, sleep=lambda s: None)
    try:
        yield client, transport, exchange
    finally:
        client.close()
        transport.close()


def test_in_process_same_calls(in_process):
    client, _, exchange = in_process
    exchange.set_price("NVDA", "50.00")
    assert client.get_account().cash == CASH
    assert client.get_clock().is_open
    assert sorted(client.get_snapshots(SYMBOLS)) == sorted(SYMBOLS)
    order = client.submit_order(market_buy("inproc-1", qty="3"))
    assert order.status == "filled" and order.filled_qty == Decimal(3)
    assert client.get_order_by_client_id("inproc-1") == order
    assert client.submit_order(market_buy("inproc-1", qty="3")).id == order.id
    assert [p.qty for p in client.list_positions()] == [Decimal(3)]


class LoseFirstPostResponse(httpx.BaseTransport):
    """Lets the first POST reach the broker, then acts as if the answer never came back."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.posts += 1
            if self.posts == 1:
                raise httpx.ReadTimeout("answer lost on the way back", request=request)
        return response


def test_in_process_lost_submit_response_places_exactly_one_order(in_process):
    client, transport, _exchange = in_process
    from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY

    lossy = LoseFirstPostResponse(transport)
    with AlpacaClient(api_key=DEMO_API_KEY, secret_key=DEMO_SECRET_KEY, base_url="http://paper",
                      data_url="http://paper", transport=lossy, sleep=lambda s: None) as flaky:
        order = flaky.submit_order(market_buy("inproc-lost"))
    assert lossy.posts == 1  # resolved by the lookup, not by sending it again
    assert order.client_order_id == "inproc-lost" and order.status == "filled"
    assert [o.id for o in client.list_orders()] == [order.id]


def test_in_process_rate_limit_is_honoured_and_reported():
    from bot.alpaca.errors import RateLimited
    from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY

    transport, _ = paper_transport(always_open=True, seed=5, enforce_rate_limit=True, rate_limit=2)
    # the quota is per wall-clock minute: pinned, so that no minute boundary refills it mid-test
    pinned = time.time()
    transport.app.state.broker.rates._wall = lambda: pinned
    waits: list[float] = []
    with AlpacaClient(api_key=DEMO_API_KEY, secret_key=DEMO_SECRET_KEY, base_url="http://paper",
                      data_url="http://paper", transport=transport, max_retries=2, sleep=waits.append,
                      jitter=lambda spread: 0.0) as client:
        try:
            client.get_clock()
            client.get_clock()
            assert client.rate_limit_remaining == 0
            with pytest.raises(RateLimited) as caught:
                client.get_clock()  # the window does not refill while the injected sleep returns at once
        finally:
            transport.close()
    assert client.request_count == 5 and len(waits) == 2
    assert caught.value.retry_after is not None
    # the waits are the broker's Retry-After (jitter 0, capped at max_wait); it counts down to the window's reset
    expected = min(client.max_wait, caught.value.retry_after)
    assert all(0 < wait <= client.max_wait and abs(wait - expected) <= 1 for wait in waits), waits
