"""Everything `tradebot status` shows, collected: the fleet's processes and what Redis holds."""
from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import redis

from bot.codec import display_fields
from bot.config import Settings
from bot.fleet import FleetPaths, process_infos, read_fleet_file, read_pid
from bot.heartbeat import read_heartbeats
from bot.logs import redact_url
from bot.market import POLLED_AT, POSITIONS_POLLED_AT
from bot.ops.errors import OpsError
from bot.ops.orders import LAST_ORDERS, last_orders
from bot.ops.report import ProcessStatus, StatusReport
from bot.ops.settings import open_redis
from bot.ops.stream_status import stream_status
from bot.ops.times import unix_time
from bot.order_events import OrderEvents
from bot.pnl import journal_pnl
from bot.trading import HALTED, read_state


def collect_status(settings: Settings, var_dir: str | None = None, now: float | None = None) -> StatusReport:
    """Everything `tradebot status` shows. A Redis that cannot be reached is reported, not raised."""
    now = time.time() if now is None else now
    report = StatusReport(generated_at=now, settings=settings.public_view(), fleet=fleet_status(var_dir),
                          redis={"url": redact_url(settings.redis_url), "ok": False, "error": None})
    try:
        r = open_redis(settings)
    except OpsError as exc:
        report.redis["error"] = str(exc)
        return report
    try:
        _fill_from_redis(r, settings, report, now)
    except redis.RedisError as exc:
        report.redis.update(ok=False, error=f"Redis at {redact_url(settings.redis_url)}: {exc}")
    finally:
        r.close()
    return report


def fleet_status(var_dir: str | None = None) -> dict[str, Any]:
    paths = FleetPaths.of(var_dir)
    infos = process_infos(paths)
    description = read_fleet_file(var_dir) or {}
    fleet: dict[str, Any] = {
        "var_dir": str(paths.var_dir),
        "running": infos is not None,
        "supervisord_pid": read_pid(paths) if infos is not None else None,
        "broker_url": description.get("broker_url") if infos is not None else None,
        "paper_broker": bool(description.get("paper_broker")) if infos is not None else None,
        # the running fleet's own credential mode, not the caller's environment
        "alpaca_credentials": description.get("alpaca_credentials") if infos is not None else None,
        "processes": [],
    }
    for info in infos or []:
        if info.get("statename") == "STOPPED" and not info.get("start"):
            continue  # a program this fleet does not run (autostart off, never started)
        fleet["processes"].append(asdict(ProcessStatus(
            name=str(info.get("name")), group=str(info.get("group")), state=str(info.get("statename")),
            pid=int(info.get("pid") or 0), description=str(info.get("description", "")))))
    return fleet


def _fill_from_redis(r: redis.Redis, settings: Settings, report: StatusReport, now: float) -> None:
    keys = settings.keys
    report.redis.update(ok=True, version=str(r.info("server").get("redis_version", "?")))
    state = read_state(r, keys)
    report.trading_state = state.state
    report.halt = {"on": state.state == HALTED, "reason": state.reason, "state": state.state}
    report.breakers = dict(display_fields(r.hgetall(keys.breakers)))
    for stream in settings.source_streams:
        report.streams.append(stream_status(r, stream, "source"))
    report.streams.append(stream_status(r, keys.signals, "signals"))
    report.streams.append(stream_status(r, keys.orders, "orders"))
    dlq = stream_status(r, keys.dlq, "dlq")
    report.streams.append(dlq)
    report.dlq = dlq.length
    for symbol in settings.symbols:
        fields = _hash(r, keys.prices(symbol))
        report.prices.append({"symbol": symbol, **fields, "age_s": _age(fields, now)})
    account = _hash(r, keys.account)
    report.account = {**account, "age_s": _age(account, now)} if account else None
    positions = _hash(r, keys.positions)
    # raw values, not MarketCache.positions(): status shows what the poller wrote, even a corrupt
    # entry; bookkeeping fields (POSITIONS_POLLED_AT, POSITIONS_AS_OF) start with "_", as in bot.market
    report.positions = {symbol: _decode_value(value) for symbol, value in positions.items()
                        if not symbol.startswith("_")}
    report.positions_age_s = _age(positions, now, POSITIONS_POLLED_AT)
    clock = _hash(r, keys.clock)
    report.clock = {**clock, "age_s": _age(clock, now)} if clock else None
    report.orders = last_orders(r, keys, LAST_ORDERS)
    health = OrderEvents(r, keys, now=lambda: now).listener_health()
    report.listener = {"live": health.live, "state": health.why, **_hash(r, keys.listener)}
    reconciled = _hash(r, keys.reconcile)
    report.reconcile = {name: value for name, value in reconciled.items() if not name.startswith("baseline:")}
    if "drift" in report.reconcile:
        report.reconcile["drift"] = _decode_value(report.reconcile["drift"])
    report.unresolved = int(r.hlen(keys.unresolved))
    report.pnl = journal_pnl(r, keys).to_dict()
    report.heartbeats = [{**asdict(beat), "stale": beat.stale} for beat in read_heartbeats(r, keys, now)]


def _hash(r: redis.Redis, key: str) -> dict[str, str]:
    return display_fields(r.hgetall(key))


def _decode_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _age(fields: Mapping[str, str], now: float, name: str = POLLED_AT) -> float | None:
    stamp = unix_time(fields.get(name))
    return None if stamp is None else round(now - stamp, 3)
