"""HTTP layer of the paper broker: Alpaca's paths, auth, error bodies and rate headers, plus
latency/fault injection and the loopback-only admin endpoints under /_paper/.

Every Alpaca route goes through `_serve`: count -> auth -> read the body -> rate window -> fault
draw -> latency -> handler -> (a hang: the answer waits; or a 500 after the fact) -> X-RateLimit-*
headers. A hung request takes effect first and answers late, like a backend whose reply is slow:
its client may give up (time out, disconnect) and the order still exists.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bot.paper import DEMO_API_KEY, PaperConfig, surface
from bot.paper.account import PaperExtras
from bot.paper.clock import CLOCK_MODES
from bot.paper.exchange import CODE_INVALID, CODE_UNAUTHORIZED, BrokerError, Exchange, OrderQuery
from bot.paper.faults import FaultInjector, RateWindow, SettingError
from bot.paper.replay import Replay, session_closes_between
from bot.paper.stream import TradingStream

log = logging.getLogger(__name__)

Handler = Callable[[Request, "BrokerState"], Awaitable[Response]]
MAX_ORDER_LIMIT = 500


@dataclass
class Stats:
    """Request counts since start or the last reset (admin requests are not counted)."""

    requests: int = 0
    by_route: dict[str, int] = field(default_factory=dict)
    by_method: dict[str, int] = field(default_factory=dict)
    by_group: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, route: str, method: str, group: str, status: int) -> None:
        with self.lock:
            self.requests += 1
            for counter, name in ((self.by_route, route), (self.by_method, method),
                                  (self.by_group, group), (self.by_status, str(status))):
                counter[name] = counter.get(name, 0) + 1

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {"requests": self.requests, "by_route": dict(self.by_route), "by_method": dict(self.by_method),
                    "by_group": dict(self.by_group), "by_status": dict(self.by_status)}


@dataclass
class BrokerState:
    config: PaperConfig
    exchange: Exchange
    faults: FaultInjector
    rates: RateWindow
    stream: TradingStream
    stats: Stats = field(default_factory=Stats)
    extras: PaperExtras = field(default_factory=PaperExtras)  # configurations, assets (bot.paper.account)
    replay: Replay | None = None  # the replay mode's market time and recorded ticks

    def reset(self) -> None:
        self.extras.reset()
        self.exchange.reset()
        self.faults.restore(self.config.fault_settings())
        self.rates.reset()
        self.stream.reset()
        self.stats = Stats()


# --- responses ----------------------------------------------------------------------------
def error_response(error: BrokerError, group: str) -> JSONResponse:
    body = error.body()
    if group == "data":
        body = {"message": error.message}  # market-data errors carry no code
    return JSONResponse(body, status_code=error.status)


def _authorized(request: Request, config: PaperConfig) -> bool:
    key = request.headers.get("apca-api-key-id", "")
    secret = request.headers.get("apca-api-secret-key", "")
    return bool(key and secret) and hmac.compare_digest(key.encode(), config.api_key.encode()) \
        and hmac.compare_digest(secret.encode(), config.secret_key.encode())


# Status recorded for a request whose client went away before it was answered (nginx's convention).
CLIENT_CLOSED = 499


async def _serve(request: Request, state: BrokerState, group: str, handler: Handler) -> Response:
    bucket = "data" if group == "data" else "trading"
    if not _authorized(request, state.config):
        response: Response = error_response(BrokerError(401, "request is not authorized", CODE_UNAUTHORIZED), "")
        response.headers.update(state.rates.peek(bucket).headers())
        return response
    try:
        # read (and cache) the whole request now: a client that gives up during an injected delay
        # must not keep a request that reached the broker from taking effect
        await request.body()
    except ClientDisconnect:
        log.info("%s %s: the client went away before its request body arrived", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED)
    rate = state.rates.consume(bucket)
    if not rate.allowed:
        return _too_many(rate.reset - time.time(), rate.headers(), group)
    fault = state.faults.draw(group, mutating=request.method in ("POST", "DELETE", "PATCH"))
    delay = state.faults.latency(group)
    if request.method == "POST" and request.url.path == "/v2/orders":
        delay += state.faults.settings.submit_delay  # delayed in the network: takes effect late, maybe unseen
    if delay > 0:
        await asyncio.sleep(delay)
    if fault is not None and fault.kind == "429":
        retry_after = state.faults.settings.retry_after
        headers = {**rate.headers(), "X-RateLimit-Remaining": "0",
                   "X-RateLimit-Reset": str(math.ceil(time.time() + retry_after))}
        return _too_many(retry_after, headers, group)
    if fault is not None and fault.kind == "500" and not fault.after:
        return _server_error(rate.headers(), group)
    try:
        response = await handler(request, state)
    except BrokerError as error:
        response = error_response(error, group)
    if fault is not None and fault.kind == "500" and fault.after:
        log.info("injected 500 after %s %s took effect", request.method, request.url.path)
        return _server_error(rate.headers(), group)
    if fault is not None and fault.kind == "hang":
        # a slow backend: the request took effect above, its answer comes late (maybe to nobody)
        await asyncio.sleep(state.faults.settings.hang_seconds)
    response.headers.update(rate.headers())
    return response


def _too_many(retry_after: float, headers: dict[str, str], group: str) -> JSONResponse:
    body: dict[str, Any] = {"message": "too many requests"}
    if group != "data":
        body = {"code": 42910000, "message": "rate limit exceeded"}
    return JSONResponse(body, status_code=429,
                        headers={**headers, "Retry-After": str(max(1, math.ceil(retry_after)))})


def _server_error(headers: dict[str, str], group: str) -> JSONResponse:
    body: dict[str, Any] = {"message": "internal server error"}
    if group != "data":
        body = {"code": 50010000, "message": "internal server error"}
    return JSONResponse(body, status_code=500, headers=headers)


def api_route(path: str, method: str, group: str, handler: Handler) -> Route:
    label = f"{method} {path}"

    async def endpoint(request: Request) -> Response:
        state: BrokerState = request.app.state.broker
        response = await _serve(request, state, group, handler)
        state.stats.record(label, method, group, response.status_code)
        return response

    endpoint.__name__ = label
    return Route(path, endpoint, methods=[method])


# --- request parsing ------------------------------------------------------------------------
_json_body = surface.json_body


def _query_choice(request: Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.query_params.get(name) or default
    if value not in allowed:
        raise BrokerError(422, f"invalid {name}: {value!r}, expected one of {', '.join(allowed)}", CODE_INVALID)
    return value


def _query_time(request: Request, name: str) -> datetime | None:
    text = request.query_params.get(name)
    if not text:
        return None
    from bot.alpaca.models import ts

    try:
        value = ts(text)
    except ValueError:
        raise BrokerError(422, f"invalid {name}: {text!r} is not an RFC 3339 time", CODE_INVALID) from None
    assert value is not None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _query_limit(request: Request) -> int:
    text = request.query_params.get("limit") or "50"
    try:
        limit = int(text)
    except ValueError:
        raise BrokerError(422, f"invalid limit: {text!r}", CODE_INVALID) from None
    if limit < 1:
        raise BrokerError(422, "limit must be >= 1", CODE_INVALID)
    if limit > MAX_ORDER_LIMIT:  # Alpaca refuses more than its maximum rather than cutting the page
        raise BrokerError(422, f"limit must be <= {MAX_ORDER_LIMIT}", CODE_INVALID)
    return limit


def _query_bool(request: Request, name: str) -> bool:
    text = (request.query_params.get(name) or "false").lower()
    if text not in ("true", "false"):
        raise BrokerError(422, f"invalid {name}: {text!r}, expected true or false", CODE_INVALID)
    return text == "true"


def _symbols_param(request: Request, required: bool = True) -> list[str]:
    symbols = [s.strip() for s in request.query_params.get("symbols", "").split(",") if s.strip()]
    if required and not symbols:
        raise BrokerError(400, "symbols is required")
    return symbols


# --- trading handlers -----------------------------------------------------------------------------
async def get_account(request: Request, st: BrokerState) -> Response:
    return JSONResponse(st.exchange.account())


async def list_positions(request: Request, st: BrokerState) -> Response:
    return JSONResponse(st.exchange.positions())


async def get_position(request: Request, st: BrokerState) -> Response:
    return JSONResponse(st.exchange.position(request.path_params["symbol"]))


async def close_position(request: Request, st: BrokerState) -> Response:
    q = request.query_params
    return JSONResponse(st.exchange.close_position(request.path_params["symbol"], q.get("qty"), q.get("percentage")))


async def submit_order(request: Request, st: BrokerState) -> Response:
    return JSONResponse(st.exchange.submit(await _json_body(request)))


async def list_orders(request: Request, st: BrokerState) -> Response:
    symbols = tuple(s.upper() for s in _symbols_param(request, required=False))
    side = request.query_params.get("side") or None
    if side not in (None, "buy", "sell"):
        raise BrokerError(422, f"invalid side: {side!r}", CODE_INVALID)
    query = OrderQuery(status=_query_choice(request, "status", ("open", "closed", "all"), "open"),
                       limit=_query_limit(request), after=_query_time(request, "after"),
                       until=_query_time(request, "until"),
                       direction=_query_choice(request, "direction", ("asc", "desc"), "desc"),
                       symbols=symbols, side=side,
                       after_order_id=request.query_params.get("after_order_id") or None,
                       before_order_id=request.query_params.get("before_order_id") or None,
                       nested=_query_bool(request, "nested"))
    return JSONResponse(st.exchange.list_orders(query))


async def get_order(request: Request, st: BrokerState) -> Response:
    return JSONResponse(st.exchange.get_order(request.path_params["order_id"], _query_bool(request, "nested")))


async def get_order_by_client_id(request: Request, st: BrokerState) -> Response:
    client_order_id = request.query_params.get("client_order_id")
    if not client_order_id:
        raise BrokerError(422, "client_order_id is required", CODE_INVALID)
    return JSONResponse(st.exchange.get_order_by_client_id(client_order_id))


async def cancel_order(request: Request, st: BrokerState) -> Response:
    st.exchange.cancel(request.path_params["order_id"])
    return Response(status_code=204)


async def cancel_all_orders(request: Request, st: BrokerState) -> Response:
    return JSONResponse(st.exchange.cancel_all(), status_code=207)


async def replace_order(request: Request, st: BrokerState) -> Response:
    return JSONResponse(st.exchange.replace(request.path_params["order_id"], await _json_body(request)))


async def close_all_positions(request: Request, st: BrokerState) -> Response:
    results = st.exchange.close_all_positions(_query_bool(request, "cancel_orders"))
    return JSONResponse(results, status_code=207)


async def get_clock(request: Request, st: BrokerState) -> Response:
    return JSONResponse(st.exchange.clock_json())


# --- market-data handlers --------------------------------------------------------------------------
async def snapshots(request: Request, st: BrokerState) -> Response:
    surface.check_feed(request)
    return JSONResponse(st.exchange.market_data(_symbols_param(request)))


def _latest(key: str, part: str) -> Handler:
    async def handler(request: Request, st: BrokerState) -> Response:
        surface.check_feed(request)
        data = st.exchange.market_data(_symbols_param(request))
        return JSONResponse({key: {symbol: snap[part] for symbol, snap in data.items()}})
    return handler


def _latest_one(key: str, part: str | None) -> Handler:
    async def handler(request: Request, st: BrokerState) -> Response:
        surface.check_feed(request)
        raw = request.path_params["symbol"]
        data = st.exchange.market_data([raw])
        if not data:
            raise BrokerError(404, f"no data for {raw}")
        symbol, snap = next(iter(data.items()))
        if part is None:
            return JSONResponse({"symbol": symbol, **snap})
        return JSONResponse({"symbol": symbol, key: snap[part]})
    return handler


# --- admin ---------------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


def admin_route(path: str, methods: list[str], handler: Callable[[Request, BrokerState, Any], Any]) -> Route:
    """A loopback-only /_paper/ endpoint; ``handler`` returns the JSON answer (or a coroutine of it)."""
    async def endpoint(request: Request) -> Response:
        host = request.client.host if request.client else ""
        if not _is_loopback(host):
            return JSONResponse({"message": "admin endpoints answer loopback clients only"}, status_code=403)
        state: BrokerState = request.app.state.broker
        try:
            body = await _json_body(request) if request.method == "POST" else None
            if body is not None and not isinstance(body, dict):
                raise SettingError("the body must be a JSON object")
            answer = handler(request, state, body or {})
            if asyncio.iscoroutine(answer):
                answer = await answer
            return JSONResponse(answer)
        except (SettingError, ValueError) as error:
            return JSONResponse({"message": str(error)}, status_code=400)
        except BrokerError as error:
            return JSONResponse({"message": error.message}, status_code=error.status)

    return Route(path, endpoint, methods=methods)


def admin_stats(request: Request, st: BrokerState, body: dict[str, Any]) -> Any:
    counts = st.exchange.order_counts()
    return {**st.stats.to_json(), "orders": sum(counts.values()), "orders_by_status": counts,
            "faults_injected": dict(st.faults.counts), "seed": st.exchange.seed,
            "clock_mode": st.exchange.clock.mode, "symbols": st.exchange.prices.symbols()}


def admin_reset(request: Request, st: BrokerState, body: dict[str, Any]) -> Any:
    st.reset()
    log.info("paper broker reset")
    return {"reset": True, "seed": st.exchange.seed}


def admin_price(request: Request, st: BrokerState, body: dict[str, Any]) -> Any:
    unknown = set(body) - {"symbol", "price", "spread", "bid_size", "ask_size"}
    if unknown or "symbol" not in body or "price" not in body:
        raise SettingError('body: {"symbol", "price" (null unpins), optional "spread", "bid_size", "ask_size"}')
    return st.exchange.set_price(body["symbol"], body["price"], spread=body.get("spread"),
                                 bid_size=body.get("bid_size"), ask_size=body.get("ask_size"))


FAULT_KEYS = ("fault_500", "fault_429", "fault_hang", "hang_seconds", "fault_500_when", "retry_after",
              "submit_delay")


def admin_faults(request: Request, st: BrokerState, body: dict[str, Any]) -> Any:
    if set(body) - set(FAULT_KEYS):
        raise SettingError(f"unknown fault settings {sorted(set(body) - set(FAULT_KEYS))}; known: {FAULT_KEYS}")
    settings = st.faults.update(body)
    return {k: settings[k] for k in FAULT_KEYS}


def admin_latency(request: Request, st: BrokerState, body: dict[str, Any]) -> Any:
    changes = dict(body)
    if "jitter" in changes:
        changes["latency_jitter"] = changes.pop("jitter")
    if set(changes) - {"latency", "latency_jitter"}:
        raise SettingError('body: {"latency": 0.05 | "orders=0.05,data=0.01" | {"data": [0.01, 0.02]}, "jitter": 0.01}')
    settings = st.faults.update(changes)
    return {"latency": settings["latency"], "latency_jitter": settings["latency_jitter"]}


def admin_clock(request: Request, st: BrokerState, body: dict[str, Any]) -> Any:
    clock = st.exchange.clock
    if "always_open" in body and "mode" in body:
        raise SettingError('give "always_open" or "mode", not both')
    if "always_open" in body:
        if not isinstance(body["always_open"], bool):
            raise SettingError("always_open must be true or false")
        clock.mode = "open" if body["always_open"] else "real"
    elif "mode" in body:
        if body["mode"] not in CLOCK_MODES:
            raise SettingError(f"mode must be one of {', '.join(CLOCK_MODES)}")
        clock.mode = body["mode"]
    elif body:
        raise SettingError('body: {"always_open": bool} or {"mode": "real"|"open"|"closed"}')
    return {"mode": clock.mode, "always_open": clock.always_open, "clock": st.exchange.clock_json()}


async def admin_stream(request: Request, st: BrokerState, body: dict[str, Any]) -> Any:
    """The trading stream's faults; {"disconnect": true} closes every connection now."""
    st.stream.faults.update(body)
    closed = await st.stream.disconnect_all() if body.get("disconnect") is True else 0
    return {**st.stream.faults.to_json(), "open_connections": st.stream.connections, "closed_now": closed,
            "events_published": st.exchange.events.published}


