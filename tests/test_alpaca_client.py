"""AlpacaClient against httpx.MockTransport: parsing, error mapping, retries, exactly-once submit,
secrets hygiene. No real sleeping: ``sleep`` records the waits instead."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from bot.alpaca.client import AlpacaClient
from bot.alpaca.errors import (
    AlpacaError,
    BrokerUnavailable,
    DuplicateClientOrderId,
    InsufficientFunds,
    InvalidOrder,
    NotFound,
    OrderOutcomeUnknown,
    RateLimited,
    TradingForbidden,
    Unauthorized,
)
from bot.alpaca.models import OrderRequest
from bot.config import Settings

API_KEY = "PKTESTKEY0123456789"
SECRET = "sEcReT-do-not-leak-0123456789"
TRADING_URL = "https://paper-api.test"
DATA_URL = "https://data.test"
NOW = 1_750_000_000.0  # the injected wall clock
ORDERS = "/v2/orders"
BY_COID = "/v2/orders:by_client_order_id"

Reply = Callable[[httpx.Request], httpx.Response]


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    def make(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return make


def fail(exc_type: type[httpx.RequestError], text: str = "boom") -> Reply:
    def make(request: httpx.Request) -> httpx.Response:
        raise exc_type(text, request=request)
    return make


class FakeAlpaca:
    """Scripted broker: per (method, path) a queue of replies; the last one repeats."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = {}
        self.requests: list[httpx.Request] = []

    def on(self, method: str, path: str, *replies: Reply) -> FakeAlpaca:
        self.routes[(method, path)] = list(replies)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.routes.get((request.method, request.url.path))
        if not queue:
            return httpx.Response(404, json={"code": 40410000, "message": "route not scripted"})
        handler = queue.pop(0) if len(queue) > 1 else queue[0]
        return handler(request)

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.url.path == path)


class RecordingLimiter:
    def __init__(self) -> None:
        self.acquired: list[str] = []
        self.timeouts: list[float | None] = []
        self.observed: list[tuple[str, int | None, float | None]] = []

    def acquire(self, bucket: str, timeout: float | None = None) -> None:
        self.acquired.append(bucket)
        self.timeouts.append(timeout)

    def observe(self, bucket: str, remaining: int | None, reset: float | None) -> None:
        self.observed.append((bucket, remaining, reset))


@pytest.fixture
def broker() -> FakeAlpaca:
    return FakeAlpaca()


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def make_client(broker: FakeAlpaca, waits: list[float]):
    clients: list[AlpacaClient] = []

    def make(**kw: Any) -> AlpacaClient:
        options: dict[str, Any] = dict(api_key=API_KEY, secret_key=SECRET, base_url=TRADING_URL, data_url=DATA_URL,
                                       transport=httpx.MockTransport(broker), sleep=waits.append,
                                       jitter=lambda spread: 0.0, clock=lambda: NOW, backoff_base=1.0)
        options.update(kw)
        client = AlpacaClient(**options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client) -> AlpacaClient:
    return make_client()


def order_json(**overrides: Any) -> dict[str, Any]:
    order = {
        "id": "904837e3-3b76-47ec-b432-046db621571b", "client_order_id": "sig-1-0",
        "created_at": "2023-12-12T22:31:24.668464435Z", "updated_at": "2023-12-12T22:31:24.670000000Z",
        "submitted_at": "2023-12-12T22:31:24.665123456Z", "filled_at": None, "expired_at": None,
        "canceled_at": None, "failed_at": None, "asset_id": "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415",
        "symbol": "NVDA", "asset_class": "us_equity", "notional": None, "qty": "3", "filled_qty": "0",
        "filled_avg_price": None, "order_class": "", "order_type": "market", "type": "market", "side": "buy",
        "time_in_force": "ioc", "limit_price": None, "stop_price": None, "status": "accepted",
        "extended_hours": False, "legs": None, "position_intent": "buy_to_open", "source": None,
        "brand_new_field": {"nested": [1, 2]},
    }
    order.update(overrides)
    return order


def buy(coid: str = "sig-1-0", qty: str = "3") -> OrderRequest:
    return OrderRequest(symbol="NVDA", side="buy", client_order_id=coid, qty=Decimal(qty))


# ---------------------------------------------------------------------------- happy paths and parsing


def test_account_parses_decimal_strings_and_ignores_unknown_fields(broker, client):
    broker.on("GET", "/v2/account", reply(body={
        "id": "acc-1", "account_number": "PA1", "status": "ACTIVE", "currency": "USD", "cash": "100000.123456789",
        "buying_power": "200000.5", "equity": "100000.12", "trading_blocked": False, "account_blocked": False,
        "pattern_day_trader": None, "some_field_from_2030": {"x": 1},
    }))
    account = client.get_account()
    assert account.cash == Decimal("100000.123456789")
    assert account.buying_power == Decimal("200000.5")
    assert account.equity == Decimal("100000.12")
    assert (account.id, account.status, account.currency) == ("acc-1", "ACTIVE", "USD")
    request = broker.requests[0]
    assert str(request.url) == f"{TRADING_URL}/v2/account"
    assert request.headers["APCA-API-KEY-ID"] == API_KEY
    assert request.headers["APCA-API-SECRET-KEY"] == SECRET


