"""Operator queries and actions behind `tradebot status|signal|halt|resume|dlq|orders`.

Everything here reads or writes Redis through ``Keys`` and never shows a secret: settings go
through ``Settings.public_view()``, URLs through ``redact_url``.  Expected failures raise
``OpsError`` (exit code 1) or ``OpsInputError`` (bad input, exit code 2) with a clear message; both
are ``bot.errors.TradebotError``s, so the command line maps them with every other error of the project.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from bot.codec import display, display_fields
from bot.config import ConfigError, Settings
from bot.errors import InputError, TradebotError
from bot.fleet import FleetPaths, process_infos, read_fleet_file, read_pid
from bot.keys import Keys
from bot.logs import redact_url
from bot.market import POLLED_AT, POSITIONS_POLLED_AT
from bot.redisconn import RedisUnavailable, check, connect
from bot.signals import SignalError, parse_raw
from bot.streams import format_id, is_stream_id, next_id, original_fields, parse_id

LAG_SCAN_LIMIT = 1000  # entries counted at most per group when Redis has no XINFO lag (< 7.0)
LAST_ORDERS = 5


class OpsError(TradebotError):
    """An operator command cannot do its job (exit code 1)."""


class OpsInputError(OpsError, InputError):
    """The operator's input is wrong (exit code 2, from InputError)."""


# --------------------------------------------------------------------------- settings and connection

def operator_settings(redis_url: str | None = None, var_dir: str | None = None,
                      env: Mapping[str, str] | None = None) -> Settings:
    """Settings for an operator command: flag, then environment, then what the local fleet's
    `tradebot up` recorded in var/fleet.json (its embedded Redis URL, symbols, streams, prefix)."""
    merged = dict(os.environ if env is None else env)
    fleet = read_fleet_file(var_dir) or {}
    if redis_url:
        merged["REDIS_URL"] = redis_url
    elif not merged.get("REDIS_URL") and fleet.get("redis_url"):
        merged["REDIS_URL"] = fleet["redis_url"]
    for name, key in (("TRADEBOT_SYMBOLS", "symbols"), ("TRADEBOT_SOURCE_STREAMS", "source_streams")):
        if not merged.get(name) and fleet.get(key):
            merged[name] = ",".join(fleet[key])
    if not merged.get("TRADEBOT_PREFIX") and fleet.get("prefix"):
        merged["TRADEBOT_PREFIX"] = fleet["prefix"]
    try:
        return Settings.from_env(merged)
    except ConfigError as exc:
        raise OpsInputError(str(exc)) from None


def open_redis(settings: Settings, *, decode: bool = True) -> redis.Redis:
    """A checked client; OpsError with the password-free URL when Redis cannot be used."""
    client = connect(settings.redis_url, decode=decode, socket_timeout=5.0)
    try:
        check(client, settings.redis_url)
    except RedisUnavailable as exc:
        client.close()
        raise OpsError(str(exc)) from None
    except redis.RedisError as exc:
        client.close()
        raise OpsError(f"Redis at {redact_url(settings.redis_url)}: {exc}") from None
    return client


def check_entry_id(entry_id: str) -> str:
    # isascii: is_stream_id's \d also matches non-ASCII digits, which Redis rejects
    if not (entry_id.isascii() and is_stream_id(entry_id)):
        raise OpsInputError(f"{entry_id!r} is not a stream entry id (like 1732540000000-0)")
    return entry_id


# --------------------------------------------------------------------------- signal, halt, resume

def build_signal(settings: Settings, ticker: str, direction: str, qty: str | None,
                 stream: str | None) -> tuple[str, dict[str, str]]:
    """Validate an operator's signal as the router will: (stream, fields) or OpsInputError."""
    target = stream or settings.source_streams[0]
    if target not in settings.source_streams:
        raise OpsInputError(f"stream {target!r} is not a source stream the router reads "
                            f"(TRADEBOT_SOURCE_STREAMS={','.join(settings.source_streams)})")
    fields = {"ticker": ticker.strip().upper(), "direction": direction.strip().lower()}
    if qty is not None:
        fields["qty"] = qty.strip()
    try:
        parse_raw({k.encode(): v.encode() for k, v in fields.items()}, source_stream=target,
                  source_id="0-1", symbols=settings.symbols, routed_at=time.time())
    except SignalError as exc:
        raise OpsInputError(exc.reason) from None
    fields["direction"] = fields["direction"][0]  # b | s, the source format
    return target, fields


