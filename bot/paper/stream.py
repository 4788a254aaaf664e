"""The paper broker's trading stream at ``/stream``: Alpaca's ``trade_updates`` websocket.

authenticate -> authorization (authorized, or unauthorized and the socket closes), listen ->
listening, then every order event of the exchange. Frames are binary JSON as Alpaca's paper
endpoint sends them, MessagePack when the upgrade asked for ``Content-Type: application/msgpack``.
``StreamFaults`` (changed through ``/_paper/stream``) make it misbehave the ways a real stream does:
drop every connection, refuse new ones, go silent while connected, delay, drop or duplicate events.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgpack
from starlette.websockets import WebSocket, WebSocketDisconnect

from bot.paper.events import EventHub, Subscriber, TradeEvent
from bot.paper.faults import SettingError

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 10.0  # seconds a connection may stay unauthenticated
CLOSE_POLICY = 1008  # websocket close code: policy violation (bad keys)
CLOSE_GOING_AWAY = 1001
STREAMS = ("trade_updates",)
DELAY_RECHECK = 0.1  # seconds: a held event re-reads the delay this often (a lowered delay or a reset frees it)


@dataclass
class StreamFaults:
    """What the stream does wrong, now. Events lost to silence or drops are gone for good, as on
    Alpaca's stream (no replay): clients must back-fill over REST."""

    silent: bool = False  # connected sockets get nothing: no replies, no events
    refuse: bool = False  # new connections are closed before the handshake completes
    delay: float = 0.0  # every event is sent this many seconds after it happened
    drop_next: int = 0  # the next N events are dropped
    drop_events: frozenset[str] = frozenset()  # events of these kinds are dropped while set
    duplicate: bool = False  # every event is sent twice
    counts: dict[str, int] = field(default_factory=lambda: {"sent": 0, "dropped": 0, "duplicated": 0,
                                                            "connections": 0, "refused": 0, "disconnected": 0})

    KNOBS = ("silent", "refuse", "delay", "drop_next", "drop_events", "duplicate")

    def update(self, changes: Mapping[str, Any]) -> None:
        unknown = set(changes) - set(self.KNOBS) - {"disconnect"}
        if unknown:
            raise SettingError(f"unknown stream settings {sorted(unknown)}; known: {(*self.KNOBS, 'disconnect')}")
        if not isinstance(changes.get("disconnect", False), bool):
            raise SettingError("disconnect must be true or false")
        checked = {name: _checked(name, value) for name, value in changes.items() if name != "disconnect"}
        for name, value in checked.items():
            setattr(self, name, value)

    def to_json(self) -> dict[str, Any]:
        return {"silent": self.silent, "refuse": self.refuse, "delay": self.delay, "drop_next": self.drop_next,
                "drop_events": sorted(self.drop_events), "duplicate": self.duplicate, **self.counts}

    def copies(self, event: TradeEvent) -> int:
        """How many times ``event`` is sent: 0 (dropped or silent), 1, or 2 (duplicated)."""
        if self.silent or event.event in self.drop_events:
            self.counts["dropped"] += 1
            return 0
        if self.drop_next > 0:
            self.drop_next -= 1
            self.counts["dropped"] += 1
            return 0
        if self.duplicate:
            self.counts["duplicated"] += 1
            return 2
        return 1


def _checked(name: str, value: Any) -> Any:
    if name in ("silent", "refuse", "duplicate"):
        if not isinstance(value, bool):
            raise SettingError(f"{name} must be true or false")
        return value
    if name == "delay":
        # the admin body is parsed with parse_float=Decimal: 0.5 arrives as Decimal("0.5")
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) or not 0 <= value <= 3600:
            raise SettingError("delay must be seconds from 0 to 3600")
        return float(value)
    if name == "drop_next":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SettingError("drop_next must be a whole number >= 0")
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingError('drop_events must be a list of event names, e.g. ["fill"]')
    return frozenset(value)