def test_positions_all_and_one_and_flat(broker, client):
    position = {"symbol": "NVDA", "qty": "10.5", "qty_available": "4", "avg_entry_price": "120.01",
                "market_value": "1300.25", "side": "long", "current_price": "123.8333", "unknown": 1}
    broker.on("GET", "/v2/positions", reply(body=[position]))
    broker.on("GET", "/v2/positions/NVDA", reply(body=position))
    broker.on("GET", "/v2/positions/AAPL", reply(404, {"code": 40410000, "message": "position does not exist"}))

    [listed] = client.list_positions()
    assert listed.qty == Decimal("10.5") and listed.qty_available == Decimal("4")
    assert listed.avg_entry_price == Decimal("120.01") and listed.current_price == Decimal("123.8333")
    one = client.get_position("NVDA")
    assert one == listed
    assert client.get_position("AAPL") is None


def test_empty_positions_list(broker, client):
    broker.on("GET", "/v2/positions", reply(body=[]))
    assert client.list_positions() == []


def test_submit_sends_decimal_strings_and_parses_order(broker, client):
    broker.on("POST", ORDERS, reply(body=order_json()))
    request = OrderRequest(symbol="NVDA", side="buy", client_order_id="sig-1-0", qty=Decimal("3"),
                           type="limit", time_in_force="day", limit_price=Decimal("120.50"))
    order = client.submit_order(request)
    sent = json.loads(broker.requests[0].content)
    assert sent == {"symbol": "NVDA", "side": "buy", "type": "limit", "time_in_force": "day",
                    "client_order_id": "sig-1-0", "qty": "3", "limit_price": "120.50"}
    assert order.id == "904837e3-3b76-47ec-b432-046db621571b"
    assert order.qty == Decimal("3") and order.filled_qty == Decimal(0) and order.filled_avg_price is None
    # 9 fractional digits are truncated to microseconds, Z is UTC
    assert order.created_at == datetime(2023, 12, 12, 22, 31, 24, 668464, tzinfo=timezone.utc)
    assert order.status == "accepted" and not order.is_terminal


def test_submit_without_client_order_id_is_refused_before_sending(broker, client):
    with pytest.raises(ValueError, match="client_order_id"):
        client.submit_order(OrderRequest(symbol="NVDA", side="buy", client_order_id="", qty=Decimal(1)))
    assert client.request_count == 0


def test_get_order_by_id_and_by_client_order_id(broker, client):
    filled = order_json(status="filled", filled_qty="3", filled_avg_price="120.123456789",
                        filled_at="2023-12-12T22:31:25.000000001Z")
    broker.on("GET", "/v2/orders/904837e3-3b76-47ec-b432-046db621571b", reply(body=filled))
    broker.on("GET", BY_COID, reply(body=filled))
    order = client.get_order("904837e3-3b76-47ec-b432-046db621571b")
    assert order.is_terminal and order.filled_avg_price == Decimal("120.123456789")
    assert order.filled_at == datetime(2023, 12, 12, 22, 31, 25, tzinfo=timezone.utc)
    assert client.get_order_by_client_id("sig-1-0") == order
    lookup = broker.requests[1]
    assert lookup.url.path == BY_COID  # the colon is part of the path
    assert parse_qs(lookup.url.query.decode()) == {"client_order_id": ["sig-1-0"]}


def test_order_lookups_when_absent(broker, client):
    broker.on("GET", BY_COID, reply(404, {"code": 40410000, "message": "order not found"}))
    broker.on("GET", "/v2/orders/nope", reply(404, {"code": 40410000, "message": "order not found"}))
    assert client.get_order_by_client_id("never-sent") is None
    with pytest.raises(NotFound):
        client.get_order("nope")


def test_list_orders_passes_filters(broker, client):
    broker.on("GET", ORDERS, reply(body=[order_json(), order_json(id="o-2", client_order_id="sig-2-0")]))
    orders = client.list_orders(status="open", limit=10_000, symbols=["NVDA", "AAPL"])
    assert [o.id for o in orders] == ["904837e3-3b76-47ec-b432-046db621571b", "o-2"]
    params = parse_qs(broker.requests[0].url.query.decode())
    assert params == {"status": ["open"], "limit": ["500"], "symbols": ["NVDA,AAPL"], "direction": ["desc"]}


def test_cancel_accepted_not_cancelable_and_unknown(broker, client):
    broker.on("DELETE", "/v2/orders/o-1", reply(204))
    broker.on("DELETE", "/v2/orders/o-2", reply(422, {"code": 42210000, "message": "order is not cancelable"}))
    broker.on("DELETE", "/v2/orders/o-3", reply(404, {"code": 40410000, "message": "order not found"}))
    assert client.cancel_order("o-1") is None
    assert client.cancel_order("o-2") is None
    with pytest.raises(NotFound):
        client.cancel_order("o-3")
    assert client.request_count == 3


def test_clock_with_eastern_offsets(broker, client):
    broker.on("GET", "/v2/clock", reply(body={"timestamp": "2025-06-24T14:15:22.123456789-04:00", "is_open": True,
                                              "next_open": "2025-06-25T09:30:00-04:00",
                                              "next_close": "2025-06-24T16:00:00-04:00", "extra": 1}))
    clock = client.get_clock()
    assert clock.is_open is True
    assert clock.next_close == datetime(2025, 6, 24, 20, 0, tzinfo=timezone.utc)
    assert clock.timestamp.microsecond == 123456
    assert clock.timestamp.utcoffset() == timedelta(hours=-4)  # the offset survives a 9-digit fraction


