"""The paper broker speaks Alpaca's REST protocol: raw httpx against the in-process transport,
plus one real uvicorn server. Prices are pinned wherever a test depends on them."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from waiting import wait_for

from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY, PaperConfig, keys_from_env
from bot.paper.clock import NEW_YORK, MarketClock, regular_hours_state
from bot.paper.exchange import Exchange, PaperOrder
from bot.paper.faults import SettingError, parse_latency, parse_probabilities
from bot.paper.prices import PriceBook
from bot.paper.testing import PaperAdmin, PaperBrokerServer, SyncASGITransport, paper_client, paper_transport

T0 = datetime(2026, 3, 4, 15, 0, tzinfo=timezone.utc)  # Wednesday 10:00 ET


class FakeNow:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class Broker:
    def __init__(self, transport: Any, client: httpx.Client, exchange: Any) -> None:
        self.transport = transport
        self.client = client
        self.exchange = exchange
        self.admin = PaperAdmin(client)

    def order(self, **body: Any) -> httpx.Response:
        base = {"symbol": "AAPL", "side": "buy", "type": "market", "time_in_force": "ioc"}
        return self.client.post("/v2/orders", json={**base, **body})

    def pin(self, symbol: str = "AAPL", price: str = "100.00", spread: str = "0.02", **sizes: int) -> None:
        self.admin.set_price(symbol, price, spread=spread, **sizes)


@pytest.fixture
def make_broker() -> Iterator[Callable[..., Broker]]:
    clients: list[httpx.Client] = []

    def make(**options: Any) -> Broker:
        options.setdefault("seed", 42)
        transport, exchange = paper_transport(**options)
        client = paper_client(transport, timeout=10)
        clients.append(client)
        return Broker(transport, client, exchange)

    try:
        yield make
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker(always_open=True)


def error(response: httpx.Response) -> tuple[int, int | None, str]:
    body = response.json()
    return response.status_code, body.get("code"), body["message"]


# --- auth -------------------------------------------------------------------------------------
def test_auth_headers_required(broker: Broker) -> None:
    bare = httpx.Client(transport=broker.transport, base_url="http://paper")
    unauthorized = (401, 40110000, "request is not authorized")
    assert error(bare.get("/v2/account")) == unauthorized
    assert error(bare.get("/v2/account", headers={"APCA-API-KEY-ID": DEMO_API_KEY})) == unauthorized
    wrong = {"APCA-API-KEY-ID": DEMO_API_KEY, "APCA-API-SECRET-KEY": "nope"}
    assert error(bare.get("/v2/account", headers=wrong)) == unauthorized
    assert bare.get("/v2/stocks/snapshots?symbols=AAPL").status_code == 401
    right = {"APCA-API-KEY-ID": DEMO_API_KEY, "APCA-API-SECRET-KEY": DEMO_SECRET_KEY}
    response = bare.get("/v2/account", headers=right)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "200"
    assert int(response.headers["X-RateLimit-Reset"]) > time.time() - 1


def test_keys_from_env_prefers_the_alpaca_pair() -> None:
    assert keys_from_env({}) == (DEMO_API_KEY, DEMO_SECRET_KEY)
    assert keys_from_env({"ALPACA_API_KEY": "PKX", "ALPACA_SECRET_KEY": "sx"}) == ("PKX", "sx")
    with pytest.raises(ValueError, match="both"):
        keys_from_env({"ALPACA_API_KEY": "PKX"})


def test_custom_key_pair_replaces_the_demo_pair(make_broker: Callable[..., Broker]) -> None:
    b = make_broker(always_open=True, api_key="PKCUSTOM", secret_key="s3cret")
    assert b.client.get("/v2/account").status_code == 401  # demo pair no longer works
    ok = b.client.get("/v2/account", headers={"APCA-API-KEY-ID": "PKCUSTOM", "APCA-API-SECRET-KEY": "s3cret"})
    assert ok.status_code == 200


# --- account and simple fills -------------------------------------------------------------------------
def test_account_fields_are_decimal_strings(broker: Broker) -> None:
    account = broker.client.get("/v2/account").json()
    for name in ("cash", "buying_power", "equity", "last_equity", "portfolio_value", "long_market_value",
                 "multiplier", "regt_buying_power", "non_marginable_buying_power"):
        assert isinstance(account[name], str), name
        Decimal(account[name])
    assert account["cash"] == "100000" and account["status"] == "ACTIVE" and account["currency"] == "USD"
    assert account["trading_blocked"] is False


def test_market_ioc_buy_fills_at_ask_and_settles(broker: Broker) -> None:
    broker.pin(price="100.00", spread="0.02")  # bid 99.99, ask 100.01
    response = broker.order(qty="10", client_order_id="buy-1")
    assert response.status_code == 200
    order = response.json()
    assert order["status"] == "filled" and order["filled_qty"] == "10" and order["filled_avg_price"] == "100.01"
    assert order["qty"] == "10" and order["notional"] is None
    assert order["type"] == order["order_type"] == "market" and order["order_class"] == ""
    assert order["created_at"].endswith("Z") and "." in order["created_at"] and order["filled_at"]
    account = broker.client.get("/v2/account").json()
    assert Decimal(account["cash"]) == Decimal("100000") - Decimal("1000.10")
    position = broker.client.get("/v2/positions/AAPL").json()
    assert position["qty"] == "10" and position["qty_available"] == "10"
    assert Decimal(position["avg_entry_price"]) == Decimal("100.01") and position["side"] == "long"
    assert [p["symbol"] for p in broker.client.get("/v2/positions").json()] == ["AAPL"]


def test_market_sell_fills_at_bid_and_flat_position_disappears(broker: Broker) -> None:
    broker.pin(price="50.00", spread="0.02")
    assert broker.order(qty="4").json()["status"] == "filled"
    sold = broker.order(side="sell", qty="4").json()
    assert sold["status"] == "filled" and sold["filled_avg_price"] == "49.99"
    assert broker.client.get("/v2/positions").json() == []
    assert error(broker.client.get("/v2/positions/AAPL")) == (404, 40410000, "position does not exist")
    assert Decimal(broker.client.get("/v2/account").json()["cash"]) == Decimal("100000") - Decimal("0.08")


def test_ioc_larger_than_ask_size_fills_partially_and_ends_canceled(broker: Broker) -> None:
    broker.pin(price="100.00", spread="0.02", ask_size=100)
    order = broker.order(qty="150").json()
    assert order["status"] == "canceled"
    assert order["filled_qty"] == "100" and order["canceled_at"] is not None
    assert broker.client.get("/v2/positions/AAPL").json()["qty"] == "100"


# --- fractional, notional, validation --------------------------------------------------------------------
def test_fractional_ioc_is_rejected(broker: Broker) -> None:
    assert error(broker.order(qty="0.5")) == (422, 42210000, "fractional orders must be DAY orders")
    assert error(broker.order(notional="100")) == (422, 42210000, "fractional orders must be DAY orders")
    assert broker.exchange.order_counts() == {}


def test_fractional_day_order_is_accepted(broker: Broker) -> None:
    broker.pin(price="100.00", spread="0.02")
    order = broker.order(qty="0.5", time_in_force="day").json()
    assert order["status"] == "filled" and order["filled_qty"] == "0.5"
    assert broker.client.get("/v2/positions/AAPL").json()["qty"] == "0.5"


def test_notional_market_day_order(broker: Broker) -> None:
    broker.pin(price="100.00", spread="0.02")
    order = broker.order(notional="1000", time_in_force="day").json()
    assert order["status"] == "filled" and order["qty"] is None and order["notional"] == "1000"
    assert order["filled_qty"] == "9.999000099"  # 1000 / 100.01, rounded down to 9 places
    assert Decimal(broker.client.get("/v2/account").json()["cash"]) == Decimal("99000.00")


@pytest.mark.parametrize("body, message", [
    ({"qty": "1", "notional": "10", "time_in_force": "day"}, "qty and notional cannot both be specified"),
    ({}, "qty or notional is required"),
    ({"qty": "-1"}, "qty must be > 0"),
    ({"qty": "1", "type": "stop"}, "stop_price is required for stop orders"),
    ({"qty": "1", "type": "limit"}, "limit_price is required for limit orders"),
    ({"qty": "1", "type": "trailing_stop", "time_in_force": "gtc"},
     "trail_price or trail_percent is required for trailing_stop orders"),
    ({"qty": "1", "time_in_force": "forever"}, "invalid time_in_force: 'forever'"),
    ({"qty": "1", "side": "hold"}, "invalid side: 'hold'"),
    ({"qty": "abc"}, "invalid qty: 'abc' is not a number"),
    ({"qty": "1", "symbol": "NOT-A-TICKER"}, 'asset "NOT-A-TICKER" not found'),
    ({"qty": "1", "client_order_id": "x" * 129}, "client_order_id must be no more than 128 characters"),
    ({"qty": "1", "extended_hours": True}, 'only type="limit" is allowed for extended hours orders'),
])
def test_invalid_orders_get_422_and_create_nothing(broker: Broker, body: dict, message: str) -> None:
    assert error(broker.order(**body)) == (422, 40010001, message)
    assert broker.exchange.order_counts() == {}


def test_sub_penny_limit_and_bad_json(broker: Broker) -> None:
    assert error(broker.order(qty="1", type="limit", limit_price="10.001", time_in_force="day")) == \
        (422, 42210000, "sub-penny increment does not fulfill minimum pricing criteria")
    raw = broker.client.post("/v2/orders", content=b"{not json", headers={"content-type": "application/json"})
    assert error(raw) == (400, 40010000, "request body format is invalid")


def test_client_order_id_of_128_chars_is_fine(broker: Broker) -> None:
    assert broker.order(qty="1", client_order_id="c" * 128).status_code == 200


# --- buying power and shares ------------------------------------------------------------------------------
def test_insufficient_buying_power_counts_open_buy_holds(make_broker: Callable[..., Broker]) -> None:
    b = make_broker(always_open=True, cash="1000")
    b.pin(price="100.00", spread="0.02")
    status, code, message = error(b.order(qty="10"))  # 10 x 100.01 > 1000
    assert (status, code, message) == (403, 40310000, "insufficient buying power")
    resting = b.order(qty="9", type="limit", limit_price="90", time_in_force="gtc").json()
    assert resting["status"] == "new"  # holds 9 x 90 = 810
    assert b.client.get("/v2/account").json()["buying_power"] == "190"
    assert error(b.order(qty="2"))[0] == 403  # 200.02 > 190
    assert b.order(qty="1").json()["status"] == "filled"


def test_selling_more_than_available_is_refused(broker: Broker) -> None:
    broker.pin(price="20.00")
    broker.order(qty="3")
    refused = broker.order(side="sell", qty="5")
    assert error(refused) == (403, 40310000, "insufficient qty available for order (requested: 5, available: 3)")
    assert refused.json()["existing_qty"] == "3" and refused.json()["symbol"] == "AAPL"
    # an open sell holds shares: 2 of 3 held leaves 1 available
    broker.order(side="sell", qty="2", type="limit", limit_price="500", time_in_force="gtc")
    assert broker.client.get("/v2/positions/AAPL").json()["qty_available"] == "1"
    assert error(broker.order(side="sell", qty="2"))[2] == \
        "insufficient qty available for order (requested: 2, available: 1)"


# --- client_order_id, lookups, cancel ---------------------------------------------------------------------------
def test_duplicate_client_order_id_is_refused_even_after_cancel(broker: Broker) -> None:
    broker.pin(price="100.00")
    first = broker.order(qty="1", type="limit", limit_price="50", time_in_force="day", client_order_id="sig-1")
    assert first.json()["status"] == "new"
    assert broker.client.delete(f"/v2/orders/{first.json()['id']}").status_code == 204
    again = broker.order(qty="1", client_order_id="sig-1")
    assert error(again) == (422, 40010001, "client_order_id must be unique")
    assert broker.exchange.order_counts() == {"canceled": 1}


def test_lookup_by_client_order_id(broker: Broker) -> None:
    order = broker.order(qty="1", client_order_id="abc-1").json()
    found = broker.client.get("/v2/orders:by_client_order_id", params={"client_order_id": "abc-1"})
    assert found.status_code == 200 and found.json()["id"] == order["id"]
    assert broker.client.get(f"/v2/orders/{order['id']}").json()["client_order_id"] == "abc-1"
    missing = broker.client.get("/v2/orders:by_client_order_id", params={"client_order_id": "nope"})
    assert error(missing) == (404, 40410000, "order not found")
    generated = broker.order(qty="1").json()["client_order_id"]
    assert len(generated) == 36  # a UUID when the client sends none


def test_cancel_resting_limit_then_not_cancelable(broker: Broker) -> None:
    broker.pin(price="100.00")
    order = broker.order(qty="1", type="limit", limit_price="90", time_in_force="gtc").json()
    assert order["status"] == "new" and order["limit_price"] == "90"
    assert broker.client.delete(f"/v2/orders/{order['id']}").status_code == 204
    assert broker.client.get(f"/v2/orders/{order['id']}").json()["status"] == "canceled"
    assert error(broker.client.delete(f"/v2/orders/{order['id']}")) == \
        (422, 42210000, 'order is already in "canceled" state')
    unknown = "00000000-0000-4000-8000-000000000000"
    assert error(broker.client.delete(f"/v2/orders/{unknown}")) == (404, 40410000, "order not found")


def test_cancel_all_answers_207(broker: Broker) -> None:
    broker.pin(price="100.00")
    ids = {broker.order(qty="1", type="limit", limit_price=p, time_in_force="gtc").json()["id"] for p in ("90", "91")}
    response = broker.client.delete("/v2/orders")
    assert response.status_code == 207
    assert {item["id"] for item in response.json()} == ids
    assert all(item["status"] == 200 and item["body"]["status"] == "canceled" for item in response.json())


def test_resting_limit_fills_when_price_moves_through_it(broker: Broker) -> None:
    broker.pin(price="100.00", spread="0.02")
    order = broker.order(qty="2", type="limit", limit_price="95", time_in_force="gtc").json()
    assert order["status"] == "new"
    broker.pin(price="94.00", spread="0.02")
    filled = broker.client.get(f"/v2/orders/{order['id']}").json()
    assert filled["status"] == "filled" and filled["filled_avg_price"] == "94.01"  # at the ask, under the limit


def test_list_orders_filters(broker: Broker) -> None:
    broker.pin(price="100.00")
    broker.pin(symbol="MSFT", price="300.00")
    filled = broker.order(qty="1").json()
    resting = broker.order(qty="1", type="limit", limit_price="10", time_in_force="gtc").json()
    other = broker.order(symbol="MSFT", qty="1").json()
    ids = lambda params: [o["id"] for o in broker.client.get("/v2/orders", params=params).json()]  # noqa: E731
    assert ids({}) == [resting["id"]]  # default status=open
    assert ids({"status": "closed"}) == [other["id"], filled["id"]]  # newest first
    assert ids({"status": "all", "direction": "asc"}) == [filled["id"], resting["id"], other["id"]]
    assert ids({"status": "all", "limit": "1"}) == [other["id"]]
    assert ids({"status": "all", "symbols": "MSFT"}) == [other["id"]]
    assert ids({"status": "all", "after": resting["created_at"]}) == [other["id"]]
    assert error(broker.client.get("/v2/orders", params={"status": "weird"}))[0:2] == (422, 40010001)


# --- clock, closed market, fill delay, expiry ----------------------------------------------------------------
@pytest.mark.parametrize("local, is_open, next_open, next_close", [
    ("2026-03-04 10:00", True, "2026-03-05T09:30:00-05:00", "2026-03-04T16:00:00-05:00"),  # Wed, winter
    ("2026-03-04 08:00", False, "2026-03-04T09:30:00-05:00", "2026-03-04T16:00:00-05:00"),  # before open
    ("2026-03-04 16:00", False, "2026-03-05T09:30:00-05:00", "2026-03-05T16:00:00-05:00"),  # at the close
    ("2026-03-06 17:00", False, "2026-03-09T09:30:00-04:00", "2026-03-09T16:00:00-04:00"),  # Fri -> Mon, DST starts
    ("2026-07-11 12:00", False, "2026-07-13T09:30:00-04:00", "2026-07-13T16:00:00-04:00"),  # Saturday
    ("2026-07-10 15:59", True, "2026-07-13T09:30:00-04:00", "2026-07-10T16:00:00-04:00"),  # Friday, summer
])
def test_regular_hours_clock(local: str, is_open: bool, next_open: str, next_close: str) -> None:
    at = datetime.strptime(local, "%Y-%m-%d %H:%M").replace(tzinfo=NEW_YORK)
    state = regular_hours_state(at).to_json()
    assert (state["is_open"], state["next_open"], state["next_close"]) == (is_open, next_open, next_close)


def test_clock_endpoint_and_always_open(make_broker: Callable[..., Broker]) -> None:
    saturday = FakeNow(datetime(2026, 7, 11, 16, 0, tzinfo=timezone.utc))
    b = make_broker(now=saturday)
    clock = b.client.get("/v2/clock").json()
    assert clock["is_open"] is False and clock["timestamp"].endswith("-04:00")
    assert b.admin.set_clock(always_open=True)["always_open"] is True
    assert b.client.get("/v2/clock").json()["is_open"] is True
    # just before midnight the close must still be ahead, so a poller's cached clock stays open
    late = datetime(2026, 7, 12, 3, 59, 50, tzinfo=timezone.utc)  # 23:59:50 in New York
    state = MarketClock("open", lambda: late).state()
    assert state.is_open and state.next_close - late > timedelta(hours=23)
    assert MarketClock("open", saturday).is_open() and not MarketClock("closed", lambda: T0).is_open()


def test_market_order_waits_accepted_until_the_open(make_broker: Callable[..., Broker]) -> None:
    now = FakeNow(datetime(2026, 3, 4, 13, 0, tzinfo=timezone.utc))  # 08:00 ET
    b = make_broker(now=now)
    b.pin(price="100.00", spread="0.02")
    order = b.order(qty="3", time_in_force="day").json()
    assert order["status"] == "accepted" and order["expires_at"] == "2026-03-04T21:00:00.000000000Z"
    now.advance(90 * 60)  # 09:30 ET
    filled = b.client.get(f"/v2/orders/{order['id']}").json()
    assert filled["status"] == "filled" and filled["filled_avg_price"] == "100.01"


def test_unfilled_day_order_expires_after_the_close(make_broker: Callable[..., Broker]) -> None:
    now = FakeNow(T0)
    b = make_broker(now=now)
    b.pin(price="100.00")
    day = b.order(qty="1", type="limit", limit_price="50", time_in_force="day").json()
    gtc = b.order(qty="1", type="limit", limit_price="50", time_in_force="gtc").json()
    now.advance(7 * 3600)  # 17:00 ET
    assert b.client.get(f"/v2/orders/{day['id']}").json()["status"] == "expired"
    assert b.client.get(f"/v2/orders/{gtc['id']}").json()["status"] == "new"


def test_fill_delay_keeps_market_orders_new(make_broker: Callable[..., Broker]) -> None:
    now = FakeNow(T0)
    b = make_broker(now=now, fill_delay=2.0)
    order = b.order(qty="1").json()
    assert order["status"] == "new" and order["filled_qty"] == "0" and order["filled_avg_price"] is None
    now.advance(1.0)
    assert b.client.get(f"/v2/orders/{order['id']}").json()["status"] == "new"
    now.advance(1.5)
    assert b.client.get(f"/v2/orders/{order['id']}").json()["status"] == "filled"


# --- the open-orders index -------------------------------------------------------------------------------------
def open_index(exchange: Exchange) -> list[str]:
    return list(exchange._book.open_orders)


def non_terminal(exchange: Exchange) -> list[str]:
    """What the index must hold: every order not in a terminal status, oldest first."""
    return [o.id for o in sorted(exchange._book.orders.values(), key=lambda o: o.seq) if o.is_open]


def test_open_orders_index_holds_exactly_the_non_terminal_orders() -> None:
    now = FakeNow(datetime(2026, 3, 4, 13, 0, tzinfo=timezone.utc))  # 08:00 ET: closed until 09:30
    exchange = Exchange(PaperConfig(seed=9, cash=Decimal(10000), fill_delay=0.0, now=now))
    exchange.set_price("AAPL", "100.00", spread="0.02", ask_size=5)
    order = lambda **body: exchange.submit({"symbol": "AAPL", "side": "buy", "type": "market",  # noqa: E731
                                            "time_in_force": "day", **body})
    def check(step: str) -> None:
        assert open_index(exchange) == non_terminal(exchange), step

    waiting = order(qty="3")  # accepted: the market is closed
    day_limit = order(qty="1", type="limit", limit_price="50")  # rests, expires after today's close
    gtc_limit = order(qty="1", type="limit", limit_price="60", time_in_force="gtc")
    doomed = order(qty="1", type="limit", limit_price="70", time_in_force="gtc")
    check("queued before the open")
    exchange.cancel(doomed["id"])
    check("canceled while accepted")
    now.advance(90 * 60)  # 09:30 ET: the waiting market order fills on the next request
    assert exchange.get_order(waiting["id"])["status"] == "filled"
    check("filled at the open")
    assert order(qty="8", time_in_force="ioc")["status"] == "canceled"  # 5 at the ask, the rest canceled
    check("ioc partially filled then canceled")
    assert exchange.submit({"symbol": "AAPL", "side": "sell", "type": "limit", "limit_price": "500",
                            "time_in_force": "gtc", "qty": "2"})["status"] == "new"  # holds 2 of 8 shares
    check("resting sell")
    exchange.set_price("AAPL", "59.00", spread="0.02")  # crosses the gtc buy at 60: it fills
    assert exchange.get_order(gtc_limit["id"])["status"] == "filled"
    check("resting limit filled by a price move")
    now.advance(7 * 3600)  # 16:30 ET: the day limit expires
    assert exchange.get_order(day_limit["id"])["status"] == "expired"
    check("day order expired")
    assert len(exchange.cancel_all()) == 1  # the resting sell
    check("cancel all")
    assert open_index(exchange) == [] and exchange.order_counts() == {"filled": 2, "canceled": 3, "expired": 1}
    exchange.reset()
    assert open_index(exchange) == [] and exchange.order_counts() == {}


def test_requests_never_visit_closed_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    exchange = Exchange(PaperConfig(always_open=True, seed=9, cash=Decimal(1000000)))
    exchange.set_price("AAPL", "100.00", spread="0.02", bid_size=100000, ask_size=100000)
    for n in range(200):  # 200 closed orders: 100 buys and 100 sells, all filled
        exchange.submit({"symbol": "AAPL", "side": "buy" if n % 2 == 0 else "sell", "type": "market",
                         "time_in_force": "ioc", "qty": "1"})
    resting = exchange.submit({"symbol": "AAPL", "side": "buy", "type": "limit", "limit_price": "50",
                               "time_in_force": "gtc", "qty": "1"})
    visited: list[tuple[str, bool]] = []  # (order id, open when visited)
    for name in ("buy_hold", "sell_hold"):
        original = getattr(PaperOrder, name)

        def counting(self: PaperOrder, _original: Callable[[PaperOrder], Decimal] = original) -> Decimal:
            visited.append((self.id, self.is_open))
            return _original(self)
        monkeypatch.setattr(PaperOrder, name, counting)
    work = exchange._work

    def counting_work(order: PaperOrder, now: datetime, open_now: bool) -> None:
        visited.append((order.id, order.is_open))
        work(order, now, open_now)
    monkeypatch.setattr(exchange, "_work", counting_work)  # the per-request tick
    exchange.account()  # buy holds
    exchange.positions()  # sell holds per position
    exchange.submit({"symbol": "AAPL", "side": "buy", "type": "market", "time_in_force": "ioc", "qty": "1"})
    exchange.submit({"symbol": "AAPL", "side": "sell", "type": "market", "time_in_force": "ioc", "qty": "1"})
    assert resting["id"] in {order_id for order_id, _ in visited}
    closed = [order_id for order_id, was_open in visited if not was_open]
    assert closed == [], f"{len(closed)} visits to closed orders"
    assert open_index(exchange) == [resting["id"]]


# --- market data ----------------------------------------------------------------------------------------------
def test_snapshots_for_many_symbols_in_one_call(broker: Broker) -> None:
    from bot.paper.assets import default_assets

    symbols = [asset.symbol for asset in default_assets()][:60]
    response = broker.client.get("/v2/stocks/snapshots", params={"symbols": ",".join([*symbols, "bad-1", "QQQQQ"])})
    data = response.json()
    assert sorted(data) == sorted(symbols)  # the invalid and the unlisted symbols are simply absent
    snap = data[symbols[0]]
    assert set(snap) == {"latestTrade", "latestQuote", "minuteBar", "dailyBar", "prevDailyBar"}
    quote = snap["latestQuote"]
    assert isinstance(quote["bp"], float) and isinstance(quote["as"], int) and 100 <= quote["as"] <= 2000
    assert quote["ap"] > quote["bp"] > 0 and quote["t"].endswith("Z")
    assert isinstance(snap["dailyBar"]["v"], int) and isinstance(snap["latestTrade"]["p"], float)
    assert set(symbols) <= set(broker.exchange.prices.symbols()) and "QQQQQ" not in broker.exchange.prices.symbols()


def test_latest_endpoints_are_wrapped(broker: Broker) -> None:
    broker.pin(symbol="NVDA", price="180.00", spread="0.04")
    quotes = broker.client.get("/v2/stocks/quotes/latest", params={"symbols": "NVDA,AAPL"}).json()
    assert set(quotes) == {"quotes"} and quotes["quotes"]["NVDA"]["bp"] == 179.98
    assert set(broker.client.get("/v2/stocks/trades/latest?symbols=NVDA").json()["trades"]) == {"NVDA"}
    bars = broker.client.get("/v2/stocks/bars/latest?symbols=NVDA").json()["bars"]
    assert set(bars["NVDA"]) >= {"o", "h", "l", "c", "v"}
    assert broker.client.get("/v2/stocks/snapshots").status_code == 400
    assert broker.client.get("/v2/assets/NVDA").json()["fractionable"] is True
    assert error(broker.client.get("/v2/assets/TOOLONG")) == (404, 40410000, "asset not found for TOOLONG")


def test_walk_is_reproducible_from_the_seed() -> None:
    def path(seed: int) -> list[tuple]:
        book = PriceBook(seed, start=T0)
        out = []
        for step in (1, 2, 50, 4000, 4001):  # 4000 crosses the catch-up limit
            q = book.quote("NVDA", T0 + timedelta(seconds=step))
            out.append((q.bid, q.ask, q.bid_size, q.ask_size))
        return out

    assert path(7) == path(7)
    assert path(7) != path(8)
    # reading often or rarely does not change where the walk is at a given step
    often = PriceBook(7, start=T0)
    for second in range(1, 51):
        often.quote("NVDA", T0 + timedelta(seconds=second))
    rarely = PriceBook(7, start=T0)
    assert often.quote("NVDA", T0 + timedelta(seconds=50)) == rarely.quote("NVDA", T0 + timedelta(seconds=50))


def test_same_seed_same_broker(make_broker: Callable[..., Broker]) -> None:
    def run() -> tuple:
        b = make_broker(now=FakeNow(T0), seed=3)
        snap = b.client.get("/v2/stocks/snapshots?symbols=AAPL,MSFT").json()
        return snap, b.order(qty="1").json()["id"]

    assert run() == run()


# --- faults, latency, rate limits -------------------------------------------------------------------------------
def test_fault_500_and_429(broker: Broker) -> None:
    broker.admin.set_faults(fault_500=1.0)
    response = broker.client.get("/v2/account")
    assert response.status_code == 500 and response.json()["code"] == 50010000
    assert "X-RateLimit-Remaining" in response.headers
    broker.admin.set_faults(fault_500=0, fault_429="data=1.0", retry_after=3)
    assert broker.client.get("/v2/account").status_code == 200
    limited = broker.client.get("/v2/stocks/snapshots?symbols=AAPL")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert limited.headers["X-RateLimit-Remaining"] == "0" and limited.headers["X-RateLimit-Limit"] == "200"
    assert broker.admin.stats()["faults_injected"] == {"500": 1, "429": 1}


def test_latency_per_group(broker: Broker) -> None:
    broker.admin.set_latency("data=30")
    assert broker.client.get("/v2/account", timeout=10).status_code == 200  # trading group: no delay
    with pytest.raises(httpx.ReadTimeout):
        broker.client.get("/v2/stocks/snapshots?symbols=AAPL", timeout=0.2)
    assert broker.admin.call("GET", "latency")["latency"] == {"data": [30.0, 30.0]}


def test_order_500_after_create_leaves_the_order_findable(broker: Broker) -> None:
    broker.admin.set_faults(fault_500="orders=1.0", fault_500_when="after")
    response = broker.order(qty="1", client_order_id="unknown-outcome")
    assert response.status_code == 500
    broker.admin.set_faults(fault_500=0)
    found = broker.client.get("/v2/orders:by_client_order_id", params={"client_order_id": "unknown-outcome"})
    assert found.status_code == 200 and found.json()["status"] == "filled"
    broker.admin.set_faults(fault_500="orders=1.0", fault_500_when="before")
    assert broker.order(qty="1", client_order_id="never-landed").status_code == 500
    broker.admin.set_faults(fault_500=0)
    assert broker.client.get("/v2/orders:by_client_order_id?client_order_id=never-landed").status_code == 404


def test_hung_order_times_out_but_lands_later(broker: Broker) -> None:
    broker.admin.set_faults(fault_hang="orders=1.0", hang_seconds=0.3)
    body = {"symbol": "AAPL", "side": "buy", "type": "market", "time_in_force": "ioc", "qty": "1",
            "client_order_id": "slow-1"}
    with pytest.raises(httpx.ReadTimeout):
        broker.client.post("/v2/orders", json=body, timeout=0.05)
    broker.admin.set_faults(fault_hang=0)
    wait_for(lambda: broker.exchange.order_counts() != {}, what="the hung order to land")
    found = broker.client.get("/v2/orders:by_client_order_id?client_order_id=slow-1")
    assert found.status_code == 200


def test_enforced_rate_limit(make_broker: Callable[..., Broker]) -> None:
    b = make_broker(always_open=True, rate_limit=2, enforce_rate_limit=True)
    # the quota is per wall-clock minute: pin the window's clock, or a minute that ends between the
    # second and the third request (likelier the slower the machine) refills it and the 429 never comes
    pinned = time.time()
    b.transport.app.state.broker.rates._wall = lambda: pinned
    assert [b.client.get("/v2/clock").status_code for _ in range(2)] == [200, 200]
    limited = b.client.get("/v2/clock")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert b.client.get("/v2/stocks/snapshots?symbols=AAPL").status_code == 200  # data has its own quota


def test_fault_and_latency_settings_parse() -> None:
    assert parse_latency("0.05") == {"all": (0.05, 0.05)}
    assert parse_latency("orders=0.05,data=0.01-0.02") == {"orders": (0.05, 0.05), "data": (0.01, 0.02)}
    assert parse_probabilities({"trading": 0.5}, "p") == {"trading": 0.5}
    for bad in ("x", "orders=-1", "disks=0.1", "0.2-0.1"):
        with pytest.raises(SettingError):
            parse_latency(bad)
    with pytest.raises(SettingError):
        parse_probabilities("1.5", "fault_500")


# --- admin ------------------------------------------------------------------------------------------------------
def test_admin_stats_reset_and_bad_input(broker: Broker) -> None:
    broker.order(qty="1")
    broker.client.get("/v2/account")
    stats = broker.admin.stats()
    assert stats["by_route"] == {"POST /v2/orders": 1, "GET /v2/account": 1}
    assert stats["by_method"] == {"POST": 1, "GET": 1} and stats["orders"] == 1 and stats["seed"] == 42
    assert broker.client.post("/_paper/faults", json={"fault_500": 2}).status_code == 400
    assert broker.client.post("/_paper/price", json={"symbol": "AAPL", "price": "-1"}).status_code == 400
    assert broker.admin.call("GET", "faults")["fault_500"] == {"all": 0.0}  # the bad request changed nothing
    broker.admin.reset()
    assert broker.admin.stats()["orders"] == 0
    assert broker.client.get("/v2/positions").json() == []
    assert broker.client.get("/v2/account").json()["cash"] == "100000"


def test_admin_is_loopback_only(broker: Broker) -> None:
    remote = SyncASGITransport(broker.transport.app, client_addr=("10.1.2.3", 4000))
    with httpx.Client(transport=remote, base_url="http://paper") as client:
        assert client.get("/_paper/stats").status_code == 403


# --- the real server and the command line ---------------------------------------------------------------------------
def test_real_server_round_trip() -> None:
    with PaperBrokerServer(always_open=True, seed=5) as server:
        assert server.base_url.startswith("http://127.0.0.1:") and not server.base_url.endswith(":8765")
        server.set_price("NVDA", "180.00", spread="0.02")
        with server.client(timeout=10) as client:
            order = client.post("/v2/orders", json={"symbol": "NVDA", "qty": "2", "side": "buy",
                                                    "type": "market", "time_in_force": "ioc"}).json()
            assert order["status"] == "filled" and order["filled_avg_price"] == "180.01"
            assert client.get("/v2/orders:by_client_order_id",
                              params={"client_order_id": order["client_order_id"]}).json()["id"] == order["id"]
        assert server.exchange.order_counts() == {"filled": 1}
        assert server.stats()["by_route"]["POST /v2/orders"] == 1
        assert httpx.get(f"{server.base_url}/v2/account", timeout=10).status_code == 401


def test_real_server_hung_post_takes_effect_though_the_client_gave_up() -> None:
    # --fault-hang promises "answers late and still takes effect": over a real socket the client's
    # timeout closes the connection, which must not stop the order from being placed
    with PaperBrokerServer(always_open=True, seed=5, fault_hang={"orders": 1}, hang_seconds=1.0) as server:
        with server.client(timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
            client.post("/v2/orders", json={"symbol": "NVDA", "qty": "1", "side": "buy", "type": "market",
                                            "time_in_force": "ioc", "client_order_id": "gave-up-1"})
        wait_for(lambda: server.exchange.order_counts(), what="the order of the abandoned POST to land")
        assert sum(server.exchange.order_counts().values()) == 1
        assert server.exchange.get_order_by_client_id("gave-up-1")["client_order_id"] == "gave-up-1"


def test_cli_help_and_bad_flags() -> None:
    from processes.paper_broker import main

    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--always-open", "--seed", "--cash", "--fill-delay", "--latency", "--fault-500", "--fault-hang"):
        assert flag in result.output
    bad = runner.invoke(main, ["--latency", "soon"])
    assert bad.exit_code == 2 and "latency" in bad.output


def test_paper_config_validates() -> None:
    with pytest.raises(ValueError):
        PaperConfig(cash="-5")
    assert PaperConfig(symbols="nvda, aapl").symbols == ("NVDA", "AAPL")


# --- measurement (printed, not asserted) ------------------------------------------------------------------------
def test_measure_submit_cpu_with_3000_closed_orders() -> None:
    """CPU per submit with an empty book and with 3 000 closed orders in it (flat since the book keeps
    its open orders apart; it used to grow with every order ever placed: docs/benchmarks.md)."""
    symbols = [f"S{chr(65 + i)}" for i in range(20)]
    exchange = Exchange(PaperConfig(always_open=True, seed=1, cash=Decimal(10_000_000), symbols=tuple(symbols)))
    placed = 0

    def submit() -> None:
        nonlocal placed  # alternate buy and sell of one share, round the 20 symbols
        exchange.submit({"symbol": symbols[(placed // 2) % 20], "side": "buy" if placed % 2 == 0 else "sell",
                         "type": "market", "time_in_force": "day", "qty": "1"})
        placed += 1

    def cpu_ms_per_submit(reps: int = 200) -> float:
        start = time.process_time()
        for _ in range(reps):
            submit()
        return (time.process_time() - start) / reps * 1000

    empty = cpu_ms_per_submit()
    while placed < 3000:
        submit()
    full = cpu_ms_per_submit()
    assert exchange.order_counts() == {"filled": 3200} and open_index(exchange) == []
    print(f"\nsubmit CPU per order, 20 symbols: {empty:.3f} ms with an empty book, {full:.3f} ms with 3000 "
          f"closed orders in it")


def test_the_always_open_clock_closes_before_it_opens_again() -> None:
    from datetime import datetime, timezone

    from bot.paper.clock import always_open_state

    state = always_open_state(datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc))
    assert state.is_open and state.next_close < state.next_open  # as Alpaca's clock reads while open
