"""A stream as status shows it: its length, and per group the pending entries, the lag and the consumers."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from bot.codec import display
from bot.ops.report import ConsumerStatus, GroupStatus, StreamStatus
from bot.redisconn import bytes_twin
from bot.streams import format_id, next_id, parse_id

LAG_SCAN_LIMIT = 1000  # entries counted at most per group when XINFO GROUPS gives no lag
XINFO_LAG_SINCE = (7, 0)  # XINFO GROUPS reports a group's lag from Redis 7.0 (Valkey: always)


def has_xinfo_lag(redis_version: str) -> bool:
    """Whether a server of this INFO redis_version reports lag in XINFO GROUPS (Valkey 8 says 7.2)."""
    parts = [int(p) if p.isdigit() else 0 for p in str(redis_version).split(".")[:2]]
    return tuple([*parts, 0, 0][:2]) >= XINFO_LAG_SINCE


def group_lag(r: redis.Redis, stream: str, info: Mapping[str, Any],
              stream_info: Mapping[str, Any]) -> tuple[int | None, str]:
    """Entries not yet delivered to the group. Redis >= 7 reports it (XINFO GROUPS lag); on 6.2,
    and on 7+ when its lag is null (entries deleted after the group's last-delivered-id make it
    unknowable there), it is counted: entries after last-delivered-id with XRANGE, up to LAG_SCAN_LIMIT."""
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
    raw = bytes_twin(r)
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