def test_asset_uses_class_field_and_404(broker, client):
    broker.on("GET", "/v2/assets/NVDA", reply(body={
        "id": "b0b6dd9d", "class": "us_equity", "exchange": "NASDAQ", "symbol": "NVDA", "name": "NVIDIA",
        "status": "active", "tradable": True, "marginable": True, "shortable": True, "easy_to_borrow": True,
        "fractionable": True, "attributes": ["fractional_eh_enabled"]}))
    broker.on("GET", "/v2/assets/XYZQ", reply(404, {"code": 40410000, "message": "asset not found for XYZQ"}))
    asset = client.get_asset("NVDA")
    assert (asset.symbol, asset.tradable, asset.fractionable, asset.exchange) == ("NVDA", True, True, "NASDAQ")
    with pytest.raises(NotFound, match="asset not found"):
        client.get_asset("XYZQ")


def snapshot_json(bid: float = 120.5, ask: float = 120.6, last: float = 120.55) -> dict[str, Any]:
    return {
        "latestTrade": {"t": "2025-06-24T18:15:22.123456789Z", "p": last, "s": 100, "x": "V", "i": 1, "c": ["@"],
                        "z": "C"},
        "latestQuote": {"t": "2025-06-24T18:15:22.987654321Z", "bp": bid, "bs": 300, "bx": "V", "ap": ask, "as": 200,
                        "ax": "V", "c": ["R"], "z": "C"},
        "minuteBar": {"t": "2025-06-24T18:14:00Z", "o": 120.1, "h": 120.9, "l": 120.0, "c": 120.5, "v": 1000,
                      "n": 12, "vw": 120.4},
        "dailyBar": None, "prevDailyBar": None, "someNewKey": True,
    }


def test_snapshots_one_request_for_20_symbols(broker, client):
    symbols = [f"S{i:02d}" for i in range(20)]
    body = {s: snapshot_json() for s in symbols[:18]}  # the feed has nothing for the last two
    body["S00"] = snapshot_json(bid=0, ask=121.25, last=120.1)  # no active bid on the thin IEX book
    broker.on("GET", "/v2/stocks/snapshots", reply(body=body))
    limiter = RecordingLimiter()
    client = AlpacaClient(api_key=API_KEY, secret_key=SECRET, base_url=TRADING_URL, data_url=DATA_URL,
                          transport=httpx.MockTransport(broker), limiter=limiter)
    with client:
        snaps = client.get_snapshots(symbols)
    assert client.request_count == 1 and limiter.acquired == ["data"]
    request = broker.requests[0]
    assert str(request.url).startswith(f"{DATA_URL}/v2/stocks/snapshots?")
    params = parse_qs(request.url.query.decode())
    assert params == {"symbols": [",".join(symbols)], "feed": ["iex"]}
    assert sorted(snaps) == symbols[:18]
    assert snaps["S00"].bid is None and snaps["S00"].ask == Decimal("121.25")
    s01 = snaps["S01"]
    assert (s01.bid, s01.ask, s01.last) == (Decimal("120.5"), Decimal("120.6"), Decimal("120.55"))
    assert (s01.bid_size, s01.ask_size) == (Decimal(300), Decimal(200))
    assert s01.quote_time == datetime(2025, 6, 24, 18, 15, 22, 987654, tzinfo=timezone.utc)


def test_snapshots_split_only_past_the_per_request_limit(broker, client):
    def echo(request: httpx.Request) -> httpx.Response:
        asked = parse_qs(request.url.query.decode())["symbols"][0].split(",")
        return httpx.Response(200, json={s: snapshot_json() for s in asked})

    broker.on("GET", "/v2/stocks/snapshots", echo)
    symbols = [f"T{i:03d}" for i in range(150)]
    snaps = client.get_snapshots(symbols + symbols[:5])  # duplicates asked once
    assert len(snaps) == 150
    sizes = [len(parse_qs(r.url.query.decode())["symbols"][0].split(",")) for r in broker.requests]
    assert sizes == [100, 50]
    assert client.get_snapshots([]) == {} and client.request_count == 2


# ---------------------------------------------------------------------------- error mapping

AUTH_401 = (401, {"code": 40110000, "message": "request is not authorized"})
AUTH_403 = (403, {"message": "forbidden"})
FUNDS_403 = (403, {"code": 40310000, "message": "insufficient buying power", "buying_power": "10.00",
                   "cost_basis": "360.00"})
INVALID_422 = (422, {"code": 40010001, "message": "only type=\"limit\" is allowed for extended hours orders"})
INVALID_400 = (400, {"code": 40010000, "message": "request body format is invalid"})
DUPLICATE_422 = (422, {"code": 40010001, "message": "client_order_id must be unique"})
DUPLICATE_TEXT = (422, {"message": "client order id must be unique"})