def add_signal(r: redis.Redis, stream: str, fields: Mapping[str, str]) -> str:
    payload: dict[FieldT, EncodableT] = {name: value for name, value in fields.items()}
    return display(r.xadd(stream, payload))


def halt(r: redis.Redis, keys: Keys, reason: str) -> None:
    if not reason.strip():
        raise OpsInputError("--reason must not be empty")
    r.set(keys.halt, reason.strip())


def resume(r: redis.Redis, keys: Keys) -> str | None:
    """Switch the kill switch off; the reason it had, or None if it was off."""
    pipe = r.pipeline(transaction=True)
    pipe.get(keys.halt)
    pipe.delete(keys.halt)
    reason, _ = pipe.execute()
    return None if reason is None else display(reason)


def halt_reason(r: redis.Redis, keys: Keys) -> str | None:
    value = r.get(keys.halt)
    return None if value is None else display(value)


# --------------------------------------------------------------------------- journal

def last_orders(r: redis.Redis, keys: Keys, n: int = LAST_ORDERS) -> list[dict[str, str]]:
    """The newest ``n`` journal entries, newest first, each with its stream ``id``."""
    return [{"id": display(entry_id), **display_fields(fields or {})}
            for entry_id, fields in r.xrevrange(keys.orders, count=n) or []]


# --------------------------------------------------------------------------- DLQ

@dataclass
class DlqEntry:
    id: str
    source_stream: str
    source_id: str
    reason: str
    deliveries: str
    entry_stream: str
    dead_at: float | None
    original: dict[str, str]  # the original fields (non-UTF-8 bytes shown with \x escapes)


def dlq_entries(rb: redis.Redis, keys: Keys, limit: int | None = None) -> list[DlqEntry]:
    """DLQ entries, oldest first (``rb`` may be a bytes client: payloads can be any bytes)."""
    return [_dlq_entry(entry_id, fields or {}) for entry_id, fields in rb.xrange(keys.dlq, count=limit) or []]


def _dlq_entry(entry_id: Any, fields: Mapping[Any, Any]) -> DlqEntry:
    text = display_fields(fields)
    try:
        original = display_fields(original_fields(fields))
    except (ValueError, KeyError, TypeError):
        original = {"raw": text.get("raw", "")}  # unreadable raw JSON: show it as it is
    return DlqEntry(id=display(entry_id), source_stream=text.get("source_stream", ""),
                    source_id=text.get("source_id", ""), reason=text.get("reason", ""),
                    deliveries=text.get("deliveries", ""), entry_stream=text.get("entry_stream", ""),
                    dead_at=_float(text.get("dead_at")), original=original)


def _replay_fields(fields: Mapping[Any, Any], keys: Keys) -> dict[FieldT, EncodableT]:
    """The fields to put back on the source stream: the original ones; a DLQ entry made by a
    worker holds a routed signal (ticker/side/qty), turned back into the source format."""
    original = original_fields(fields)
    entry_stream = display(fields.get(b"entry_stream", fields.get("entry_stream", b"")))
    if entry_stream == keys.signals and b"side" in original and b"direction" not in original:
        side = display(original[b"side"]).lower()
        source: dict[FieldT, EncodableT] = {b"ticker": original.get(b"ticker", b""),
                                            b"direction": b"b" if side == "buy" else b"s"}
        if b"qty" in original:
            source[b"qty"] = original[b"qty"]
        return source
    return {name: value for name, value in original.items()}


def dlq_replay(rb: redis.Redis, keys: Keys, entry_id: str, settings: Settings,
               stream: str | None = None) -> tuple[str, str]:
    """Put a DLQ entry's original fields back on its source stream (or ``stream``) as a new entry
    and delete it from the DLQ, atomically (no loss, no double replay). Returns (stream, new id)."""
    check_entry_id(entry_id)
    result: dict[str, str] = {}

    def move(pipe: redis.client.Pipeline) -> None:
        found = pipe.xrange(keys.dlq, min=entry_id, max=entry_id)
        if not found:
            raise OpsError(f"no DLQ entry {entry_id} (see `tradebot dlq list`)")
        fields = found[0][1] or {}
        target = stream or display(fields.get(b"source_stream", fields.get("source_stream", b"")))
        if not target:
            raise OpsError(f"DLQ entry {entry_id} names no source stream; give --stream")
        if target not in settings.source_streams:
            raise OpsInputError(f"stream {target!r} is not a source stream the router reads "
                                f"(TRADEBOT_SOURCE_STREAMS={','.join(settings.source_streams)}); give --stream")
        replay = _replay_fields(fields, keys)
        if not replay:
            raise OpsError(f"DLQ entry {entry_id} has no original fields to replay")
        replay[b"replay_of"] = entry_id.encode()  # extra fields are ignored by the router: an audit trail
        pipe.multi()
        pipe.xadd(target, replay)
        pipe.xdel(keys.dlq, entry_id)
        result["stream"] = target

    replies = rb.transaction(move, keys.dlq)
    assert isinstance(replies, list)  # a MULTI pipeline's execute(): one reply per command (XADD, XDEL)
    new_id, _deleted = replies
    return result["stream"], display(new_id)


