"""The paper broker's trading stream at /stream (Alpaca's trade_updates websocket): the official
alpaca-py TradingStream against it unchanged, the raw protocol (JSON and MessagePack frames), the
faults of /_paper/stream, and fills reported by the stream's own ticker without any REST request.

Every test runs a real server on a free port. Nothing sleeps to synchronise: websocket reads carry
generous timeouts, other conditions are awaited with wait_for. Short windows are used only to show
that something did NOT arrive (such a check can never fail a correct broker, however slow)."""
from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx
import msgpack
import pytest
from alpaca.trading.stream import TradingStream as AlpacaTradingStream
from waiting import wait_for
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from bot.paper.testing import PaperBrokerServer

LONG = 30.0  # for what must arrive: only a failing test waits this long
QUIET = 0.3  # a window in which nothing may arrive (a negative check: never flaky, only weaker)
ASK = "100.01"  # AAPL pinned at 100.00 with a 0.02 spread: buys fill at the ask

AUTHORIZED = {"stream": "authorization", "data": {"status": "authorized", "action": "authenticate"}}
LISTENING = {"stream": "listening", "data": {"streams": ["trade_updates"]}}
DEFAULT_FAULTS = {"silent": False, "refuse": False, "delay": 0.0, "drop_next": 0, "drop_events": [],
                  "duplicate": False}


# --- helpers ------------------------------------------------------------------------------------------
@pytest.fixture
def broker() -> Iterator[PaperBrokerServer]:
    with PaperBrokerServer(always_open=True, seed=1) as server:
        server.set_price("AAPL", "100.00", spread="0.02")
        yield server


def set_fill_delay(broker: PaperBrokerServer, seconds: float) -> None:
    assert broker.admin("POST", "fill_delay", {"fill_delay": seconds}) == {"fill_delay": seconds}


def post_order(broker: PaperBrokerServer, client_order_id: str, **body: Any) -> dict[str, Any]:
    ticket = {"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market", "time_in_force": "day",
              "client_order_id": client_order_id, **body}
    with broker.client(timeout=LONG) as client:
        response = client.post("/v2/orders", json=ticket)
    assert response.status_code == 200, response.text
    return response.json()


def cancel_order(broker: PaperBrokerServer, order_id: str) -> None:
    with broker.client(timeout=LONG) as client:
        response = client.delete(f"/v2/orders/{order_id}")
    assert response.status_code == 204, response.text


def get_order(broker: PaperBrokerServer, order_id: str) -> dict[str, Any]:
    with broker.client(timeout=LONG) as client:
        response = client.get(f"/v2/orders/{order_id}")
    assert response.status_code == 200, response.text
    return response.json()


def admin_stream(broker: PaperBrokerServer, body: Any) -> httpx.Response:
    """POST /_paper/stream, answer unchecked (for the 400s)."""
    return httpx.post(f"{broker.base_url}/_paper/stream", json=body, timeout=LONG)


def listening_clients(broker: PaperBrokerServer) -> int:
    """Connections subscribed to trade_updates right now. The protocol has no way to tell a client
    that the server registered its listen other than the answer, which alpaca-py swallows; so the
    SDK tests read the hub (in-process, under its lock)."""
    hub = broker.exchange.events
    with hub._lock:
        return sum(1 for subscriber in hub._subscribers if subscriber.listening)


def open_connections(broker: PaperBrokerServer) -> int:
    return broker.set_stream()["open_connections"]


