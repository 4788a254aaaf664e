"""The order-updates listener: holds Alpaca's trade_updates websocket and records every event in
Redis (bot.order_events), so workers learn of fills without spending REST requests.

One per account: a Redis lease makes a second listener a hot standby. Each session: connect,
authenticate, listen, then back-fill over REST what the stream may have missed while nobody
listened (open orders, and every order submitted since the stream was last heard from), then
record events as they come. A quiet stream is probed with a ``listen`` (answered by ``listening``):
no answer within the probe timeout is a connected-but-silent socket, and the session starts over.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import msgpack
import redis
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from bot.alpaca.errors import AlpacaError
from bot.lease import Lease
from bot.order_events import OrderEvent, OrderEvents
from bot.reconcile import Reconciler
from bot.streams import default_consumer_name

log = logging.getLogger(__name__)

# what ends a session and is retried after a backoff (anything else is a bug: logged with its traceback)
SESSION_FAILURES: tuple[type[BaseException], ...] = (
    ConnectionClosed, InvalidHandshake, OSError, TimeoutError, AlpacaError, redis.RedisError)


class StreamSilent(TimeoutError):
    """Connected, but the stream answered no probe: Alpaca's connected-but-silent socket."""


class StreamRefused(ConnectionError):
    """The stream refused our keys (or answered the handshake with something else)."""


@dataclass(frozen=True)
class ListenerConfig:
    holder: str = field(default_factory=lambda: default_consumer_name("listener"))
    lease_ttl: float = 10.0  # a dead listener's standby takes over within about this long
    probe_after: float = 5.0  # a stream quiet this long is asked whether it still listens
    probe_timeout: float = 5.0  # ... and is taken for silent when no answer comes this long
    connect_timeout: float = 10.0
    backoff_min: float = 0.5  # reconnect pauses: jittered, doubling up to backoff_max
    backoff_max: float = 30.0
    lookback: float = 86400.0  # first start: back-fill orders submitted this long ago
    margin: float = 300.0  # back-fill from this long before the stream was last heard from
    heard_every: float = 1.0  # record "heard from the stream" at most this often
    reconcile_every: float = 300.0  # and after every (re)connect: the broker against the books
    msgpack: bool = False  # ask the stream for MessagePack frames instead of JSON


def stream_url(base_url: str) -> str:
    """The trading stream beside a REST base URL: https://h -> wss://h/stream."""
    scheme, rest = base_url.rstrip("/").split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/stream"