def dlq_newest_id(rb: redis.Redis, keys: Keys) -> str | None:
    """The id of the newest DLQ entry, None when the DLQ is empty."""
    newest = rb.xrevrange(keys.dlq, count=1)
    return display(newest[0][0]) if newest else None


def dlq_purge(rb: redis.Redis, keys: Keys, up_to_id: str | None = None) -> int:
    """Delete DLQ entries up to and including ``up_to_id`` (default: the newest now); the number
    deleted. Entries dead-lettered after the operator looked are kept."""
    if up_to_id is None:
        up_to_id = dlq_newest_id(rb, keys)
        if up_to_id is None:
            return 0
    return int(rb.xtrim(keys.dlq, minid=format_id(next_id(parse_id(up_to_id))), approximate=False))


# --------------------------------------------------------------------------- status

@dataclass
class ConsumerStatus:
    name: str
    pending: int
    idle_s: float


@dataclass
class GroupStatus:
    name: str
    pending: int
    lag: int | None
    lag_method: str  # xinfo | exact-xrange | at-least-xrange | unknown
    last_delivered_id: str
    consumers: list[ConsumerStatus] = field(default_factory=list)


@dataclass
class StreamStatus:
    name: str
    role: str  # source | signals | orders | dlq
    length: int
    groups: list[GroupStatus] = field(default_factory=list)


@dataclass
class ProcessStatus:
    name: str
    group: str
    state: str
    pid: int
    description: str


@dataclass
class StatusReport:
    generated_at: float
    settings: dict[str, Any]
    fleet: dict[str, Any]
    redis: dict[str, Any]
    halt: dict[str, Any] = field(default_factory=lambda: {"on": False, "reason": None})
    streams: list[StreamStatus] = field(default_factory=list)
    prices: list[dict[str, Any]] = field(default_factory=list)
    account: dict[str, Any] | None = None
    positions: dict[str, Any] = field(default_factory=dict)
    positions_age_s: float | None = None  # None: never polled
    clock: dict[str, Any] | None = None
    orders: list[dict[str, str]] = field(default_factory=list)
    dlq: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    return number if math.isfinite(number) else None


def _age(fields: Mapping[str, str], now: float, name: str = POLLED_AT) -> float | None:
    stamp = _float(fields.get(name))
    return None if stamp is None else round(now - stamp, 3)


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
        "processes": [],
    }
    for info in infos or []:
        if info.get("statename") == "STOPPED" and not info.get("start"):
            continue  # a program this fleet does not run (autostart off, never started)
        fleet["processes"].append(asdict(ProcessStatus(
            name=str(info.get("name")), group=str(info.get("group")), state=str(info.get("statename")),
            pid=int(info.get("pid") or 0), description=str(info.get("description", "")))))
    return fleet


def group_lag(r: redis.Redis, stream: str, info: Mapping[str, Any],
              stream_info: Mapping[str, Any]) -> tuple[int | None, str]:
    """Entries not yet delivered to the group. Redis >= 7 reports it (XINFO GROUPS lag); on 6.2
    it is counted: entries after last-delivered-id with XRANGE, up to LAG_SCAN_LIMIT."""
    if info.get("lag") is not None:
        return int(info["lag"]), "xinfo"
    last = parse_id(info.get("last-delivered-id") or "0-0")
    newest = parse_id(stream_info.get("last-generated-id") or "0-0")
    if last >= newest:
        return 0, "exact-xrange"
    first = stream_info.get("first-entry")
    if first and last < parse_id(first[0]):
        return int(stream_info.get("length", 0)), "exact-xrange"  # nothing of the stream delivered yet
    entries = r.xrange(stream, min=format_id(next_id(last)), max="+", count=LAG_SCAN_LIMIT + 1) or []
    if len(entries) > LAG_SCAN_LIMIT:
        return LAG_SCAN_LIMIT, "at-least-xrange"
    return len(entries), "exact-xrange"