def admin_replay(request: Request, st: BrokerState, body: dict[str, Any]) -> Any:
    """GET: the market instant; POST {"at": Unix seconds}: move it forward and work the book there
    (day orders expire when a session close was passed)."""
    if st.replay is None:
        raise SettingError("not a replay: start the broker with --replay RECORDING")
    if body:
        at = body.get("at")
        if set(body) != {"at"} or isinstance(at, bool) or not isinstance(at, (int, float, Decimal)) \
                or not math.isfinite(at):
            raise SettingError('body: {"at": Unix seconds}')
        target = datetime.fromtimestamp(float(at), timezone.utc)
        try:
            before = st.replay.market.move_to(target)
        except BrokerError as error:
            raise SettingError(error.message) from None
        if session_closes_between(st.exchange.clock, before, target):
            st.exchange.expire_day_orders()
        st.exchange.tick()
    return st.replay.to_json(st.exchange)


def admin_fill_delay(request: Request, st: BrokerState, body: dict[str, Any]) -> Any:
    if body:
        value = body.get("fill_delay")
        if set(body) != {"fill_delay"} or isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) \
                or value < 0:
            raise SettingError('body: {"fill_delay": seconds >= 0}')
        st.exchange.fill_delay = float(value)
    return {"fill_delay": st.exchange.fill_delay}