class RawStream:
    """One websocket client speaking the protocol by hand; every frame it reads must be binary."""

    def __init__(self, ws: ClientConnection, packed: bool) -> None:
        self.ws, self.packed = ws, packed

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(msgpack.packb(message) if self.packed else json.dumps(message))

    def recv(self, timeout: float = LONG) -> dict[str, Any]:
        frame = self.ws.recv(timeout=timeout)
        assert isinstance(frame, bytes), f"a text frame {frame!r}: the paper endpoint sends binary frames"
        return msgpack.unpackb(frame, raw=False) if self.packed else json.loads(frame)

    def authenticate(self, key: str, secret: str) -> dict[str, Any]:
        self.send({"action": "authenticate", "data": {"key_id": key, "secret_key": secret}})
        return self.recv()

    def listen(self, *streams: str) -> dict[str, Any]:
        self.send({"action": "listen", "data": {"streams": list(streams)}})
        return self.recv()

    def event(self, timeout: float = LONG) -> dict[str, Any]:
        message = self.recv(timeout)
        assert message["stream"] == "trade_updates", message
        return message["data"]

    def events(self, count: int) -> list[dict[str, Any]]:
        return [self.event() for _ in range(count)]

    def nothing_for(self, seconds: float = QUIET) -> None:
        with pytest.raises(TimeoutError):
            frame = self.ws.recv(timeout=seconds)
            pytest.fail(f"expected silence, got {frame!r}")  # pragma: no cover - only on a bug

    def closed_by_server(self) -> int | None:
        """Reads until the server closes the connection; its close code."""
        with pytest.raises(ConnectionClosed):
            while True:
                self.ws.recv(timeout=LONG)
        return self.ws.close_code


@contextmanager
def raw_stream(broker: PaperBrokerServer, *, packed: bool = False, login: bool = True,
               listen: bool = True) -> Iterator[RawStream]:
    headers = {"Content-Type": "application/msgpack"} if packed else None
    with connect(broker.stream_url, additional_headers=headers, open_timeout=LONG, close_timeout=5) as ws:
        stream = RawStream(ws, packed)
        if login:
            assert stream.authenticate(broker.api_key, broker.secret_key) == AUTHORIZED
        if listen:
            assert stream.listen("trade_updates") == LISTENING
        yield stream


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["event"], e["order"]["client_order_id"]) for e in events]


@contextmanager
def alpaca_stream(broker: PaperBrokerServer) -> Iterator[queue.Queue[Any]]:
    """alpaca-py's TradingStream on its own thread, logged in and listening; yields the queue its
    handler fills with TradeUpdate models. Stopped and joined however the test ends."""
    updates: queue.Queue[Any] = queue.Queue()
    sdk = AlpacaTradingStream(broker.api_key, broker.secret_key, paper=True, url_override=broker.stream_url)

    async def on_update(update: Any) -> None:
        updates.put(update)

    sdk.subscribe_trade_updates(on_update)
    thread = threading.Thread(target=sdk.run, name="alpaca-py-trading-stream", daemon=True)
    thread.start()
    try:
        wait_for(lambda: listening_clients(broker) == 1 or not thread.is_alive(), LONG,
                 "alpaca-py to log in and listen")
        assert thread.is_alive(), "alpaca-py's stream thread ended"
        yield updates
    finally:
        wait_for(lambda: sdk._loop is not None or not thread.is_alive(), LONG, "alpaca-py's event loop")
        try:
            if thread.is_alive():
                sdk.stop()
                # its read loop only looks at the stop request between 5 s receive timeouts: closing
                # the connection wakes it, and a stopped stream does not reconnect
                broker.set_stream(disconnect=True)
        finally:
            thread.join(timeout=LONG)
        assert not thread.is_alive(), "alpaca-py's stream thread did not stop"


def next_update(updates: queue.Queue[Any]) -> Any:
    try:
        return updates.get(timeout=LONG)
    except queue.Empty:
        raise AssertionError(f"no trade update within {LONG:g}s") from None


# --- 1. the official SDK -------------------------------------------------------------------------------
def test_alpaca_sdk_receives_accepted_new_fill_of_a_market_order(broker: PaperBrokerServer) -> None:
    set_fill_delay(broker, 0.3)
    with alpaca_stream(broker) as updates:
        order = post_order(broker, "sdk-fill-1")
        got = [next_update(updates) for _ in range(3)]
        assert [u.event for u in got] == ["accepted", "new", "fill"]
        assert all(u.order.client_order_id == "sdk-fill-1" and str(u.order.id) == order["id"] for u in got)
        fill = got[2]
        assert fill.price == float(ASK) and fill.qty == 1 and fill.position_qty == 1
        assert isinstance(fill.execution_id, uuid.UUID)
        assert fill.order.status == "filled" and fill.order.filled_avg_price == ASK
        assert got[0].price is None and got[0].execution_id is None  # only fills carry an execution
        assert get_order(broker, order["id"])["filled_avg_price"] == ASK