@pytest.mark.parametrize("status,body,expected", [
    (*AUTH_401, Unauthorized),
    (*AUTH_403, Unauthorized),
    (403, {"code": 40110000, "message": "request is not authorized"}, Unauthorized),
    (*FUNDS_403, InsufficientFunds),
    (403, {"code": 40310000, "message": "insufficient qty available for order (requested: 5, available: 0)"},
     InsufficientFunds),
    (*INVALID_422, InvalidOrder),
    (*INVALID_400, InvalidOrder),
    (404, {"code": 40410000, "message": "asset not found"}, NotFound),
])
def test_submit_refusals_map_to_typed_errors(broker, client, status, body, expected):
    broker.on("POST", ORDERS, reply(status, body))
    with pytest.raises(expected) as caught:
        client.submit_order(buy())
    assert type(caught.value) is expected  # e.g. not DuplicateClientOrderId for a plain 40010001
    assert caught.value.status == status
    assert broker.count("POST", ORDERS) == 1 and broker.count("GET", BY_COID) == 0  # refusals are final


@pytest.mark.parametrize("body,kind", [
    ({"code": 40310100, "message": "trade denied due to pattern day trading protection"}, "pattern_day_trading"),
    ({"code": 40310000, "message": "potential wash trade detected. use complex orders"}, "wash_trade"),
    ({"code": 40310000, "message": "account is not authorized to trade"}, "account_restricted"),
    ({"code": 40310000, "message": "account is blocked"}, "account_restricted"),
    ({"code": 40310000, "message": "new orders are not allowed on this asset"}, "account_restricted"),
    ({"code": 40399999, "message": "something new"}, "forbidden"),
], ids=["pdt", "wash-trade", "not-authorized", "blocked", "not-allowed", "other"])
def test_account_refusals_are_not_insufficient_funds(broker, client, body, kind):
    # every 403 used to read as "insufficient funds"; these are refusals of the account's state
    broker.on("POST", ORDERS, reply(403, body))
    with pytest.raises(TradingForbidden) as caught:
        client.submit_order(buy())
    assert caught.value.kind == kind and caught.value.code == body["code"]
    assert broker.count("POST", ORDERS) == 1  # final: not sent again


def test_insufficient_funds_keeps_the_body_details(broker, client):
    broker.on("POST", ORDERS, reply(*FUNDS_403))
    with pytest.raises(InsufficientFunds) as caught:
        client.submit_order(buy())
    assert caught.value.code == 40310000 and caught.value.body["buying_power"] == "10.00"
    assert "insufficient buying power" in str(caught.value)


@pytest.mark.parametrize("status,body,expected", [
    (*AUTH_401, Unauthorized),
    (*AUTH_403, Unauthorized),
    (403, {"message": "subscription does not permit querying recent SIP data"}, Unauthorized),
    (403, {}, Unauthorized),
    (422, {"code": 40010001, "message": "invalid order id"}, InvalidOrder),
    (404, {"code": 40410000, "message": "order not found"}, NotFound),
])
def test_read_errors_are_typed_and_not_retried(broker, client, waits, status, body, expected):
    broker.on("GET", "/v2/account", reply(status, body))
    with pytest.raises(expected):
        client.get_account()
    assert client.request_count == 1 and waits == []


def test_non_json_error_body_is_still_typed(broker, client):
    broker.on("GET", "/v2/account", lambda request: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(BrokerUnavailable, match="Bad Gateway"):
        client.get_account()


def test_unexpected_body_gives_a_clear_error(broker, client):
    broker.on("GET", "/v2/account", reply(body=["not", "an", "object"]))
    broker.on("GET", "/v2/orders/o-1", reply(body={"status": "new"}))  # no id
    broker.on("GET", "/v2/clock", lambda request: httpx.Response(200, text="not json"))
    with pytest.raises(AlpacaError, match="unexpected account"):
        client.get_account()
    with pytest.raises(AlpacaError, match="unexpected order"):
        client.get_order("o-1")
    with pytest.raises(AlpacaError, match="not JSON"):
        client.get_clock()


# ---------------------------------------------------------------------------- retries on reads


def test_read_retries_5xx_with_exponential_backoff(broker, make_client, waits, caplog):
    client = make_client(jitter=lambda spread: spread)  # the top of the jitter range: full nominal backoff
    broker.on("GET", "/v2/account", reply(500, {"message": "internal"}), reply(502), reply(503),
              reply(body={"id": "a", "cash": "1", "buying_power": "2", "equity": "1"}))
    with caplog.at_level(logging.WARNING, logger="bot.alpaca.client"):
        assert client.get_account().cash == Decimal(1)
    assert waits == [1.0, 2.0, 4.0]
    assert client.request_count == 4
    retries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(retries) == 3
    assert "GET /v2/account" in retries[0] and "HTTP 500" in retries[0] and "1.00s" in retries[0]


def test_backoff_jitter_stays_between_half_and_full(broker, make_client, waits):
    from bot.alpaca.client import random_jitter

    client = make_client(jitter=random_jitter, backoff_base=2.0, backoff_max=5.0, max_retries=4)
    broker.on("GET", "/v2/clock", reply(503))
    with pytest.raises(BrokerUnavailable):
        client.get_clock()
    nominal = [2.0, 4.0, 5.0, 5.0]  # capped at backoff_max
    assert len(waits) == 4
    for wait, top in zip(waits, nominal, strict=True):
        assert top / 2 <= wait <= top


def test_read_gives_up_after_max_retries(broker, make_client, waits):
    client = make_client(max_retries=2)
    broker.on("GET", "/v2/clock", reply(504, {"message": "gateway timeout"}))
    with pytest.raises(BrokerUnavailable, match="gateway timeout") as caught:
        client.get_clock()
    assert caught.value.status == 504
    assert client.request_count == 3 and len(waits) == 2


def test_429_honours_retry_after(broker, client, waits):
    broker.on("GET", "/v2/positions", reply(429, {"code": 42910000, "message": "rate limit exceeded"},
                                            {"Retry-After": "7"}), reply(body=[]))
    assert client.list_positions() == []
    assert waits == [7.0]


def test_429_honours_retry_after_http_date(broker, client, waits):
    when = datetime.fromtimestamp(NOW, timezone.utc) + timedelta(seconds=9)
    broker.on("GET", "/v2/positions", reply(429, None, {"Retry-After": format_datetime(when, usegmt=True)}),
              reply(body=[]))
    client.list_positions()
    assert waits == [9.0]


def test_429_honours_rate_limit_reset_and_caps_it(broker, make_client, waits):
    client = make_client(max_wait=20.0)
    broker.on("GET", "/v2/positions",
              reply(429, None, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 12)}),
              reply(429, None, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 600)}),
              reply(429, None, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) - 5)}),
              reply(body=[]))
    client.list_positions()
    assert waits == [12.0, 20.0, 0.0]