# --- the app ----------------------------------------------------------------------------------------
def routes() -> list[Route]:
    trading = "trading"
    return [
        api_route("/v2/account", "GET", trading, get_account),
        api_route("/v2/positions", "GET", trading, list_positions),
        api_route("/v2/positions/{symbol}", "GET", trading, get_position),
        api_route("/v2/positions", "DELETE", trading, close_all_positions),
        api_route("/v2/positions/{symbol}", "DELETE", trading, close_position),
        # the colon is literal: Starlette escapes everything outside {...}
        api_route("/v2/orders:by_client_order_id", "GET", "orders", get_order_by_client_id),
        api_route("/v2/orders", "GET", "orders", list_orders),
        api_route("/v2/orders", "POST", "orders", submit_order),
        api_route("/v2/orders", "DELETE", "orders", cancel_all_orders),
        api_route("/v2/orders/{order_id}", "GET", "orders", get_order),
        api_route("/v2/orders/{order_id}", "DELETE", "orders", cancel_order),
        api_route("/v2/orders/{order_id}", "PATCH", "orders", replace_order),
        api_route("/v2/clock", "GET", trading, get_clock),
        # the path parameter is a symbol or an asset id (the UUID on orders and positions)
        api_route("/v2/assets/{symbol}", "GET", trading, surface.get_asset),
        api_route("/v2/assets", "GET", trading, surface.list_assets),
        api_route("/v2/calendar", "GET", trading, surface.get_calendar),
        api_route("/v2/account/configurations", "GET", trading, surface.get_configurations),
        api_route("/v2/account/configurations", "PATCH", trading, surface.patch_configurations),
        api_route("/v2/account/portfolio/history", "GET", trading, surface.portfolio_history),
        api_route("/v2/account/activities", "GET", trading, surface.list_activities),
        api_route("/v2/account/activities/{activity_type}", "GET", trading, surface.list_activities),
        api_route("/v2/stocks/bars", "GET", "data", surface.historical("bars", single=False)),
        api_route("/v2/stocks/trades", "GET", "data", surface.historical("trades", single=False)),
        api_route("/v2/stocks/quotes", "GET", "data", surface.historical("quotes", single=False)),
        api_route("/v2/stocks/{symbol}/bars", "GET", "data", surface.historical("bars", single=True)),
        api_route("/v2/stocks/{symbol}/trades", "GET", "data", surface.historical("trades", single=True)),
        api_route("/v2/stocks/{symbol}/quotes", "GET", "data", surface.historical("quotes", single=True)),
        api_route("/v2/stocks/snapshots", "GET", "data", snapshots),
        api_route("/v2/stocks/quotes/latest", "GET", "data", _latest("quotes", "latestQuote")),
        api_route("/v2/stocks/trades/latest", "GET", "data", _latest("trades", "latestTrade")),
        api_route("/v2/stocks/bars/latest", "GET", "data", _latest("bars", "minuteBar")),
        api_route("/v2/stocks/{symbol}/snapshot", "GET", "data", _latest_one("", None)),
        api_route("/v2/stocks/{symbol}/quotes/latest", "GET", "data", _latest_one("quote", "latestQuote")),
        api_route("/v2/stocks/{symbol}/trades/latest", "GET", "data", _latest_one("trade", "latestTrade")),
        api_route("/v2/stocks/{symbol}/bars/latest", "GET", "data", _latest_one("bar", "minuteBar")),
        admin_route("/_paper/stats", ["GET"], admin_stats),
        admin_route("/_paper/reset", ["POST"], admin_reset),
        admin_route("/_paper/price", ["POST"], admin_price),
        admin_route("/_paper/faults", ["GET", "POST"], admin_faults),
        admin_route("/_paper/latency", ["GET", "POST"], admin_latency),
        admin_route("/_paper/clock", ["GET", "POST"], admin_clock),
        admin_route("/_paper/fill_delay", ["GET", "POST"], admin_fill_delay),
        admin_route("/_paper/stream", ["GET", "POST"], admin_stream),
        admin_route("/_paper/replay", ["GET", "POST"], admin_replay),
    ]