def _stream_info_raw(r: redis.Redis, name: str) -> dict[str, Any]:
    """XINFO STREAM read as bytes: the fields status needs, without decoding the entries' payloads."""
    kwargs = {**r.connection_pool.connection_kwargs, "decode_responses": False}
    raw = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=r.connection_pool.connection_class,
                                                           **kwargs))
    try:
        info = raw.xinfo_stream(name)
    finally:
        raw.close()
    first = info.get("first-entry")
    return {"length": info.get("length", 0), "last-generated-id": display(info.get("last-generated-id") or b"0-0"),
            "first-entry": (display(first[0]), {}) if first else None}


def stream_status(r: redis.Redis, name: str, role: str) -> StreamStatus:
    try:
        info = r.xinfo_stream(name)
    except redis.ResponseError:  # no such stream (yet)
        return StreamStatus(name=name, role=role, length=0)
    except UnicodeDecodeError:  # XINFO carries the first/last entry, which may be junk bytes
        info = _stream_info_raw(r, name)
    status = StreamStatus(name=name, role=role, length=int(info.get("length", 0)))
    try:
        groups = r.xinfo_groups(name)
    except redis.ResponseError:
        groups = []
    for group in groups:
        group_name = display(group["name"])
        lag, method = group_lag(r, name, group, info)
        consumers = [ConsumerStatus(name=display(c["name"]), pending=int(c["pending"]),
                                    idle_s=round(int(c["idle"]) / 1000, 3))
                     for c in r.xinfo_consumers(name, group_name)]
        status.groups.append(GroupStatus(name=group_name, pending=int(group["pending"]), lag=lag, lag_method=method,
                                         last_delivered_id=display(group.get("last-delivered-id", "")),
                                         consumers=consumers))
    return status


def _hash(r: redis.Redis, key: str) -> dict[str, str]:
    return display_fields(r.hgetall(key))


def _decode_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


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


def _fill_from_redis(r: redis.Redis, settings: Settings, report: StatusReport, now: float) -> None:
    keys = settings.keys
    report.redis.update(ok=True, version=str(r.info("server").get("redis_version", "?")))
    reason = halt_reason(r, keys)
    report.halt = {"on": reason is not None, "reason": reason}
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


# --------------------------------------------------------------------------- rendering

def _fmt_age(age: float | None) -> str:
    if age is None:
        return "age ?"
    if age < 120:
        return f"age {age:.1f}s"
    if age < 7200:
        return f"age {age / 60:.0f}m"
    return f"age {age / 3600:.1f}h"


def _clock(stamp: Any) -> str:
    value = _float(stamp)
    if value is None:
        return "--:--:--"
    return datetime.fromtimestamp(value, timezone.utc).strftime("%H:%M:%S")