def test_a_5xx_with_budget_left_gets_the_backoff_not_the_rate_window(broker, make_client, waits):
    client = make_client(max_wait=30.0)
    window = {"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": "150", "X-RateLimit-Reset": str(int(NOW) + 50)}
    broker.on("GET", "/v2/positions", reply(500, {"message": "internal"}, window), reply(body=[]))
    client.list_positions()
    assert waits == [0.5]  # the backoff (jitter 0: half of backoff_base), not the 50 s to the reset


def test_a_5xx_honours_retry_after_and_a_spent_budget(broker, make_client, waits):
    client = make_client(max_wait=30.0)
    broker.on("GET", "/v2/positions",
              reply(503, None, {"Retry-After": "3", "X-RateLimit-Remaining": "150"}),
              reply(500, None, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 12)}),
              reply(body=[]))
    client.list_positions()
    assert waits == [3.0, 12.0]


def test_server_wait_gets_jitter_on_top(broker, make_client, waits):
    client = make_client(jitter=lambda spread: spread, backoff_base=0.5)
    broker.on("GET", "/v2/positions", reply(429, None, {"Retry-After": "3"}), reply(body=[]))
    client.list_positions()
    assert waits == [3.5]  # never shorter than the server asked


def test_429_exhausted_raises_rate_limited(broker, make_client, waits):
    client = make_client(max_retries=1)
    broker.on("GET", "/v2/account", reply(429, {"message": "too many requests"}, {"Retry-After": "2"}))
    with pytest.raises(RateLimited) as caught:
        client.get_account()
    assert caught.value.retry_after == 2.0 and caught.value.status == 429
    assert client.request_count == 2 and waits == [2.0]


def test_read_retries_transport_errors(broker, client, waits):
    broker.on("GET", "/v2/clock", fail(httpx.ConnectError), fail(httpx.ReadTimeout),
              reply(body={"timestamp": "2025-06-24T14:15:22-04:00", "is_open": False,
                          "next_open": "2025-06-25T09:30:00-04:00", "next_close": "2025-06-25T16:00:00-04:00"}))
    assert client.get_clock().is_open is False
    assert waits == [0.5, 1.0]  # jitter 0: the bottom half of 1, 2
    assert client.request_count == 3


def test_transport_errors_exhausted_raise_broker_unavailable(broker, make_client):
    client = make_client(max_retries=1)
    broker.on("GET", "/v2/clock", fail(httpx.ReadError, "connection reset"))
    with pytest.raises(BrokerUnavailable, match="ReadError: connection reset") as caught:
        client.get_clock()
    assert caught.value.__suppress_context__ and caught.value.__cause__ is None
    assert client.request_count == 2


def test_cancel_is_retried_on_5xx(broker, client, waits):
    broker.on("DELETE", "/v2/orders/o-1", reply(503), reply(204))
    client.cancel_order("o-1")
    assert broker.count("DELETE", "/v2/orders/o-1") == 2 and len(waits) == 1


# ---------------------------------------------------------------------------- exactly-once submit


def test_submit_500_then_lookup_finds_the_order(broker, client):
    broker.on("POST", ORDERS, reply(500, {"message": "internal server error"}))
    broker.on("GET", BY_COID, reply(body=order_json(status="new")))
    order = client.submit_order(buy())
    assert order.client_order_id == "sig-1-0" and order.status == "new"
    assert broker.count("POST", ORDERS) == 1 and broker.count("GET", BY_COID) == 1


def test_submit_timeout_then_lookup_404_is_resent_once(broker, client, waits):
    broker.on("POST", ORDERS, fail(httpx.ReadTimeout, "timed out"), reply(body=order_json()))
    broker.on("GET", BY_COID, reply(404, {"code": 40410000, "message": "order not found"}))
    order = client.submit_order(buy())
    assert order.id == "904837e3-3b76-47ec-b432-046db621571b"
    assert broker.count("POST", ORDERS) == 2 and broker.count("GET", BY_COID) == 1
    assert [r.url.path for r in broker.requests] == [ORDERS, BY_COID, ORDERS]  # looked up BEFORE re-sending
    assert json.loads(broker.requests[0].content) == json.loads(broker.requests[2].content)
    assert len(waits) == 1