async def stream_endpoint(websocket: WebSocket) -> None:
    state: BrokerState = websocket.app.state.broker
    await state.stream.serve(websocket)


# Starlette's own answers (no route, wrong method) in Alpaca's error body: clients parse
# {"code", "message"} on every non-2xx answer (alpaca-py's APIError reads both)
HTTP_ERROR_BODIES = {404: (40410000, "endpoint not found"), 405: (40510000, "method not allowed")}


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal server error"
    code, message = HTTP_ERROR_BODIES.get(status, (status * 100000, detail))
    headers = exc.headers if isinstance(exc, HTTPException) else None  # 405 keeps its Allow header
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def create_app(config: PaperConfig) -> Starlette:
    """The broker as an ASGI app; `app.state.broker` holds exchange, faults, stats."""
    replay = load_replay(config.replay) if config.replay else None
    if replay is None:
        exchange = Exchange(config)
    else:
        exchange = Exchange(config, clock=replay.clock("open" if config.always_open else "real", config.now),
                            prices=replay.book)
    state = BrokerState(config=config, exchange=exchange, replay=replay,
                        faults=FaultInjector(config.fault_settings(), exchange.seed),
                        rates=RateWindow(config.rate_limit, config.enforce_rate_limit),
                        stream=TradingStream(exchange.events, exchange, config.api_key, config.secret_key))
    app = Starlette(routes=[*routes(), WebSocketRoute("/stream", stream_endpoint)],
                    exception_handlers={HTTPException: _http_error})
    app.state.broker = state
    app.state.exchange = exchange
    return app