def render_status(report: StatusReport) -> str:
    """One screen, readable at a glance."""
    lines: list[str] = []
    when = datetime.fromtimestamp(report.generated_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    settings = report.settings
    lines.append(f"tradebot status  {when}")
    lines.append(f"  redis   {report.redis['url']}"
                 + ("" if report.redis["ok"] else f"  UNREACHABLE: {report.redis['error']}"))
    if report.fleet.get("paper_broker"):
        lines.append(f"  broker  {report.fleet.get('broker_url')}  (the fleet's paper broker, demo key pair)")
    else:
        lines.append(f"  broker  {report.fleet.get('broker_url') or settings.get('alpaca_base_url')}"
                     f"  (credentials: {settings.get('alpaca_credentials')})")
    halt_state = report.halt
    lines.append("  HALTED: " + str(halt_state["reason"]) if halt_state["on"] else "  halt    off (orders allowed)")
    lines.append("")
    fleet = report.fleet
    if fleet["running"]:
        lines.append(f"processes  (supervisord pid {fleet.get('supervisord_pid') or '?'}, {fleet['var_dir']})")
        for proc in fleet["processes"]:
            lines.append(f"  {proc['name']:<14} {proc['state']:<9} {proc['description']}")
    else:
        lines.append(f"processes  supervisord not running (var dir {fleet['var_dir']})")
    if not report.redis["ok"]:
        return "\n".join(lines)
    lines.append("")
    lines.append(f"{'streams':<22}{'length':>8}  {'group':<18}{'pending':>8}{'lag':>8}  consumers (pending, idle)")
    for stream in report.streams:
        head = f"  {stream.name:<20}{stream.length:>8}"
        if not stream.groups:
            lines.append(head)
        for i, group in enumerate(stream.groups):
            if group.lag is None:
                lag = "?"
            else:
                lag = f">={group.lag}" if group.lag_method == "at-least-xrange" else str(group.lag)
            consumers = ", ".join(f"{c.name} ({c.pending}, {c.idle_s:.1f}s)" for c in group.consumers) or "none"
            lines.append(f"{head if i == 0 else ' ' * len(head)}  {group.name:<18}{group.pending:>8}{lag:>8}"
                         f"  {consumers}")
    methods = {g.lag_method for s in report.streams for g in s.groups}
    if methods - {"xinfo"}:
        lines.append("  (lag counted with XRANGE after each group's last-delivered-id: this Redis has no XINFO lag)")
    lines.append("")
    lines.append("prices")
    for price in report.prices:
        if len(price) <= 2:
            lines.append(f"  {price['symbol']:<8} no price yet")
            continue
        lines.append(f"  {price['symbol']:<8} bid {price.get('bid', '-'):<10} ask {price.get('ask', '-'):<10} "
                     f"last {price.get('last', '-'):<10} {_fmt_age(price.get('age_s'))}")
    account = report.account
    if account:
        lines.append(f"account   cash {account.get('cash', '-')}  buying power {account.get('buying_power', '-')}  "
                     f"equity {account.get('equity', '-')}  {account.get('status', '')}"
                     f"  {_fmt_age(account.get('age_s'))}")
    else:
        lines.append("account   not polled yet")
    if report.clock:
        lines.append(f"market    {'open' if str(report.clock.get('is_open')).lower() in ('1', 'true') else 'closed'}"
                     f"  next open {report.clock.get('next_open', '?')}"
                     f"  next close {report.clock.get('next_close', '?')}")
    if report.positions:
        shown = []
        for symbol, value in sorted(report.positions.items()):
            if isinstance(value, dict):
                shown.append(f"{symbol} {value.get('qty', '?')} @ {value.get('avg_entry_price', '?')}")
            else:
                shown.append(f"{symbol} {value}")
        lines.append("positions " + ", ".join(shown) + f"  {_fmt_age(report.positions_age_s)}")
    elif report.positions_age_s is not None:
        lines.append(f"positions none (flat)  {_fmt_age(report.positions_age_s)}")
    else:
        lines.append("positions not polled yet")
    lines.append("")
    lines.append(f"last orders (journal {next(s.length for s in report.streams if s.role == 'orders')} entries, "
                 f"DLQ {report.dlq} entries)")
    if not report.orders:
        lines.append("  none yet")
    for entry in report.orders:
        filled = ""
        if entry.get("filled_qty") not in (None, "", "0"):
            filled = f" {entry.get('filled_qty')} @ {entry.get('filled_avg_price', '?')}"
        reason = f"  ({entry['reason']})" if entry.get("reason") else ""
        lines.append(f"  {_clock(entry.get('final_at'))}  {entry.get('ticker', '?'):<6} {entry.get('side', '?'):<4} "
                     f"{entry.get('outcome', '?'):<16}{filled}{reason}")
    return "\n".join(lines)


def render_orders(entries: Iterable[Mapping[str, str]]) -> str:
    rows = []
    for entry in entries:
        filled = f"{entry.get('filled_qty', '-')} @ {entry.get('filled_avg_price', '-')}"
        rows.append(f"{entry['id']:<16} {_clock(entry.get('final_at'))}  {entry.get('ticker', '?'):<6} "
                    f"{entry.get('side', '?'):<4} {entry.get('outcome', '?'):<16} qty {entry.get('qty', '-'):<8} "
                    f"filled {filled:<20} {entry.get('client_order_id', '')}"
                    + (f"  ({entry['reason']})" if entry.get("reason") else ""))
    return "\n".join(rows) if rows else "no journal entries"


def render_dlq(entries: Iterable[DlqEntry]) -> str:
    rows = []
    for entry in entries:
        original = " ".join(f"{k}='{v}'" for k, v in entry.original.items())
        rows.append(f"{entry.id:<16} {entry.source_stream}/{entry.source_id}  deliveries {entry.deliveries}  "
                    f"reason: {entry.reason}\n{'':<17}fields: {original or '(none)'}")
    return "\n".join(rows) if rows else "DLQ is empty"