class TradingStream:
    """The /stream endpoint of one broker: its connections, its faults, and the ticker that works
    the book while anyone listens (so a fill is reported when it happens, not at the next request)."""

    def __init__(self, hub: EventHub, exchange: Any, api_key: str, secret_key: str) -> None:
        self.hub, self.exchange = hub, exchange
        self._key, self._secret = api_key.encode(), secret_key.encode()
        self.faults = StreamFaults()
        self._sockets: set[WebSocket] = set()
        self._ticker: asyncio.Task[None] | None = None

    @property
    def connections(self) -> int:
        return len(self._sockets)

    def reset(self) -> None:
        self.faults = StreamFaults()

    async def disconnect_all(self) -> int:
        sockets = list(self._sockets)
        for socket in sockets:
            with contextlib.suppress(Exception):
                await socket.close(CLOSE_GOING_AWAY)
        self.faults.counts["disconnected"] += len(sockets)
        return len(sockets)

    async def serve(self, websocket: WebSocket) -> None:
        if self.faults.refuse:
            self.faults.counts["refused"] += 1
            await websocket.close(CLOSE_GOING_AWAY)
            return
        packed = "msgpack" in websocket.headers.get("content-type", "")
        await websocket.accept()
        self._sockets.add(websocket)
        self.faults.counts["connections"] += 1
        subscriber: Subscriber | None = None
        try:
            if not await self._authenticate(websocket, packed):
                return
            subscriber = self.hub.subscribe(asyncio.get_running_loop())
            self._start_ticker()
            await _first_done(self._read(websocket, packed, subscriber), self._write(websocket, packed, subscriber))
        except (WebSocketDisconnect, RuntimeError):  # the client went away (RuntimeError: sent after close)
            pass
        finally:
            self._sockets.discard(websocket)
            if subscriber is not None:
                self.hub.unsubscribe(subscriber)
            with contextlib.suppress(Exception):
                await websocket.close()

    async def _authenticate(self, websocket: WebSocket, packed: bool) -> bool:
        try:
            message = await asyncio.wait_for(_receive(websocket), AUTH_TIMEOUT)
        except asyncio.TimeoutError:
            return False
        while self.faults.silent:  # a silent stream answers nothing, not even a login
            await _receive(websocket)
        action = message.get("action")
        data = _mapping(message.get("data"))
        if action == "authenticate" and self._valid(data.get("key_id"), data.get("secret_key")):
            await self._send(websocket, packed, {"stream": "authorization",
                                                 "data": {"status": "authorized", "action": "authenticate"}})
            return True
        reason = "access key verification failed" if action == "authenticate" else "authenticate first"
        log.info("stream: refused a connection (%s)", reason)
        await self._send(websocket, packed, {"stream": "authorization", "data": {
            "status": "unauthorized", "action": action if isinstance(action, str) else "", "message": reason}})
        await websocket.close(CLOSE_POLICY)
        return False

    def _valid(self, key: Any, secret: Any) -> bool:
        if not isinstance(key, str) or not isinstance(secret, str):
            return False
        return hmac.compare_digest(key.encode(), self._key) & hmac.compare_digest(secret.encode(), self._secret)

    async def _read(self, websocket: WebSocket, packed: bool, subscriber: Subscriber) -> None:
        while True:
            message = await _receive(websocket)
            if self.faults.silent:
                continue  # a silent stream reads but never answers
            if message.get("action") == "listen":
                wanted = _mapping(message.get("data")).get("streams")
                streams = [s for s in wanted if s in STREAMS] if isinstance(wanted, list) else []
                subscriber.listening = "trade_updates" in streams
                await self._send(websocket, packed, {"stream": "listening", "data": {"streams": streams}})
            else:
                await self._send(websocket, packed, {"stream": "error", "data": {
                    "action": str(message.get("action", "")), "error_message": "unrecognized action"}})

    async def _write(self, websocket: WebSocket, packed: bool, subscriber: Subscriber) -> None:
        while True:
            event = await subscriber.queue.get()
            if not subscriber.listening:
                continue
            while (wait := event.at + self.faults.delay - time.monotonic()) > 0:
                await asyncio.sleep(min(wait, DELAY_RECHECK))  # the delay in force now, not at arrival
            for _ in range(self.faults.copies(event)):
                await self._send(websocket, packed, event.message())
                self.faults.counts["sent"] += 1

    async def _send(self, websocket: WebSocket, packed: bool, message: dict[str, Any]) -> None:
        if packed:
            await websocket.send_bytes(msgpack.packb(message, use_bin_type=True))
        else:
            await websocket.send_bytes(json.dumps(message, separators=(",", ":")).encode())

    def _start_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick_while_listened())

    async def _tick_while_listened(self) -> None:
        while self.hub.subscribers:
            due = self.exchange.next_due()
            await asyncio.sleep(0.25 if due is None else min(0.25, max(0.005, due)))
            try:
                self.exchange.tick()
            except Exception:  # a bug in the exchange must not end event delivery for good
                log.exception("stream ticker: working the book failed")


async def _receive(websocket: WebSocket) -> dict[str, Any]:
    """The next client message as a dict (JSON text or binary, or MessagePack); junk is {}."""
    raw = await websocket.receive()
    if raw["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(raw.get("code", 1000))
    text = raw.get("text")
    payload: str | bytes = text if isinstance(text, str) else raw.get("bytes") or b""
    for decode in (json.loads, _unpack):
        try:
            message = decode(payload)
        except Exception:
            continue
        return message if isinstance(message, dict) else {}
    return {}


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _unpack(payload: Any) -> Any:
    return msgpack.unpackb(payload if isinstance(payload, bytes) else payload.encode(), raw=False)


async def _first_done(*coroutines: Any) -> None:
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # re-raise a disconnect
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