def test_alpaca_sdk_receives_canceled(broker: PaperBrokerServer) -> None:
    with alpaca_stream(broker) as updates:
        order = post_order(broker, "sdk-cancel-1", type="limit", limit_price="50.00")  # far below the ask
        assert [next_update(updates).event for _ in range(2)] == ["accepted", "new"]
        cancel_order(broker, order["id"])
        canceled = next_update(updates)
        assert canceled.event == "canceled" and canceled.order.client_order_id == "sdk-cancel-1"
        assert canceled.order.status == "canceled" and canceled.order.canceled_at is not None
        assert updates.empty()


# --- 2. the raw protocol -------------------------------------------------------------------------------
def test_authenticate_and_listen_answers(broker: PaperBrokerServer) -> None:
    with raw_stream(broker, login=False, listen=False) as stream:
        assert stream.authenticate(broker.api_key, broker.secret_key) == AUTHORIZED
        assert stream.listen("trade_updates") == LISTENING
        # names it does not serve are left out of the answer; a second listen replaces the first
        assert stream.listen("trade_updates", "account_updates") == LISTENING
        stream.send({"action": "dance"})
        assert stream.recv() == {"stream": "error", "data": {"action": "dance", "error_message": "unrecognized action"}}


def test_bad_keys_are_unauthorized_and_the_server_closes(broker: PaperBrokerServer) -> None:
    with raw_stream(broker, login=False, listen=False) as stream:
        answer = stream.authenticate(broker.api_key, "not-the-secret")
        assert answer["stream"] == "authorization"
        assert answer["data"]["status"] == "unauthorized" and answer["data"]["action"] == "authenticate"
        assert stream.closed_by_server() == 1008
    with raw_stream(broker, login=False, listen=False) as stream:  # listening first is refused too
        answer = stream.listen("trade_updates")
        assert answer["stream"] == "authorization" and answer["data"]["status"] == "unauthorized"
        assert stream.closed_by_server() == 1008
    wait_for(lambda: open_connections(broker) == 0, LONG, "the refused connections to be gone")


