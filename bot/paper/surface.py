"""Handlers of the paper broker's non-order routes beyond the basics: assets, calendar, account
configurations, portfolio history, activities and historical market data. Kept out of app.py so
the HTTP core (auth, faults, rate headers) and the order routes change independently; app.py
registers these with `api_route` like its own.
"""
from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.paper import PaperConfig, account
from bot.paper.account import PaperExtras
from bot.paper.calendar import NEW_YORK, NYSE
from bot.paper.exchange import CODE_INVALID, BrokerError, Exchange
from bot.paper.history import (
    History,
    HistoryQuery,
    Page,
    day_end,
    default_start,
    parse_limit,
    parse_timeframe,
    valid_symbols,
)


class BrokerState(Protocol):
    """What these handlers use of bot.paper.app.BrokerState (a Protocol: app imports this module)."""

    config: PaperConfig
    exchange: Exchange
    extras: PaperExtras

log = logging.getLogger(__name__)

# the spec's feed enums; the paper broker serves one simulated tape whatever the feed
LATEST_FEEDS = ("delayed_sip", "iex", "otc", "sip", "boats", "overnight")
HISTORICAL_FEEDS = ("iex", "otc", "sip", "boats")
ASSET_STATUSES = ("active", "inactive")


def check_feed(request: Request, allowed: tuple[str, ...] = LATEST_FEEDS) -> None:
    feed = request.query_params.get("feed")
    if feed is not None and feed not in allowed:
        raise BrokerError(400, f"invalid feed: {feed!r}", CODE_INVALID)


def _param(request: Request, name: str) -> str | None:
    return request.query_params.get(name) or None


# --- assets ------------------------------------------------------------------------------------------
async def get_asset(request: Request, st: BrokerState) -> Response:
    return JSONResponse(st.extras.assets(st.config).find(request.path_params["symbol"]).to_json())


async def list_assets(request: Request, st: BrokerState) -> Response:
    status = _param(request, "status")
    if status is not None and status not in ASSET_STATUSES:
        raise BrokerError(422, f"invalid status: {status!r}", CODE_INVALID)
    chosen = st.extras.assets(st.config).select(status=status, asset_class=_param(request, "asset_class")
                                                or "us_equity", exchange=_param(request, "exchange"))
    return JSONResponse([a.to_json() for a in chosen])


# --- calendar ----------------------------------------------------------------------------------------
def _query_date(request: Request, name: str, default: date) -> date:
    text = _param(request, name)
    if text is None:
        return default
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        raise BrokerError(400, f"invalid {name}: {text!r}, expected YYYY-MM-DD", CODE_INVALID) from None


async def get_calendar(request: Request, st: BrokerState) -> Response:
    today = st.exchange.clock.now().astimezone(NEW_YORK).date()
    # Alpaca's defaults without start/end: every day it knows; the library's whole range here
    start = _query_date(request, "start", date(2000, 1, 1))
    end = _query_date(request, "end", today + timedelta(days=366))
    return JSONResponse([s.to_json() for s in NYSE.between(start, end)])


# --- account -------------------------------------------------------------------------------------------
async def get_configurations(request: Request, st: BrokerState) -> Response:
    return JSONResponse(dict(st.extras.configurations))


async def patch_configurations(request: Request, st: BrokerState) -> Response:
    return JSONResponse(st.extras.update_configurations(await json_body(request)))


async def json_body(request: Request) -> Any:
    """A request's JSON body (numbers as Decimal); 400 with Alpaca's code when it is not JSON."""
    raw = await request.body()
    try:
        return json.loads(raw or b"null", parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise BrokerError(400, "request body format is invalid", 40010000) from None


async def portfolio_history(request: Request, st: BrokerState) -> Response:
    return JSONResponse(account.portfolio_history(st.exchange, dict(request.query_params)))


async def list_activities(request: Request, st: BrokerState) -> Response:
    kind = request.path_params.get("activity_type")
    return JSONResponse(account.activities(st.exchange, dict(request.query_params), kind))


# --- historical market data ---------------------------------------------------------------------------
def _history_time(request: Request, name: str) -> datetime | None:
    text = _param(request, name)
    if text is None:
        return None
    from bot.alpaca.models import ts

    try:
        value = ts(text)
    except ValueError:
        raise BrokerError(400, f"invalid {name}: {text!r}", CODE_INVALID) from None
    assert value is not None
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return day_end(value) if name == "end" and len(text) == 10 else value


def _history_query(request: Request, st: BrokerState, symbols: list[str]) -> tuple[HistoryQuery, History]:
    check_feed(request, HISTORICAL_FEEDS)
    sort = _param(request, "sort") or "asc"
    if sort not in ("asc", "desc"):
        raise BrokerError(400, f"invalid sort: {sort!r}", CODE_INVALID)
    now = st.exchange.clock.now()
    start = _history_time(request, "start") or default_start(now)
    end = _history_time(request, "end") or now
    if end < start:
        raise BrokerError(400, "end should not be before start", CODE_INVALID)
    query = HistoryQuery(valid_symbols(symbols), start, end, parse_limit(_param(request, "limit")),
                         sort == "desc", _param(request, "page_token"))
    return query, History(st.exchange.prices, now)


def _symbols(request: Request) -> list[str]:
    symbols = [s.strip().upper() for s in (request.query_params.get("symbols") or "").split(",") if s.strip()]
    if not symbols:
        raise BrokerError(400, "symbols is required", CODE_INVALID)
    return symbols


def _answer(key: str, page: Page, single: str | None) -> Response:
    if single is None:
        return JSONResponse({key: page.by_symbol, "next_page_token": page.next_page_token})
    return JSONResponse({key: page.by_symbol.get(single, []), "symbol": single,
                         "next_page_token": page.next_page_token})


def _read(history: History, key: str, query: HistoryQuery, request: Request) -> Page:
    if key == "bars":
        minutes = parse_timeframe(request.query_params.get("timeframe") or "")
        return history.bars(query, minutes)
    return history.trades(query) if key == "trades" else history.quotes(query)


def historical(key: str, single: bool) -> Any:
    """GET /v2/stocks/{key} (symbols=...) or /v2/stocks/{symbol}/{key}."""
    async def handler(request: Request, st: BrokerState) -> Response:
        symbol = request.path_params["symbol"].upper() if single else None
        query, history = _history_query(request, st, [symbol] if symbol else _symbols(request))
        return _answer(key, _read(history, key, query, request), symbol)
    return handler