def load_replay(path: str) -> Replay:
    """The replay of a recording (JSONL, as `tradebot record` writes) or of a prices CSV."""
    from pathlib import Path

    from bot.recording import load, load_prices_csv

    source = Path(path)
    if source.suffix.lower() == ".csv":
        return Replay.of(load_prices_csv(source))
    recording = load(source)
    return Replay.of(recording.prices, start=recording.start)


# --- running it ---------------------------------------------------------------------------------------
def announcement(config: PaperConfig, seed: int) -> str:
    """What to print at start: how to talk to the broker. Never the secret."""
    base = f"http://{config.host}:{config.port}"
    demo = config.api_key == DEMO_API_KEY
    key_line = (f"{config.api_key}  (demo pair; the secret is DEMO_SECRET_KEY in bot/paper/__init__.py)"
                if demo else "the key pair in ALPACA_API_KEY / ALPACA_SECRET_KEY")
    key_id = config.api_key if demo else "$ALPACA_API_KEY"
    secret = ("$(python -c 'from bot.paper import DEMO_SECRET_KEY as s; print(s)')" if demo
              else "$ALPACA_SECRET_KEY")
    clock = "always open" if config.always_open else "the NYSE regular session (holidays, early closes)"
    return "\n".join([
        f"paper broker on {base}  (trading and market data under this one base URL)",
        f"  key id : {key_line}",
        f"  bot    : ALPACA_BASE_URL={base} ALPACA_DATA_URL={base}",
        f'  try    : curl -s -H "APCA-API-KEY-ID: {key_id}" -H "APCA-API-SECRET-KEY: {secret}" '
        f"{base}/v2/account",
        f"  admin  : curl -s {base}/_paper/stats   (loopback only, no auth)",
        f"  seed {seed}, cash {config.cash}, clock {clock}",
    ])


def serve(config: PaperConfig, echo: Callable[[str], Any] = print) -> None:
    """Run the broker in the foreground until interrupted."""
    import uvicorn

    app = create_app(config)
    if not _is_loopback(config.host):
        log.warning("binding %s: the API is reachable from other hosts (admin endpoints stay loopback-only)",
                    config.host)
    echo(announcement(config, app.state.exchange.seed))
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                                           access_log=False, timeout_graceful_shutdown=2))
    server.run()