def test_submit_duplicate_returns_the_existing_order(broker, client):
    broker.on("POST", ORDERS, reply(*DUPLICATE_422))
    broker.on("GET", BY_COID, reply(body=order_json(status="filled", filled_qty="3", filled_avg_price="120")))
    order = client.submit_order(buy())
    assert order.status == "filled" and order.filled_qty == Decimal(3)
    assert broker.count("POST", ORDERS) == 1 and broker.count("GET", BY_COID) == 1


def test_duplicate_recognised_by_message_alone(broker, client):
    broker.on("POST", ORDERS, reply(*DUPLICATE_TEXT))
    broker.on("GET", BY_COID, reply(body=order_json()))
    assert client.submit_order(buy()).client_order_id == "sig-1-0"


def test_duplicate_whose_lookup_finds_nothing_surfaces_the_refusal(broker, client):
    broker.on("POST", ORDERS, reply(*DUPLICATE_422))
    broker.on("GET", BY_COID, reply(404, {"code": 40410000, "message": "order not found"}))
    with pytest.raises(DuplicateClientOrderId):
        client.submit_order(buy())
    assert broker.count("POST", ORDERS) == 1


def test_timeout_then_duplicate_on_resend_returns_the_late_order(broker, client):
    # the first POST landed after the lookup said 404: the re-send is refused and the order returned
    broker.on("POST", ORDERS, fail(httpx.WriteTimeout), reply(*DUPLICATE_422))
    broker.on("GET", BY_COID, reply(404, {"code": 40410000, "message": "order not found"}), reply(body=order_json()))
    assert client.submit_order(buy()).id == "904837e3-3b76-47ec-b432-046db621571b"
    assert broker.count("POST", ORDERS) == 2


def test_submit_unknown_when_lookups_fail(broker, make_client):
    client = make_client(max_retries=2)
    broker.on("POST", ORDERS, reply(503, {"message": "service unavailable"}))
    broker.on("GET", BY_COID, reply(503))
    with pytest.raises(OrderOutcomeUnknown) as caught:
        client.submit_order(buy("sig-9-0"))
    assert caught.value.client_order_id == "sig-9-0"
    assert broker.count("POST", ORDERS) == 1  # never re-sent while the outcome is unknown
    assert broker.count("GET", BY_COID) == 3  # the lookup is a read with retries
    assert client.request_count == 4


def test_submit_unknown_when_lookup_times_out(broker, client):
    broker.on("POST", ORDERS, fail(httpx.RemoteProtocolError, "server disconnected"))
    broker.on("GET", BY_COID, fail(httpx.ReadTimeout))
    with pytest.raises(OrderOutcomeUnknown):
        client.submit_order(buy())
    assert broker.count("POST", ORDERS) == 1


def test_submit_posts_are_bounded_when_nothing_lands(broker, make_client):
    client = make_client(max_retries=3)
    broker.on("POST", ORDERS, reply(500))
    broker.on("GET", BY_COID, reply(404, {"code": 40410000, "message": "order not found"}))
    # a 500 may come after the order took effect, and a 404 lookup may come before a delayed POST
    # lands: "not found" is not "not placed", so the caller learns the outcome is unknown
    with pytest.raises(OrderOutcomeUnknown, match=r"outcome unknown .*3 attempts"):
        client.submit_order(buy())
    assert broker.count("POST", ORDERS) == 3 and broker.count("GET", BY_COID) == 3


def test_unreadable_success_body_is_resolved_by_lookup(broker, client):
    broker.on("POST", ORDERS, lambda request: httpx.Response(200, text='{"id": "truncat'))
    broker.on("GET", BY_COID, reply(body=order_json()))
    assert client.submit_order(buy()).client_order_id == "sig-1-0"
    assert broker.count("POST", ORDERS) == 1


def test_submit_429_is_resent_after_the_wait_without_lookup(broker, client, waits):
    broker.on("POST", ORDERS, reply(429, {"message": "rate limit exceeded"}, {"Retry-After": "4"}),
              reply(body=order_json()))
    assert client.submit_order(buy()).status == "accepted"
    assert broker.count("POST", ORDERS) == 2 and broker.count("GET", BY_COID) == 0
    assert waits == [4.0]


def test_submit_429_exhausted_raises_rate_limited(broker, make_client, waits):
    client = make_client(max_retries=2)
    broker.on("POST", ORDERS, reply(429, None, {"Retry-After": "1"}))
    with pytest.raises(RateLimited):
        client.submit_order(buy())
    assert broker.count("POST", ORDERS) == 2 and waits == [1.0]


def test_submit_connect_error_is_resent_without_lookup(broker, client):
    broker.on("POST", ORDERS, fail(httpx.ConnectError, "connection refused"), reply(body=order_json()))
    assert client.submit_order(buy()).status == "accepted"
    assert broker.count("POST", ORDERS) == 2 and broker.count("GET", BY_COID) == 0