class Listener:
    def __init__(self, *, url: str, api_key: str, secret_key: str, r: redis.Redis, events: OrderEvents,
                 client: Any, config: ListenerConfig | None = None,
                 dial: Callable[..., ClientConnection] = connect, reconciler: Reconciler | None = None) -> None:
        self.url, self._key, self._secret = url, api_key, secret_key
        self.config = config = config or ListenerConfig()
        self.events, self.client, self.dial = events, client, dial
        self.lease = Lease(r, events.keys.listener_lease, config.holder, config.lease_ttl)
        self.heard_at: float | None = events.last_heard()  # wall time the stream was last heard from
        self.reconciler = reconciler
        self.on_progress: Callable[[], None] = lambda: None  # called every loop turn (a heartbeat's progress)
        self.sessions = 0
        self.recorded = 0
        self.reconciles = 0
        self._marked_heard = 0.0
        self._reconciled_at = 0.0  # monotonic

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """Listen until ``stop``: lead while holding the lease, stand by while another does."""
        failures = 0
        standby_logged = False
        try:
            while not stop.is_set():
                self.on_progress()
                try:
                    if not self.lease.take():
                        if not standby_logged:
                            log.info("listener %s: standby, the lease is held by %s", self.config.holder,
                                     self.lease.holder_now())
                            standby_logged = True
                        stop.wait(self.lease.renew_every)
                        continue
                    standby_logged = False
                    if self.sessions == 0 and self.reconciler is not None:
                        # a fleet (re)starting: workers started with --wait-reconcile wait for this
                        # listener's first reconciliation, not a stale one of an earlier run
                        self.reconciler.forget_reconciled()
                    why = self.session(stop)
                    failures = 0
                    log.info("listener %s: session ended: %s", self.config.holder, why)
                except SESSION_FAILURES as exc:
                    failures += 1
                    self._mark("down", error=_describe(exc))
                    pause = self._backoff(failures)
                    log.warning("listener %s: %s; reconnecting in %.1fs", self.config.holder, _describe(exc), pause)
                    stop.wait(pause)
                except Exception:
                    failures += 1
                    log.exception("listener %s: internal error", self.config.holder)
                    stop.wait(self._backoff(failures))
        finally:
            self._stand_down()

    def session(self, stop: threading.Event) -> str:
        """One connection, from handshake to its end; returns why it ended without an error."""
        self.sessions += 1
        self._mark("connecting")
        headers = {"Content-Type": "application/msgpack"} if self.config.msgpack else None
        with self.dial(self.url, additional_headers=headers, open_timeout=self.config.connect_timeout,
                       ping_interval=10, ping_timeout=30, close_timeout=2) as ws:
            self._handshake(ws, stop)
            began = time.time()
            backfilled = self.backfill()
            self.reconcile()  # what the stream cannot tell: orders of ours never journaled, drift
            self.heard_at = began
            self._mark("live", heard=True, connected_at=repr(began), backfilled=backfilled, error="")
            log.info("listener %s: live on %s (back-filled %d orders)", self.config.holder, self.url, backfilled)
            return self._listen(ws, stop)

    def _listen(self, ws: ClientConnection, stop: threading.Event) -> str:
        config = self.config
        quiet_since = time.monotonic()
        probe_sent: float | None = None
        while not stop.is_set():
            self.on_progress()
            if self.lease.due() and not self.lease.take():
                return "lost the lease"
            if time.monotonic() - self._reconciled_at >= config.reconcile_every:
                self.reconcile()
            try:
                raw = ws.recv(timeout=0.5)
            except TimeoutError:
                now = time.monotonic()
                if probe_sent is not None and now - probe_sent >= config.probe_timeout:
                    raise StreamSilent(f"no answer from the stream for {now - quiet_since:.0f}s") from None
                if probe_sent is None and now - quiet_since >= config.probe_after:
                    self._send(ws, {"action": "listen", "data": {"streams": ["trade_updates"]}})
                    probe_sent = now
                continue
            quiet_since, probe_sent = time.monotonic(), None
            self._heard(time.time())
            self.handle(_decode(raw))
        return "stopped"

    # ------------------------------------------------------------------ messages

    def handle(self, message: Any) -> None:
        if not isinstance(message, dict) or message.get("stream") != "trade_updates":
            return  # listening (a probe's answer), authorization, errors: nothing to record
        event = OrderEvent.from_message(message.get("data"))
        if event is None:
            log.warning("listener %s: an event without an order id: %.200s", self.config.holder, message)
            return
        added, _moved = self.events.record(event)
        self.recorded += int(added)
        log.debug("event %s %s %s", event.event, event.client_order_id, event.status)

    def backfill(self) -> int:
        """Record what REST shows of the orders the stream may have missed: every open order, and
        every order submitted since the stream was last heard from (less a margin). Returns how
        many orders it read."""
        config = self.config
        since = (self.heard_at - config.margin) if self.heard_at is not None else time.time() - config.lookback
        after = datetime.fromtimestamp(since, timezone.utc)
        count = 0
        for order in self.client.orders_since(after - timedelta(microseconds=1), status="all"):
            self.events.record(OrderEvent.backfill(order.raw))
            count += 1
        for order in self.client.orders_since(datetime(1970, 1, 2, tzinfo=timezone.utc), status="open"):
            self.events.record(OrderEvent.backfill(order.raw))
            count += 1
        return count

    def reconcile(self) -> None:
        """Reconcile and fix (adopt, record external orders, release); a failure is logged and the
        next run (the next reconnect, or reconcile_every) tries again."""
        self._reconciled_at = time.monotonic()
        if self.reconciler is None:
            return
        try:
            report = self.reconciler.run(apply=True)
        except (AlpacaError, OSError, redis.RedisError) as exc:
            log.warning("listener %s: reconciliation failed: %s", self.config.holder, _describe(exc))
            return
        self.reconciles += 1
        log.log(logging.INFO if report.clean else logging.WARNING,
                "listener %s: reconciled %d orders: %d adopted, %d external, %d released, %d drifting",
                self.config.holder, report.orders_read, len(report.adopted), len(report.external),
                len(report.released), len(report.position_drift))

    # ------------------------------------------------------------------ plumbing

    def _handshake(self, ws: ClientConnection, stop: threading.Event) -> None:
        deadline = time.monotonic() + self.config.connect_timeout
        self._send(ws, {"action": "authenticate", "data": {"key_id": self._key, "secret_key": self._secret}})
        answer = self._answer(ws, deadline, stop)
        status = (answer.get("data") or {}).get("status") if isinstance(answer, dict) else None
        if status != "authorized":
            raise StreamRefused(f"the trading stream did not authorize us (answered {status or 'something else'})")
        self._send(ws, {"action": "listen", "data": {"streams": ["trade_updates"]}})
        while True:
            answer = self._answer(ws, deadline, stop)
            if isinstance(answer, dict) and answer.get("stream") == "listening":
                return
            self.handle(answer)  # an event may come before the confirmation

    def _answer(self, ws: ClientConnection, deadline: float, stop: threading.Event) -> Any:
        """The next message before ``deadline``, read in short slices so that a stop is seen."""
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return _decode(ws.recv(timeout=min(0.5, left)))
            except TimeoutError:
                continue
        raise TimeoutError("stopped" if stop.is_set() else "the trading stream did not answer the handshake")

    def _send(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        ws.send(msgpack.packb(message) if self.config.msgpack else json.dumps(message))

    def _heard(self, at: float) -> None:
        self.heard_at = at
        if time.monotonic() - self._marked_heard >= self.config.heard_every:
            self._marked_heard = time.monotonic()
            self._mark("live", heard=True)

    def _mark(self, state: str, **fields: Any) -> None:
        self.events.mark_listener(self.config.holder, state, **fields)

    def _backoff(self, failures: int) -> float:
        cap = min(self.config.backoff_max, self.config.backoff_min * 2 ** min(failures - 1, 20))
        return random.uniform(cap / 2, cap)  # jitter: standbys and restarts do not reconnect in step

    def _stand_down(self) -> None:
        try:
            if self.lease.holder_now() == self.config.holder:
                self._mark("down", error="stopped")
            self.lease.release()
        except redis.RedisError as exc:
            log.warning("listener %s: could not give the lease back: %s", self.config.holder, exc)
        log.info("listener %s stopped: %d sessions, %d events recorded", self.config.holder, self.sessions,
                 self.recorded)


def _decode(raw: Any) -> Any:
    if isinstance(raw, bytes):
        try:
            return json.loads(raw)
        except ValueError:
            try:
                return msgpack.unpackb(raw, raw=False)
            except Exception:
                return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidURI):
        return f"bad stream URL: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