def test_events_are_binary_json_with_the_whole_order(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream:
        order = post_order(broker, "raw-1", qty="2")
        accepted, new, fill = stream.events(3)
        assert [accepted["event"], new["event"], fill["event"]] == ["accepted", "new", "fill"]
        assert [e["order"]["status"] for e in (accepted, new, fill)] == ["accepted", "new", "filled"]
        assert all(e["order"]["id"] == order["id"] and e["order"]["client_order_id"] == "raw-1"
                   for e in (accepted, new, fill))
        assert all(e["timestamp"].endswith("Z") for e in (accepted, new, fill))
        assert "price" not in accepted and "execution_id" not in new
        assert (fill["price"], fill["qty"], fill["position_qty"]) == (ASK, "2", "2")
        uuid.UUID(fill["execution_id"])
        assert fill["order"]["filled_qty"] == "2" and fill["order"]["filled_avg_price"] == ASK

        post_order(broker, "raw-2", side="sell", qty="1")  # position_qty is the position after the fill
        sell_fill = stream.events(3)[2]
        assert (sell_fill["event"], sell_fill["qty"], sell_fill["position_qty"]) == ("fill", "1", "1")
        assert sell_fill["price"] == "99.99" and sell_fill["execution_id"] != fill["execution_id"]


def test_a_partial_fill_then_the_rest_canceled(broker: PaperBrokerServer) -> None:
    broker.set_price("AAPL", "100.00", spread="0.02", ask_size=1)
    with raw_stream(broker) as stream:
        post_order(broker, "ioc-1", qty="3", time_in_force="ioc")
        accepted, new, partial, canceled = stream.events(4)
        assert [e["event"] for e in (accepted, new, partial, canceled)] == \
            ["accepted", "new", "partial_fill", "canceled"]
        assert (partial["price"], partial["qty"], partial["position_qty"]) == (ASK, "1", "1")
        assert partial["order"]["status"] == "partially_filled" and canceled["order"]["filled_qty"] == "1"


def test_msgpack_frames_when_the_upgrade_asks(broker: PaperBrokerServer) -> None:
    with raw_stream(broker, packed=True, login=False, listen=False) as stream:
        assert stream.authenticate(broker.api_key, broker.secret_key) == AUTHORIZED  # sent as MessagePack
        assert stream.listen("trade_updates") == LISTENING
        post_order(broker, "packed-1")
        events = stream.events(3)
        assert kinds(events) == [("accepted", "packed-1"), ("new", "packed-1"), ("fill", "packed-1")]
        assert events[2]["price"] == ASK and events[2]["position_qty"] == "1"


def test_json_clients_and_msgpack_clients_side_by_side(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as plain, raw_stream(broker, packed=True) as packed:
        post_order(broker, "both-1")
        assert kinds(plain.events(3)) == kinds(packed.events(3)) == \
            [("accepted", "both-1"), ("new", "both-1"), ("fill", "both-1")]


def test_an_empty_listen_unsubscribes(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream, raw_stream(broker) as witness:
        assert stream.listen() == {"stream": "listening", "data": {"streams": []}}
        post_order(broker, "while-away")
        assert [e["event"] for e in witness.events(3)] == ["accepted", "new", "fill"]  # the events happened
        stream.nothing_for()
        # listening again: the answer comes first, then only the new order's events
        assert stream.listen("trade_updates") == LISTENING
        post_order(broker, "back-again")
        assert kinds(stream.events(3)) == [("accepted", "back-again"), ("new", "back-again"), ("fill", "back-again")]


def test_authenticated_but_not_listening_gets_no_events(broker: PaperBrokerServer) -> None:
    with raw_stream(broker, listen=False) as idle, raw_stream(broker) as witness:
        post_order(broker, "unheard")
        assert len(witness.events(3)) == 3
        idle.nothing_for()


def test_closed_connections_are_forgotten(broker: PaperBrokerServer) -> None:
    with raw_stream(broker), raw_stream(broker, listen=False):
        assert open_connections(broker) == 2
    wait_for(lambda: open_connections(broker) == 0, LONG, "both connections to be forgotten")
    wait_for(lambda: broker.exchange.events.subscribers == 0, LONG, "the hub to drop both subscribers")


# --- 3. faults -------------------------------------------------------------------------------------------
def test_drop_next_drops_exactly_the_next_event(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream:
        answer = broker.set_stream(drop_next=1)
        assert answer["drop_next"] == 1
        post_order(broker, "d-1")
        post_order(broker, "d-2")
        assert kinds(stream.events(5)) == [("new", "d-1"), ("fill", "d-1"),
                                           ("accepted", "d-2"), ("new", "d-2"), ("fill", "d-2")]
        state = broker.set_stream()
        assert state["drop_next"] == 0 and state["dropped"] == 1 and state["sent"] == 5


def test_drop_events_drops_those_kinds_only(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream:
        assert broker.set_stream(drop_events=["fill"])["drop_events"] == ["fill"]
        post_order(broker, "f-1")
        post_order(broker, "f-2")
        assert kinds(stream.events(4)) == [("accepted", "f-1"), ("new", "f-1"), ("accepted", "f-2"), ("new", "f-2")]
        wait_for(lambda: broker.set_stream()["dropped"] == 2, LONG, "both fills to be dropped")
        assert broker.set_stream(drop_events=[])["drop_events"] == []
        post_order(broker, "f-3")
        assert kinds(stream.events(3)) == [("accepted", "f-3"), ("new", "f-3"), ("fill", "f-3")]


def test_duplicate_sends_every_event_twice(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream:
        broker.set_stream(duplicate=True)
        post_order(broker, "dup-1")
        events = stream.events(6)
        assert [e["event"] for e in events] == ["accepted", "accepted", "new", "new", "fill", "fill"]
        assert events[4] == events[5]  # the very same message, execution_id and all
        assert broker.set_stream(duplicate=False)["duplicated"] == 3
        post_order(broker, "dup-2")
        assert kinds(stream.events(3)) == [("accepted", "dup-2"), ("new", "dup-2"), ("fill", "dup-2")]
        stream.nothing_for(0.1)


def test_delay_holds_events_back_in_order(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream:
        broker.set_stream(delay=0.5)
        before = time.monotonic()  # the events happen after this, so none may be sent before + 0.5 s
        post_order(broker, "late-1")
        if time.monotonic() - before < 0.2:  # on a loaded machine the POST alone may take the delay
            stream.nothing_for(0.1)
        events = stream.events(3)
        arrived = time.monotonic()
        assert kinds(events) == [("accepted", "late-1"), ("new", "late-1"), ("fill", "late-1")]
        assert arrived - before >= 0.5 - 0.02  # a lower bound is safe: load only makes it later
        broker.set_stream(delay=0)
        post_order(broker, "late-2")
        assert kinds(stream.events(3)) == [("accepted", "late-2"), ("new", "late-2"), ("fill", "late-2")]


def test_lowering_the_delay_releases_events_already_held(broker: PaperBrokerServer) -> None:
    # "delay: every event is sent this many seconds after it happened": with the delay back at 0, an
    # event that happened a moment ago is due now, not an hour from now
    with raw_stream(broker) as stream:
        broker.set_stream(delay=3600)
        post_order(broker, "held-1")
        stream.nothing_for(0.1)
        broker.set_stream(delay=0)
        assert kinds(stream.events(3)) == [("accepted", "held-1"), ("new", "held-1"), ("fill", "held-1")]


def test_reset_releases_events_held_by_a_delay(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream:
        broker.set_stream(delay=3600)
        post_order(broker, "held-2")
        stream.nothing_for(0.1)
        broker.reset()
        assert kinds(stream.events(3)) == [("accepted", "held-2"), ("new", "held-2"), ("fill", "held-2")]


def test_silent_stream_sends_no_events_and_answers_nothing(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream:
        assert broker.set_stream(silent=True)["silent"] is True
        stream.send({"action": "listen", "data": {"streams": ["trade_updates"]}})
        post_order(broker, "s-1")
        wait_for(lambda: broker.set_stream()["dropped"] == 3, LONG, "the silent stream to swallow 3 events")
        stream.nothing_for()
        with raw_stream(broker, login=False, listen=False) as newcomer:  # a login goes unanswered too
            newcomer.send({"action": "authenticate", "data": {"key_id": broker.api_key,
                                                              "secret_key": broker.secret_key}})
            newcomer.nothing_for()
        assert open_connections(broker) >= 1  # connected all along: silence, not a disconnect
        broker.set_stream(silent=False)
        post_order(broker, "s-2")  # what was lost is gone for good: no replay of s-1
        assert kinds(stream.events(3)) == [("accepted", "s-2"), ("new", "s-2"), ("fill", "s-2")]


def test_refuse_closes_new_connections_only(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream:
        assert broker.set_stream(refuse=True)["refuse"] is True
        with pytest.raises(InvalidStatus) as refused, connect(broker.stream_url, open_timeout=LONG):
            pass  # pragma: no cover - only on a bug
        assert refused.value.response.status_code == 403
        assert broker.set_stream()["refused"] == 1
        post_order(broker, "r-1")  # the connection that was open keeps working
        assert [e["event"] for e in stream.events(3)] == ["accepted", "new", "fill"]
        broker.set_stream(refuse=False)
        with raw_stream(broker) as again:
            post_order(broker, "r-2")
            assert kinds(again.events(3))[0] == ("accepted", "r-2")


def test_disconnect_closes_every_open_connection(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as listening, raw_stream(broker, listen=False) as idle:
        answer = broker.set_stream(disconnect=True)
        assert answer["closed_now"] == 2 and answer["disconnected"] == 2
        assert "disconnect" not in answer and answer["refuse"] is False  # a one-off action, not a setting
        assert listening.closed_by_server() == 1001 and idle.closed_by_server() == 1001
    wait_for(lambda: open_connections(broker) == 0, LONG, "the closed connections to be forgotten")
    assert broker.set_stream(disconnect=True)["closed_now"] == 0
    with raw_stream(broker) as stream:  # reconnecting works at once
        post_order(broker, "after-drop")
        assert kinds(stream.events(1)) == [("accepted", "after-drop")]


@pytest.mark.parametrize("body, message", [
    ({"delay": -1}, "delay must be seconds"),
    ({"delay": "soon"}, "delay must be seconds"),
    ({"delay": True}, "delay must be seconds"),
    ({"bogus": 1}, "unknown stream settings ['bogus']"),
    ({"silent": "yes"}, "silent must be true or false"),
    ({"refuse": 1}, "refuse must be true or false"),
    ({"duplicate": None}, "duplicate must be true or false"),
    ({"drop_next": -1}, "drop_next must be a whole number"),
    ({"drop_next": 1.5}, "drop_next must be a whole number"),
    ({"drop_events": "fill"}, "drop_events must be a list"),
    ({"drop_events": [1]}, "drop_events must be a list"),
    ({"disconnect": "yes"}, "disconnect must be true or false"),
    ({"disconnect": 1}, "disconnect must be true or false"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_stream_settings_are_400s(broker: PaperBrokerServer, body: Any, message: str) -> None:
    response = admin_stream(broker, body)
    assert response.status_code == 400 and message in response.json()["message"], response.text


def test_good_stream_settings_are_echoed(broker: PaperBrokerServer) -> None:
    # fractions too: the admin body is parsed with Decimal floats
    answer = broker.set_stream(delay=0.25, drop_next=2, drop_events=["fill", "canceled"], duplicate=True)
    assert {k: answer[k] for k in DEFAULT_FAULTS} == {
        "silent": False, "refuse": False, "delay": 0.25, "drop_next": 2, "drop_events": ["canceled", "fill"],
        "duplicate": True}
    assert broker.set_stream(delay=3600)["delay"] == 3600.0
    assert broker.set_stream(disconnect=False)["closed_now"] == 0


def test_a_rejected_change_changes_nothing(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream:
        response = admin_stream(broker, {"silent": True, "drop_next": 2, "delay": -1, "disconnect": True})
        assert response.status_code == 400
        state = broker.set_stream()
        assert {k: state[k] for k in DEFAULT_FAULTS} == DEFAULT_FAULTS and state["disconnected"] == 0
        post_order(broker, "unchanged")
        assert len(stream.events(3)) == 3


def test_reset_restores_the_default_stream(broker: PaperBrokerServer) -> None:
    broker.set_stream(silent=True, refuse=True, delay=2.5, drop_next=4, drop_events=["fill", "new"], duplicate=True)
    changed = broker.set_stream()
    assert changed["delay"] == 2.5 and changed["drop_events"] == ["fill", "new"] and changed["refuse"] is True
    broker.reset()
    state = broker.set_stream()
    assert {k: state[k] for k in DEFAULT_FAULTS} == DEFAULT_FAULTS
    assert {k: state[k] for k in ("sent", "dropped", "duplicated", "refused", "disconnected")} == \
        dict.fromkeys(("sent", "dropped", "duplicated", "refused", "disconnected"), 0)
    broker.set_price("AAPL", "100.00", spread="0.02")  # the reset unpinned it
    with raw_stream(broker) as stream:  # and the stream works normally again
        post_order(broker, "fresh")
        assert kinds(stream.events(3)) == [("accepted", "fresh"), ("new", "fresh"), ("fill", "fresh")]
        stream.nothing_for(0.1)


# --- 4. fills without a REST request -------------------------------------------------------------------------
def test_fills_are_streamed_without_any_rest_request(broker: PaperBrokerServer) -> None:
    set_fill_delay(broker, 0.3)
    with raw_stream(broker) as stream:
        order = post_order(broker, "tick-1")
        assert order["status"] in ("accepted", "new")  # not filled yet: the fill comes 0.3 s later
        # from here on no REST request at all: only the stream's ticker can work the book
        fill = [e for e in stream.events(3) if e["event"] == "fill"]
        assert len(fill) == 1 and fill[0]["order"]["client_order_id"] == "tick-1" and fill[0]["price"] == ASK
        stats = broker.stats()  # admin requests are not counted
        assert stats["requests"] == 1 and stats["by_route"] == {"POST /v2/orders": 1}
        assert broker.exchange.order_counts() == {"filled": 1}


def test_a_resting_limit_fills_when_the_price_comes_to_it(broker: PaperBrokerServer) -> None:
    with raw_stream(broker) as stream:
        post_order(broker, "rest-1", type="limit", limit_price="90.00")
        assert [e["event"] for e in stream.events(2)] == ["accepted", "new"]
        stream.nothing_for(0.1)
        broker.set_price("AAPL", "89.00", spread="0.02")  # an admin call, not a REST one
        fill = stream.event()
        assert fill["event"] == "fill" and Decimal(fill["price"]) == Decimal("89.01")