class Monotonic:
    """A monotonic clock that the client's sleep (and a slow limiter) advance."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def test_a_429_is_not_waited_out_past_the_submit_deadline(broker, make_client):
    clock = Monotonic()
    client = make_client(sleep=clock.sleep, monotonic=clock, submit_deadline=3.0, max_wait=30.0)
    broker.on("POST", ORDERS, reply(429, {"message": "rate limit exceeded"}, {"Retry-After": "4"}),
              reply(body=order_json()))
    with pytest.raises(RateLimited):
        client.submit_order(buy())
    assert broker.count("POST", ORDERS) == 1 and clock.slept == []  # nothing placed, nothing waited
    broker.on("POST", ORDERS, reply(429, None, {"Retry-After": "4"}), reply(body=order_json()))
    assert client.submit_order(buy(), deadline=10.0).status == "accepted"  # per call: 4 s fit in 10
    assert clock.slept == [4.0]


def test_no_post_after_a_slow_lookup_passes_the_submit_deadline(broker, make_client):
    clock = Monotonic()
    client = make_client(sleep=clock.sleep, monotonic=clock, submit_deadline=5.0, max_retries=3)

    def slow_not_found(request: httpx.Request) -> httpx.Response:
        clock.t += 6.0  # the lookup itself took long (retries inside it)
        return httpx.Response(404, json={"code": 40410000, "message": "order not found"})

    broker.on("POST", ORDERS, reply(500), reply(body=order_json()))
    broker.on("GET", BY_COID, slow_not_found)
    with pytest.raises(OrderOutcomeUnknown, match="deadline"):  # the 500 may have placed it: unknown, not unsent
        client.submit_order(buy())
    assert broker.count("POST", ORDERS) == 1  # the POST is not sent again 6 s after the checks


def test_the_rate_limit_token_for_a_submit_is_awaited_only_until_the_deadline(broker, make_client):
    clock = Monotonic()
    limiter = RecordingLimiter()
    client = make_client(limiter=limiter, monotonic=clock, submit_deadline=2.5)
    broker.on("POST", ORDERS, reply(body=order_json()))
    client.submit_order(buy())
    assert limiter.timeouts == [2.5]  # acquire("trading", timeout=what is left)


def test_a_limiter_that_gives_up_means_nothing_was_sent(broker, make_client):
    from bot.ratelimit import RateLimitTimeout

    class Exhausted(RecordingLimiter):
        def acquire(self, bucket: str, timeout: float | None = None) -> None:
            raise RateLimitTimeout(bucket, timeout or 0.0, 60.0)

    client = make_client(limiter=Exhausted())
    broker.on("POST", ORDERS, reply(body=order_json()))
    with pytest.raises(RateLimited, match="not sent") as caught:
        client.submit_order(buy())
    assert caught.value.retry_after == 60.0 and broker.requests == []


def test_a_slow_limiter_without_timeout_cannot_push_the_post_past_the_deadline(broker, make_client):
    clock = Monotonic()

    class Slow:
        def acquire(self, bucket: str) -> None:
            clock.t += 30.0  # e.g. a fleet pause

    client = make_client(limiter=Slow(), monotonic=clock, submit_deadline=5.0)
    broker.on("POST", ORDERS, reply(body=order_json()))
    with pytest.raises(RateLimited, match="deadline"):
        client.submit_order(buy())
    assert broker.requests == []


def test_submit_against_a_paused_fleet_bucket_fails_fast(broker, make_client, r):
    from bot.keys import Keys
    from bot.ratelimit import RateLimiter

    limiter = RateLimiter(r, Keys("t"), {"trading": 200})
    limiter.observe("trading", remaining=0, reset=60.0)  # the broker said: spent, for 60 s
    client = make_client(limiter=limiter, submit_deadline=2.0)
    broker.on("POST", ORDERS, reply(body=order_json()))
    with pytest.raises(RateLimited):
        client.submit_order(buy())
    assert broker.requests == []


@pytest.mark.parametrize("refusal", [FUNDS_403, INVALID_422])
def test_a_refusal_after_an_unknown_outcome_looks_the_order_up_again(broker, client, refusal):
    # POST 1 timed out but landed late; the lookup said 404; POST 2 is refused (the first one used
    # the buying power): the order of POST 1 is what counts
    broker.on("POST", ORDERS, fail(httpx.ReadTimeout), reply(*refusal))
    broker.on("GET", BY_COID, reply(404, {"code": 40410000, "message": "order not found"}),
              reply(body=order_json(status="filled", filled_qty="3")))
    order = client.submit_order(buy())
    assert order.status == "filled"
    assert [r.url.path for r in broker.requests] == [ORDERS, BY_COID, ORDERS, BY_COID]


def test_a_refusal_after_an_unknown_outcome_stands_when_nothing_landed(broker, client):
    broker.on("POST", ORDERS, reply(503), reply(*FUNDS_403))
    broker.on("GET", BY_COID, reply(404, {"code": 40410000, "message": "order not found"}))
    with pytest.raises(InsufficientFunds):
        client.submit_order(buy())
    assert broker.count("GET", BY_COID) == 2


# ---------------------------------------------------------------------------- secrets, counting, limiter


def test_secrets_never_in_repr_errors_or_logs(broker, make_client, caplog):
    client = make_client(max_retries=1)
    # a transport error whose text echoes a header value must be scrubbed too
    broker.on("GET", "/v2/account", fail(httpx.ConnectError, f"refused, key {API_KEY} secret {SECRET}"))
    broker.on("GET", "/v2/clock", reply(401, {"code": 40110000, "message": f"request is not authorized {SECRET}"}))
    broker.on("POST", ORDERS, fail(httpx.ReadTimeout, f"timed out {SECRET}"))
    broker.on("GET", BY_COID, reply(500, {"message": f"oops {API_KEY}"}))
    errors: list[BaseException] = []
    with caplog.at_level(logging.DEBUG):
        for call in (client.get_account, client.get_clock, lambda: client.submit_order(buy())):
            with pytest.raises(AlpacaError) as caught:
                call()
            errors.append(caught.value)
    assert [type(e) for e in errors] == [BrokerUnavailable, Unauthorized, OrderOutcomeUnknown]
    texts = [repr(client), str(client.__dict__.get("trading")), *map(str, errors), *map(repr, errors)]
    texts += [record.getMessage() for record in caplog.records]
    assert caplog.records  # the retries were logged
    for text in texts:
        assert API_KEY not in text and SECRET not in text, text
    assert "***" in str(errors[0])


def test_bad_header_value_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as caught:
        AlpacaClient(api_key="PK with space", secret_key=SECRET, base_url=TRADING_URL, data_url=DATA_URL)
    assert "PK with space" not in str(caught.value)


def test_request_count_limiter_buckets_and_rate_headers(broker, make_client):
    limiter = RecordingLimiter()
    client = make_client(limiter=limiter)
    headers = {"X-RateLimit-Limit": "200", "X-RateLimit-Remaining": "57", "X-RateLimit-Reset": str(int(NOW) + 30)}
    broker.on("GET", "/v2/account", reply(503), reply(body={"id": "a", "cash": "1", "buying_power": "1",
                                                           "equity": "1"}, headers=headers))
    broker.on("GET", "/v2/stocks/snapshots",
              reply(body={"NVDA": snapshot_json()}, headers={"X-RateLimit-Remaining": "9999"}))
    broker.on("POST", ORDERS, reply(body=order_json()))
    client.get_account()
    assert (client.rate_limit_remaining, client.rate_limit_reset) == (57, NOW + 30)
    client.get_snapshots(["NVDA"])
    client.submit_order(buy())
    assert client.request_count == 4 == len(broker.requests)
    assert limiter.acquired == ["trading", "trading", "data", "trading"]
    assert limiter.observed == [("trading", 57, NOW + 30), ("data", 9999, None)]
    assert client.rate_limits["trading"] == (57, NOW + 30)
    assert (client.rate_limit_remaining, client.rate_limit_reset) == (9999, None)


def test_limiter_without_observe_is_fine(broker, make_client):
    class AcquireOnly:
        def __init__(self) -> None:
            self.calls = 0

        def acquire(self, bucket: str) -> None:
            self.calls += 1

    limiter = AcquireOnly()
    client = make_client(limiter=limiter)
    broker.on("GET", "/v2/positions", reply(body=[], headers={"X-RateLimit-Remaining": "3"}))
    client.list_positions()
    assert limiter.calls == 1 and client.rate_limit_remaining == 3


def test_from_settings(broker):
    settings = Settings.from_env({"ALPACA_API_KEY": API_KEY, "ALPACA_SECRET_KEY": SECRET,
                                  "ALPACA_BASE_URL": "http://127.0.0.1:9/", "ALPACA_DATA_FEED": "sip"})
    broker.on("GET", "/v2/stocks/snapshots", reply(body={}))
    with AlpacaClient.from_settings(settings, transport=httpx.MockTransport(broker), max_retries=0) as client:
        assert client.get_snapshots(["NVDA"]) == {}
        assert client.max_retries == 0
    request = broker.requests[0]
    # a local paper broker serves market data under its own base URL
    assert str(request.url).startswith("http://127.0.0.1:9/v2/stocks/snapshots")
    assert parse_qs(request.url.query.decode())["feed"] == ["sip"]
    assert request.headers["APCA-API-KEY-ID"] == API_KEY
    assert API_KEY not in repr(client) and SECRET not in repr(client)


def test_client_uses_explicit_timeouts_and_keepalive_pool():
    client = AlpacaClient(api_key=API_KEY, secret_key=SECRET, base_url=TRADING_URL, data_url=DATA_URL)
    try:
        timeout = client._http.timeout
        assert timeout.connect is not None and timeout.read is not None
        assert client._http.follow_redirects is False
    finally:
        client.close()


def test_orders_since_pages_past_500_and_never_loses_orders_of_one_instant(broker, client):
    # 1,203 orders, 50 of them (480-529) submitted in one microsecond across the first page's end:
    # paging by time alone would lose those after the page's last one, and 500 is never everything
    def stamp(n: int) -> str:
        if 480 <= n < 530:
            return "2026-12-01T15:00:04.800000Z"
        return f"2026-12-01T15:00:{n // 100:02d}.{n:06d}Z"

    rows = [order_json(id=f"o-{n}", client_order_id=f"c-{n}", submitted_at=stamp(n), created_at=stamp(n))
            for n in range(1203)]

    def page(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        limit = int(request.url.params["limit"])
        assert request.url.params["direction"] == "asc"
        from bot.alpaca.models import ts

        since = ts(after)
        picked = [row for row in rows if ts(row["submitted_at"]) > since][:limit]
        return httpx.Response(200, json=picked)

    broker.on("GET", ORDERS, *([page] * 20))
    from datetime import datetime, timezone

    got = [order.id for order in client.orders_since(datetime(2026, 12, 1, tzinfo=timezone.utc))]
    assert len(got) == len(set(got)) == 1203  # every order once
    assert broker.count("GET", ORDERS) >= 3
