"""The web app of `tradebot web`: /metrics (Prometheus text), /healthz (200 or 503 with reasons),
/ (the status page). Bound to 127.0.0.1 by default; a token is required when bound elsewhere."""
from __future__ import annotations

import hmac
import html
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.config import Settings
from bot.ops.render import render_status
from bot.ops.status import collect_status
from bot.web.health import health_reasons
from bot.web.metrics import FleetCollector

REFRESH_SECONDS = 2


def create_app(settings: Settings, r: redis.Redis, *, token: str | None = None,
               var_dir: str | None = None) -> Starlette:
    registry = CollectorRegistry()
    registry.register(FleetCollector(r, settings))

    def allowed(request: Request) -> bool:
        if not token:
            return True
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
            or request.query_params.get("token", "")
        return hmac.compare_digest(given.encode(), token.encode())

    def guarded(endpoint: Any) -> Any:
        def wrapped(request: Request) -> Response:
            if not allowed(request):
                return PlainTextResponse("a token is required (Authorization: Bearer TOKEN, or ?token=)\n",
                                         status_code=401)
            return endpoint(request)
        return wrapped

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def healthz(request: Request) -> Response:
        reasons = health_reasons(r, settings)
        return JSONResponse({"healthy": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)

    def page(request: Request) -> Response:
        text = render_status(collect_status(settings, var_dir))
        body = (f"<!doctype html><html><head><meta charset='utf-8'><title>tradebot</title>"
                f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'>"
                "<style>body{font-family:monospace;background:#111;color:#ddd;margin:1em}</style></head>"
                f"<body><pre id='status'>{html.escape(text)}</pre></body></html>")
        return HTMLResponse(body)

    # sync endpoints: Starlette runs them in its thread pool (the Redis client is synchronous)
    return Starlette(routes=[Route("/metrics", guarded(metrics)), Route("/healthz", guarded(healthz)),
                             Route("/", guarded(page))])
