"""The paper broker's advanced orders: stop, stop_limit, trailing_stop; bracket, oco, oto; fok,
opg/cls; replace; close-all. Prices are pinned and moved across the stops; the same through the
official alpaca-py TradingClient against a real server."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetOrdersRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)
from waiting import wait_for

from bot.paper.exchange import Exchange
from bot.paper.testing import PaperBrokerServer, paper_client, paper_transport


class FakeNow:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class Broker:
    def __init__(self, client: httpx.Client, exchange: Exchange) -> None:
        self.client = client
        self.exchange = exchange
        self.events: list[tuple[str, str]] = []
        exchange.events.publish = lambda e: self.events.append((e.event, e.order["id"]))  # type: ignore[method-assign]

    def order(self, **body: Any) -> httpx.Response:
        base = {"symbol": "AAPL", "side": "buy", "type": "market", "time_in_force": "gtc", "qty": "10"}
        return self.client.post("/v2/orders", json={**base, **body})

    def ok(self, **body: Any) -> dict[str, Any]:
        response = self.order(**body)
        assert response.status_code == 200, response.text
        return response.json()

    def get(self, order_id: str, nested: bool = False) -> dict[str, Any]:
        return self.client.get(f"/v2/orders/{order_id}", params={"nested": "true"} if nested else None).json()

    def pin(self, price: str) -> None:
        self.exchange.set_price("AAPL", price, spread="0.02")


@pytest.fixture
def make_broker() -> Iterator[Callable[..., Broker]]:
    clients: list[httpx.Client] = []

    def make(**options: Any) -> Broker:
        options.setdefault("seed", 42)
        transport, exchange = paper_transport(**options)
        client = paper_client(transport, timeout=10)
        clients.append(client)
        broker = Broker(client, exchange)
        broker.pin("100.00")
        return broker

    try:
        yield make
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker(always_open=True)


def owned(broker: Broker, qty: str = "10") -> None:
    assert broker.ok(qty=qty, time_in_force="day")["status"] == "filled"


# --- stop types ---------------------------------------------------------------------------------
def test_sell_stop_rests_then_fills_at_the_bid_when_crossed(broker: Broker) -> None:
    owned(broker)
    stop = broker.ok(side="sell", type="stop", stop_price="95")
    assert stop["status"] == "new" and stop["stop_price"] == "95" and stop["type"] == "stop"
    broker.pin("95.50")
    assert broker.get(stop["id"])["status"] == "new"
    broker.pin("94.00")
    filled = broker.get(stop["id"])
    assert filled["status"] == "filled" and filled["filled_avg_price"] == "93.99"


def test_buy_stop_fills_when_the_price_rises_to_it(broker: Broker) -> None:
    stop = broker.ok(type="stop", stop_price="105", time_in_force="day")
    broker.pin("106.00")
    assert broker.get(stop["id"])["filled_avg_price"] == "106.01"


def test_stop_limit_becomes_a_limit_order_once_triggered(broker: Broker) -> None:
    owned(broker)
    order = broker.ok(side="sell", type="stop_limit", stop_price="95", limit_price="94.50")
    broker.pin("94.00")  # triggers; the bid 93.99 is under the limit: it rests
    assert broker.get(order["id"])["status"] == "new"
    broker.pin("94.80")  # above the stop again, but a triggered stop_limit stays a limit
    filled = broker.get(order["id"])
    assert filled["status"] == "filled" and filled["filled_avg_price"] == "94.79"


def test_trailing_stop_follows_the_high_water_mark(broker: Broker) -> None:
    owned(broker)
    trail = broker.ok(side="sell", type="trailing_stop", trail_price="2")
    assert (trail["hwm"], trail["stop_price"], trail["trail_price"]) == ("100", "98", "2")
    broker.pin("105.00")
    moved = broker.get(trail["id"])
    assert (moved["hwm"], moved["stop_price"], moved["status"]) == ("105", "103", "new")
    broker.pin("104.00")  # a fall does not lower the stop
    assert broker.get(trail["id"])["stop_price"] == "103"
    broker.pin("102.90")
    assert broker.get(trail["id"])["status"] == "filled"


def test_trailing_stop_percent_buy_trails_the_low(broker: Broker) -> None:
    trail = broker.ok(type="trailing_stop", trail_percent="5", time_in_force="day")
    assert (trail["hwm"], trail["stop_price"], trail["trail_percent"]) == ("100", "105", "5")
    broker.pin("80.00")
    assert broker.get(trail["id"])["stop_price"] == "84"
    broker.pin("84.00")
    assert broker.get(trail["id"])["filled_avg_price"] == "84.01"


@pytest.mark.parametrize("body, message", [
    ({"type": "stop", "stop_price": "99"},
     "stop_price must be > current price for buy stop orders (current price: 100)"),
    ({"type": "stop", "side": "sell", "stop_price": "101"},
     "stop_price must be < current price for sell stop orders (current price: 100)"),
    ({"type": "stop", "stop_price": "105.001"}, "sub-penny increment does not fulfill minimum pricing criteria"),
    ({"type": "stop_limit", "stop_price": "105"}, "limit_price is required for stop_limit orders"),
    ({"type": "limit", "limit_price": "90", "stop_price": "95"},
     "stop_price is only allowed for stop and stop_limit orders"),
    ({"type": "trailing_stop", "trail_price": "1", "trail_percent": "1"},
     "trail_price and trail_percent cannot both be specified"),
    ({"type": "trailing_stop", "trail_price": "1", "time_in_force": "ioc"},
     "trailing_stop orders must be DAY or GTC orders"),
    ({"type": "market", "trail_price": "1"}, "trail_price and trail_percent are only allowed for trailing_stop orders"),
    ({"type": "stop", "stop_price": "105", "time_in_force": "opg"}, "opg orders must be market or limit orders"),
    ({"order_class": "bracket", "take_profit": {"limit_price": "110"}},
     "take_profit and stop_loss are required for bracket orders"),
    ({"order_class": "bracket", "take_profit": {"limit_price": "100"}, "stop_loss": {"stop_price": "90"}},
     "take_profit.limit_price must be >= base_price + 0.01 (base_price: 100)"),
    ({"order_class": "bracket", "take_profit": {"limit_price": "110"}, "stop_loss": {"stop_price": "100"}},
     "stop_loss.stop_price must be <= base_price - 0.01 (base_price: 100)"),
    ({"order_class": "bracket", "time_in_force": "ioc", "take_profit": {"limit_price": "110"},
      "stop_loss": {"stop_price": "90"}}, "bracket orders must be DAY or GTC orders"),
    ({"order_class": "bracket", "qty": "1.5", "time_in_force": "day", "take_profit": {"limit_price": "110"},
      "stop_loss": {"stop_price": "90"}}, "fractional orders must be simple orders"),
    ({"order_class": "oco", "side": "sell", "take_profit": {"limit_price": "110"}, "stop_loss": {"stop_price": "90"}},
     "oco orders must be limit orders"),
    ({"order_class": "oto", "take_profit": {"limit_price": "110"}, "stop_loss": {"stop_price": "90"}},
     "oto orders require exactly one of take_profit or stop_loss"),
    ({"order_class": "bracket", "take_profit": {}, "stop_loss": {"stop_price": "90"}},
     "take_profit.limit_price is required"),
    ({"order_class": "triangle"}, "invalid order_class: 'triangle'"),
])
def test_invalid_advanced_orders_are_422_and_create_nothing(broker: Broker, body: dict, message: str) -> None:
    response = broker.order(**body)
    payload = response.json()
    assert response.status_code == 422 and isinstance(payload["code"], int) and payload["message"] == message
    assert broker.exchange.order_counts() == {}


# --- order classes ------------------------------------------------------------------------------
def bracket(broker: Broker, **body: Any) -> dict[str, Any]:
    exits = {"take_profit": {"limit_price": "110"}, "stop_loss": {"stop_price": "90"}}
    return broker.ok(order_class="bracket", **{**exits, **body})


def test_bracket_legs_activate_on_the_fill_and_one_cancels_the_other(broker: Broker) -> None:
    parent = bracket(broker)
    assert parent["status"] == "filled" and parent["order_class"] == "bracket"
    take_profit, stop_loss = parent["legs"]
    assert (take_profit["type"], take_profit["limit_price"], take_profit["side"]) == ("limit", "110", "sell")
    assert (stop_loss["type"], stop_loss["stop_price"], stop_loss["order_class"]) == ("stop", "90", "bracket")
    assert [leg["status"] for leg in broker.get(parent["id"], nested=True)["legs"]] == ["new", "new"]
    assert broker.get(parent["id"])["legs"] is None  # legs only when nested
    broker.pin("111.00")
    legs = broker.get(parent["id"], nested=True)["legs"]
    assert [leg["status"] for leg in legs] == ["filled", "canceled"]
    assert broker.client.get("/v2/positions").json() == []


def test_bracket_legs_are_held_until_the_entry_fills_and_go_with_its_cancel(broker: Broker) -> None:
    parent = bracket(broker, type="limit", limit_price="95")
    assert parent["status"] == "new" and [leg["status"] for leg in parent["legs"]] == ["held", "held"]
    assert broker.client.get("/v2/account").json()["buying_power"] == "99050"  # only the entry holds
    assert broker.client.delete(f"/v2/orders/{parent['id']}").status_code == 204
    assert [leg["status"] for leg in broker.get(parent["id"], nested=True)["legs"]] == ["canceled", "canceled"]


def test_bracket_stop_loss_leg_fills_on_the_way_down(broker: Broker) -> None:
    parent = bracket(broker, stop_loss={"stop_price": "90", "limit_price": "89"})
    broker.pin("89.50")
    take_profit, stop_loss = broker.get(parent["id"], nested=True)["legs"]
    assert stop_loss["type"] == "stop_limit" and stop_loss["status"] == "filled"
    assert take_profit["status"] == "canceled"


def test_oco_exits_a_position_either_way(broker: Broker) -> None:
    owned(broker)
    oco = broker.ok(side="sell", type="limit", order_class="oco", take_profit={"limit_price": "110"},
                    stop_loss={"stop_price": "90"})
    assert oco["limit_price"] == "110" and oco["legs"][0]["stop_price"] == "90" and oco["status"] == "new"
    assert broker.client.get("/v2/positions/AAPL").json()["qty_available"] == "0"  # held once, not twice
    broker.pin("89.00")
    assert broker.get(oco["id"])["status"] == "canceled"
    assert broker.get(oco["legs"][0]["id"])["status"] == "filled"


def test_oto_activates_its_one_leg(broker: Broker) -> None:
    parent = broker.ok(order_class="oto", stop_loss={"stop_price": "90"})
    (leg,) = broker.get(parent["id"], nested=True)["legs"]
    assert leg["status"] == "new" and leg["order_class"] == "oto"
    broker.pin("120.00")  # no take-profit: nothing happens
    assert broker.get(leg["id"])["status"] == "new"


def test_nested_lists_legs_under_their_parent_only(broker: Broker) -> None:
    parent = bracket(broker)
    flat = broker.client.get("/v2/orders", params={"status": "all"}).json()
    nested = broker.client.get("/v2/orders", params={"status": "all", "nested": "true"}).json()
    assert len(flat) == 3 and [o["id"] for o in nested] == [parent["id"]] and len(nested[0]["legs"]) == 2


# --- time in force ------------------------------------------------------------------------------
def test_fok_fills_all_or_cancels(broker: Broker) -> None:
    broker.exchange.set_price("AAPL", "100.00", spread="0.02", ask_size=5)
    killed = broker.ok(qty="6", time_in_force="fok")
    assert killed["status"] == "canceled" and killed["filled_qty"] == "0"
    assert broker.ok(qty="5", time_in_force="fok")["status"] == "filled"
    assert broker.ok(qty="1", type="limit", limit_price="90", time_in_force="fok")["status"] == "canceled"


def test_opg_executes_at_the_open_and_cls_at_the_close(make_broker: Callable[..., Broker]) -> None:
    now = FakeNow(datetime(2026, 3, 4, 13, 0, tzinfo=timezone.utc))  # 08:00 ET
    b = make_broker(now=now)
    opg = b.ok(qty="2", time_in_force="opg")
    assert opg["status"] == "accepted" and opg["expires_at"] == "2026-03-04T14:30:00.000000000Z"
    now.advance(90 * 60)  # 09:30 ET
    assert b.get(opg["id"])["status"] == "filled"
    refused = b.order(qty="1", time_in_force="opg").json()
    assert refused["message"] == "opg orders are not accepted between 09:28 and 19:00 ET"
    cls = b.ok(qty="1", type="limit", limit_price="90", time_in_force="cls")
    assert cls["status"] == "accepted" and cls["expires_at"] == "2026-03-04T21:00:00.000000000Z"
    now.advance(6.5 * 3600)  # 16:00 ET: the limit is not marketable in the close, it is canceled
    assert b.get(cls["id"])["status"] == "canceled"


def test_expires_at_is_never_null(make_broker: Callable[..., Broker]) -> None:
    b = make_broker(always_open=True)
    for tif in ("day", "gtc", "ioc", "fok", "opg", "cls"):
        assert b.ok(qty="1", time_in_force=tif)["expires_at"] is not None, tif
    gtc = b.ok(qty="1", type="limit", limit_price="50")
    created = datetime.fromisoformat(gtc["created_at"][:26] + "+00:00")
    expires = datetime.fromisoformat(gtc["expires_at"][:26] + "+00:00")
    assert expires - created == timedelta(days=90)


# --- replace, close-all, list -------------------------------------------------------------------
def test_replace_retires_the_old_order_and_links_both(broker: Broker) -> None:
    old = broker.ok(type="limit", limit_price="90", client_order_id="r-1")
    response = broker.client.patch(f"/v2/orders/{old['id']}", json={"limit_price": "91", "qty": "4"})
    assert response.status_code == 200, response.text
    new = response.json()
    assert (new["replaces"], new["limit_price"], new["qty"], new["status"]) == (old["id"], "91", "4", "new")
    retired = broker.get(old["id"])
    assert retired["status"] == "replaced" and retired["replaced_by"] == new["id"] and retired["replaced_at"]
    assert ("replaced", old["id"]) in broker.events and ("new", new["id"]) in broker.events
    again = broker.client.patch(f"/v2/orders/{old['id']}", json={"limit_price": "92"})
    assert again.status_code == 422 and again.json()["message"] == 'order is already in "replaced" state'
    wrong = broker.client.patch(f"/v2/orders/{new['id']}", json={"stop_price": "92"})
    assert wrong.status_code == 422 and isinstance(wrong.json()["code"], int)


def test_replace_a_bracket_stop_loss_leg_keeps_it_in_the_bracket(broker: Broker) -> None:
    parent = bracket(broker)
    stop_leg = parent["legs"][1]
    moved = broker.client.patch(f"/v2/orders/{stop_leg['id']}", json={"stop_price": "95"}).json()
    assert moved["stop_price"] == "95" and moved["order_class"] == "bracket"
    assert [leg["id"] for leg in broker.get(parent["id"], nested=True)["legs"]][1] == moved["id"]
    broker.pin("94.00")
    assert [leg["status"] for leg in broker.get(parent["id"], nested=True)["legs"]] == ["canceled", "filled"]


def test_replace_a_trailing_stop_keeps_its_high_water_mark(broker: Broker) -> None:
    owned(broker)
    trail = broker.ok(side="sell", type="trailing_stop", trail_price="2")
    broker.pin("105.00")
    broker.get(trail["id"])
    broker.pin("104.00")
    new = broker.client.patch(f"/v2/orders/{trail['id']}", json={"trail": "1"}).json()
    assert (new["hwm"], new["stop_price"], new["trail_price"]) == ("105", "104", "1")


def test_close_all_positions_cancels_orders_first(broker: Broker) -> None:
    owned(broker)
    broker.ok(symbol="MSFT", qty="3")
    resting = broker.ok(side="sell", type="limit", limit_price="500", qty="10")
    response = broker.client.delete("/v2/positions", params={"cancel_orders": "true"})
    assert response.status_code == 207
    results = response.json()
    assert [(r["symbol"], r["status"], r["body"]["status"]) for r in results] == \
        [("AAPL", 200, "filled"), ("MSFT", 200, "filled")]
    assert broker.get(resting["id"])["status"] == "canceled"
    assert broker.client.get("/v2/positions").json() == []


def test_close_all_without_cancel_reports_the_held_shares(broker: Broker) -> None:
    owned(broker)
    broker.ok(side="sell", type="limit", limit_price="500", qty="10")
    (result,) = broker.client.delete("/v2/positions").json()
    assert result["symbol"] == "AAPL" and result["status"] == 403 and result["body"]["code"] == 40310000


def test_list_limit_and_order_id_cursors(broker: Broker) -> None:
    ids = [broker.ok(qty="1", type="limit", limit_price=str(50 + i))["id"] for i in range(4)]
    too_many = broker.client.get("/v2/orders", params={"limit": "501"})
    assert too_many.status_code == 422 and too_many.json() == {"code": 40010001, "message": "limit must be <= 500"}
    after = broker.client.get("/v2/orders", params={"after_order_id": ids[1], "direction": "asc"}).json()
    before = broker.client.get("/v2/orders", params={"before_order_id": ids[2], "direction": "asc"}).json()
    assert [o["id"] for o in after] == ids[2:] and [o["id"] for o in before] == ids[:2]
    mixed = broker.client.get("/v2/orders", params={"after_order_id": ids[1], "after": "2020-01-01T00:00:00Z"})
    assert mixed.status_code == 422


def test_stream_events_of_a_triggered_bracket(broker: Broker) -> None:
    parent = bracket(broker)
    take_profit, stop_loss = (leg["id"] for leg in parent["legs"])
    broker.pin("111.00")
    assert [e for e in broker.events if e[1] != parent["id"]] == \
        [("new", take_profit), ("new", stop_loss), ("fill", take_profit), ("canceled", stop_loss)]


# --- the official SDK -----------------------------------------------------------------------------
@pytest.fixture
def server() -> Iterator[PaperBrokerServer]:
    with PaperBrokerServer(always_open=True, seed=3) as broker:
        broker.set_price("AAPL", "100.00", spread="0.02")
        yield broker


def test_alpaca_py_trading_client_drives_every_type(server: PaperBrokerServer) -> None:
    sdk = TradingClient(server.api_key, server.secret_key, paper=True, url_override=server.base_url)
    entry = sdk.submit_order(MarketOrderRequest(
        symbol="AAPL", qty=10, side=OrderSide.BUY, time_in_force=TimeInForce.GTC, order_class=OrderClass.BRACKET,
        take_profit=TakeProfitRequest(limit_price=120), stop_loss=StopLossRequest(stop_price=80)))
    assert entry.order_class == OrderClass.BRACKET and entry.legs is not None and len(entry.legs) == 2
    stop = sdk.submit_order(StopOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                             time_in_force=TimeInForce.DAY, stop_price=105))
    stop_limit = sdk.submit_order(StopLimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                                        time_in_force=TimeInForce.GTC, stop_price=106, limit_price=107))
    trail = sdk.submit_order(TrailingStopOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                                      time_in_force=TimeInForce.GTC, trail_percent=10))
    assert trail.hwm == "100" and float(trail.stop_price or 0) == 110
    moved = sdk.replace_order_by_id(stop_limit.id, ReplaceOrderRequest(limit_price=108))
    assert moved.replaces == stop_limit.id and sdk.get_order_by_id(stop_limit.id).status == "replaced"
    server.set_price("AAPL", "107.00", spread="0.02")
    wait_for(lambda: sdk.get_order_by_id(stop.id).status == "filled", what="the stop to fill")
    assert sdk.get_order_by_id(moved.id).status == "filled"
    assert sdk.get_order_by_id(trail.id).status == "new"
    nested = sdk.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, nested=True))
    parent = next(o for o in nested if o.id == entry.id)
    assert parent.legs is not None and {leg.status for leg in parent.legs} == {"new"}
    closed = sdk.close_all_positions(cancel_orders=True)
    assert [(c.symbol, c.status) for c in closed] == [("AAPL", 200)]
    assert sdk.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN)) == []
    wait_for(lambda: sdk.get_all_positions() == [], what="the position to close")
