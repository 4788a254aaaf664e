"""Helpers to use the paper broker from tests and benchmarks.

- `paper_transport(**options)` -> (transport, exchange): an httpx transport for a SYNC
  httpx.Client that runs the app in-process (its own event-loop thread, no sockets).
- `PaperBrokerServer(**options)`: a real uvicorn server in a background thread on a free
  127.0.0.1 port; a context manager that always stops it.
- `PaperAdmin(client)`: the /_paper/ admin endpoints as methods.

`options` are PaperConfig fields: always_open, seed, cash, symbols, fill_delay, latency,
latency_jitter, fault_500, fault_429, fault_hang, hang_seconds, fault_500_when, retry_after,
rate_limit, enforce_rate_limit, step_seconds, volatility, now, api_key, secret_key.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any

import httpx

from bot.embedded_redis import free_port
from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY, PaperConfig
from bot.paper.app import create_app
from bot.paper.exchange import Exchange

log = logging.getLogger(__name__)


def auth_headers(api_key: str = DEMO_API_KEY, secret_key: str = DEMO_SECRET_KEY) -> dict[str, str]:
    return {"APCA-API-KEY-ID": api_key, "APCA-API-SECRET-KEY": secret_key}


class SyncASGITransport(httpx.BaseTransport):
    """Runs an ASGI app on a private event loop thread and answers a sync httpx.Client.

    Honors the client's read timeout: past it, httpx.ReadTimeout is raised while the app keeps
    working on the request, like a real server whose client gave up (so a hung POST may still
    create its order later).
    """

    def __init__(self, app: Any, client_addr: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self.app = app
        self.client_addr = client_addr
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="paper-asgi", daemon=True)
        self._thread.start()
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("transport is closed", request=request)
        body = request.read()
        timeout = (request.extensions.get("timeout") or {}).get("read")
        future = asyncio.run_coroutine_threadsafe(self._call(request, body), self._loop)
        try:
            status, headers, content = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise httpx.ReadTimeout("paper broker did not answer in time", request=request) from None
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _call(self, request: httpx.Request, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        url = request.url
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request.method, "scheme": url.scheme or "http",
            "path": url.path, "raw_path": url.raw_path.split(b"?")[0], "query_string": url.query,
            "root_path": "", "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": self.client_addr, "server": (url.host or "paper", url.port or 80),
        }
        sent_body = False
        done = asyncio.Event()
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    done.set()

        try:
            await self.app(scope, receive, send)
        finally:
            done.set()
        return status, headers, b"".join(chunks)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()


class PaperTransport(SyncASGITransport):
    @property
    def exchange(self) -> Exchange:
        return self.app.state.exchange


def paper_transport(**options: Any) -> tuple[PaperTransport, Exchange]:
    """(transport for a sync httpx.Client, the broker's Exchange). Close the client (or the
    transport) when done: it owns an event-loop thread."""
    app = create_app(PaperConfig(**options))
    transport = PaperTransport(app)
    return transport, transport.exchange


def paper_client(transport: httpx.BaseTransport, base_url: str = "http://paper", **kwargs: Any) -> httpx.Client:
    """A sync client with the demo key pair, for raw-HTTP tests."""
    headers = {**auth_headers(), **kwargs.pop("headers", {})}
    return httpx.Client(transport=transport, base_url=base_url, headers=headers, **kwargs)


class PaperAdmin:
    """The /_paper/ endpoints over any httpx.Client whose base_url is the broker."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def call(self, method: str, path: str, json: Any = None) -> Any:
        response = self.client.request(method, f"/_paper/{path.lstrip('/')}", json=json)
        if response.status_code != 200:
            raise RuntimeError(f"paper admin {method} {path}: {response.status_code} {response.text}")
        return response.json()

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "stats")

    def reset(self) -> dict[str, Any]:
        return self.call("POST", "reset")

    def set_price(self, symbol: str, price: Any, **pin: Any) -> dict[str, Any]:
        return self.call("POST", "price", {"symbol": symbol, "price": None if price is None else str(price), **pin})

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        return self.call("POST", "faults", settings)

    def set_latency(self, latency: Any = None, jitter: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if latency is not None:
            body["latency"] = latency
        if jitter is not None:
            body["latency_jitter"] = jitter
        return self.call("POST", "latency", body)

    def set_clock(self, always_open: bool | None = None, mode: str | None = None) -> dict[str, Any]:
        body = {"always_open": always_open} if always_open is not None else {"mode": mode}
        return self.call("POST", "clock", body)

    def set_stream(self, **settings: Any) -> dict[str, Any]:
        """The trading stream's faults (silent, refuse, delay, drop_next, drop_events, duplicate,
        disconnect=True); with no settings, its state and counts."""
        return self.call("POST", "stream", settings) if settings else self.call("GET", "stream")

    def set_fill_delay(self, seconds: float) -> dict[str, Any]:
        return self.call("POST", "fill_delay", {"fill_delay": seconds})


class PaperBrokerServer:
    """A real paper broker (uvicorn in a daemon thread) on a free loopback port.

        with PaperBrokerServer(always_open=True, seed=1) as broker:
            httpx.get(broker.base_url + "/v2/clock", headers=broker.headers)
    """

    def __init__(self, *, startup_timeout: float = 10.0, **options: Any) -> None:
        options.pop("host", None)
        options.pop("port", None)
        self.options = options
        self.startup_timeout = startup_timeout
        self.config: PaperConfig | None = None
        self.app: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._admin_client: httpx.Client | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> PaperBrokerServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> PaperBrokerServer:
        last_error = "no attempt"
        for _ in range(3):  # a free port can be taken between probing and binding: retry
            try:
                self._start_once()
                return self
            except RuntimeError as error:
                last_error = str(error)
                self.stop()
        raise RuntimeError(f"paper broker did not start: {last_error}")

    def _start_once(self) -> None:
        import uvicorn

        self.config = PaperConfig(host="127.0.0.1", port=free_port(), **self.options)
        self.app = create_app(self.config)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host=self.config.host, port=self.config.port, log_config=None, access_log=False,
            lifespan="off", timeout_graceful_shutdown=1))
        self._thread = threading.Thread(target=self._server.run, name="paper-broker", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError(f"server thread ended (port {self.config.port} taken?)")
            if self._server.started and self._answers():
                return
            time.sleep(0.02)
        raise RuntimeError(f"no answer on {self.base_url} within {self.startup_timeout}s")

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/_paper/stats", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self._admin_client is not None:
            self._admin_client.close()
            self._admin_client = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout=5)
            if self._thread.is_alive():
                log.warning("paper broker thread did not stop")
        self._server = None
        self._thread = None

    # --- access -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self.config is not None, "server not started"
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def stream_url(self) -> str:
        """The trading stream (trade_updates websocket)."""
        return self.base_url.replace("http://", "ws://", 1) + "/stream"

    @property
    def api_key(self) -> str:
        assert self.config is not None
        return self.config.api_key

    @property
    def secret_key(self) -> str:
        assert self.config is not None
        return self.config.secret_key

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self.api_key, self.secret_key)

    @property
    def exchange(self) -> Exchange:
        return self.app.state.exchange

    def client(self, **kwargs: Any) -> httpx.Client:
        """A sync client with base_url and the key headers (the caller closes it)."""
        return httpx.Client(base_url=self.base_url, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs)

    def admin(self, method: str = "GET", path: str = "stats", json: Any = None) -> Any:
        return self._admin().call(method, path, json)

    def _admin(self) -> PaperAdmin:
        if self._admin_client is None:
            self._admin_client = httpx.Client(base_url=self.base_url, timeout=10)
        return PaperAdmin(self._admin_client)

    def stats(self) -> dict[str, Any]:
        return self._admin().stats()

    def reset(self) -> dict[str, Any]:
        return self._admin().reset()

    def set_price(self, symbol: str, price: Any, **pin: Any) -> dict[str, Any]:
        return self._admin().set_price(symbol, price, **pin)

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        return self._admin().set_faults(**settings)

    def set_latency(self, latency: Any = None, jitter: float | None = None) -> dict[str, Any]:
        return self._admin().set_latency(latency, jitter)

    def set_clock(self, always_open: bool | None = None, mode: str | None = None) -> dict[str, Any]:
        return self._admin().set_clock(always_open, mode)

    def set_stream(self, **settings: Any) -> dict[str, Any]:
        return self._admin().set_stream(**settings)

    def set_fill_delay(self, seconds: float) -> dict[str, Any]:
        return self._admin().set_fill_delay(seconds)
