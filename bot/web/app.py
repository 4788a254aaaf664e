"""The web app of `tradebot web`: the dashboard (/ with live updates over SSE at /events, halt and
resume), /metrics (Prometheus text), /healthz (200, or 503 with the reasons), /text (the status
screen). Bound to 127.0.0.1 by default; a token is required when bound elsewhere. Halt and resume
are POSTs that carry the page's CSRF token in a header (a form on another site cannot set one)."""
from __future__ import annotations

import asyncio
import hmac
import html
import json
import secrets
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bot.config import Settings
from bot.ops.control import halt, resume
from bot.ops.dlq import newest_dlq_entries
from bot.ops.orders import last_orders
from bot.ops.render import render_status
from bot.ops.status import collect_status
from bot.pnl import equity_curve
from bot.web.health import health_reasons
from bot.web.metrics import FleetCollector

REFRESH_SECONDS = 1.0  # how often the dashboard's stream sends a new snapshot
DASHBOARD_ORDERS = 30
DASHBOARD_DLQ = 10
MAX_REASON = 200


def snapshot(r: redis.Redis, settings: Settings, var_dir: str | None) -> dict[str, Any]:
    """Everything the dashboard shows, as JSON-ready data (no secrets: the status report's own)."""
    report = collect_status(settings, var_dir).to_dict()
    report["orders"] = last_orders(r, settings.keys, DASHBOARD_ORDERS) if report["redis"]["ok"] else []
    reasons = health_reasons(r, settings)
    report["health"] = {"healthy": not reasons, "reasons": reasons}
    report["equity"] = equity_curve(r, settings.keys, limit=2000) if report["redis"]["ok"] else []
    report["dead_letters"] = ([{"id": d.id, "source": f"{d.source_stream} {d.source_id}", "reason": d.reason,
                                "deliveries": d.deliveries}
                               for d in newest_dlq_entries(r, settings.keys, DASHBOARD_DLQ)]
                              if report["redis"]["ok"] else [])
    return report


def create_app(settings: Settings, r: redis.Redis, *, token: str | None = None,
               var_dir: str | None = None) -> Starlette:
    registry = CollectorRegistry()
    registry.register(FleetCollector(r, settings))
    csrf = secrets.token_urlsafe(24)
    page_html = resources.files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")

    def allowed(request: Request) -> bool:
        if not token:
            return True
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() \
            or request.query_params.get("token", "")
        return hmac.compare_digest(given.encode(), token.encode())

    def guarded(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def wrapped(request: Request) -> Response:
            if not allowed(request):
                return PlainTextResponse("a token is required (Authorization: Bearer TOKEN, or ?token=)\n",
                                         status_code=401)
            answer = endpoint(request)
            return await answer if asyncio.iscoroutine(answer) else answer
        return wrapped

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        reasons = await run_in_threadpool(health_reasons, r, settings)
        return JSONResponse({"healthy": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)

    async def text_page(request: Request) -> Response:
        text = await run_in_threadpool(lambda: render_status(collect_status(settings, var_dir)))
        return HTMLResponse(f"<!doctype html><meta charset='utf-8'><title>tradebot</title>"
                            f"<pre>{html.escape(text)}</pre>")

    def dashboard(request: Request) -> Response:
        return HTMLResponse(page_html.replace("{{csrf}}", csrf))

    async def status(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(snapshot, r, settings, var_dir))

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            while not await request.is_disconnected():
                data = await run_in_threadpool(snapshot, r, settings, var_dir)
                yield f"data: {json.dumps(data, default=str)}\n\n"
                await asyncio.sleep(REFRESH_SECONDS)
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def control(request: Request, act: Callable[[dict[str, Any]], Any]) -> Response:
        if not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), csrf.encode()):
            return PlainTextResponse("missing or wrong CSRF token: use the dashboard's buttons\n", status_code=403)
        try:
            body = await request.json()
        except ValueError:
            body = {}
        result = await run_in_threadpool(act, body if isinstance(body, dict) else {})
        return JSONResponse(result)

    def do_halt(body: dict[str, Any]) -> dict[str, Any]:
        reduce_only = body.get("reduce_only") is True
        default = "reduce-only from the dashboard" if reduce_only else "halted from the dashboard"
        reason = str(body.get("reason") or default)[:MAX_REASON]
        halt(r, settings.keys, reason, reduce_only=reduce_only)
        return {"halted": not reduce_only, "trading_state": "reduce-only" if reduce_only else "halted",
                "reason": reason}

    def do_resume(body: dict[str, Any]) -> dict[str, Any]:
        return {"halted": False, "was": resume(r, settings.keys)}

    return Starlette(routes=[
        Route("/", guarded(dashboard)),
        Route("/events", guarded(events)),
        Route("/api/status", guarded(status)),
        Route("/api/halt", guarded(lambda request: control(request, do_halt)), methods=["POST"]),
        Route("/api/resume", guarded(lambda request: control(request, do_resume)), methods=["POST"]),
        Route("/metrics", guarded(metrics)),
        Route("/healthz", guarded(healthz)),
        Route("/text", guarded(text_page)),
    ])
