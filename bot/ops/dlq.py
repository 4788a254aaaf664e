"""The dead-letter queue: list its entries, replay one onto its source stream, purge."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from bot.codec import display, display_fields
from bot.config import Settings
from bot.keys import Keys
from bot.ops.errors import OpsError, OpsInputError
from bot.ops.times import unix_time
from bot.signals import SOURCE_FIELDS, client_order_id
from bot.streams import delete_below, format_id, is_stream_id, next_id, original_fields, parse_id


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


def check_entry_id(entry_id: str) -> str:
    # isascii: is_stream_id's \d also matches non-ASCII digits, which Redis rejects
    if not (entry_id.isascii() and is_stream_id(entry_id)):
        raise OpsInputError(f"{entry_id!r} is not a stream entry id (like 1732540000000-0)")
    return entry_id


def dlq_entries(rb: redis.Redis, keys: Keys, limit: int | None = None) -> list[DlqEntry]:
    """DLQ entries, oldest first (``rb`` may be a bytes client: payloads can be any bytes)."""
    return [_dlq_entry(entry_id, fields or {}) for entry_id, fields in rb.xrange(keys.dlq, count=limit) or []]


def newest_dlq_entries(rb: redis.Redis, keys: Keys, n: int) -> list[DlqEntry]:
    """The newest ``n`` DLQ entries, newest first."""
    return [_dlq_entry(entry_id, fields or {}) for entry_id, fields in rb.xrevrange(keys.dlq, count=n) or []]


def _dlq_entry(entry_id: Any, fields: Mapping[Any, Any]) -> DlqEntry:
    text = display_fields(fields)
    try:
        original = display_fields(original_fields(fields))
    except (ValueError, KeyError, TypeError):
        original = {"raw": text.get("raw", "")}  # unreadable raw JSON: show it as it is
    return DlqEntry(id=display(entry_id), source_stream=text.get("source_stream", ""),
                    source_id=text.get("source_id", ""), reason=text.get("reason", ""),
                    deliveries=text.get("deliveries", ""), entry_stream=text.get("entry_stream", ""),
                    dead_at=unix_time(text.get("dead_at")), original=original)


def _replay_fields(fields: Mapping[Any, Any], keys: Keys) -> tuple[str | None, dict[FieldT, EncodableT]]:
    """(the stream it must go back to, or None for the caller's; the fields to put there): the
    original ones; a DLQ entry made by a worker holds a routed signal, turned back into the source
    format with every order field it carried and the client_order_id of the original's order (an
    order of it that may exist at the broker, a POST whose outcome was unknown, landed late, is
    then found, never placed a second time). A control signal (flatten, cancel-all) goes back to the
    control stream as the control it was, never as a plain sell."""
    original = original_fields(fields)
    entry_stream = display(fields.get(b"entry_stream", fields.get("entry_stream", b"")))
    if entry_stream == keys.signals and b"side" in original and b"direction" not in original:
        control = display(original.get(b"control", b""))
        if control:
            return keys.control, {b"action": control.encode(), b"ticker": original.get(b"ticker", b"")}
        side = display(original[b"side"]).lower()
        source: dict[FieldT, EncodableT] = {b"ticker": original.get(b"ticker", b""),
                                            b"direction": b"b" if side == "buy" else b"s"}
        for name in SOURCE_FIELDS:
            if name not in ("ticker", "direction", "client_order_id") and name.encode() in original:
                source[name.encode()] = original[name.encode()]
        coid = _original_coid(fields, original)
        if coid:
            source[b"client_order_id"] = coid.encode()
        return None, source
    return None, {name: value for name, value in original.items()}


def _original_coid(fields: Mapping[Any, Any], original: Mapping[bytes, Any]) -> str | None:
    pinned = display(original.get(b"client_order_id", b""))
    if pinned:
        return pinned
    source_stream = display(fields.get(b"source_stream", fields.get("source_stream", b"")))
    source_id = display(fields.get(b"source_id", fields.get("source_id", b"")))
    return client_order_id(source_stream, source_id) if source_stream and source_id else None


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
        if b"truncated" in fields or "truncated" in fields:
            raise OpsError(f"DLQ entry {entry_id} kept only the start of an oversized value "
                           f"({display(fields.get(b'truncated', fields.get('truncated', b'')))}): it cannot be "
                           "replayed; `tradebot dlq purge` removes it")
        back_to, replay = _replay_fields(fields, keys)
        source_stream = display(fields.get(b"source_stream", fields.get("source_stream", b"")))
        if back_to is None and source_stream == keys.control:
            back_to = keys.control  # a control entry the router refused: back where it came from
        if back_to is not None and stream is not None and stream != back_to:
            raise OpsInputError(f"DLQ entry {entry_id} is a control signal: it goes back to {back_to}, not {stream}")
        target = back_to or stream or source_stream
        if not target:
            raise OpsError(f"DLQ entry {entry_id} names no source stream; give --stream")
        if target not in (*settings.source_streams, keys.control):
            raise OpsInputError(f"stream {target!r} is not a source stream the router reads "
                                f"(TRADEBOT_SOURCE_STREAMS={','.join(settings.source_streams)}); give --stream")
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
    below, removed = format_id(next_id(parse_id(up_to_id))), 0
    while True:  # by id, not XTRIM MINID (see bot.streams.delete_below), a chunk at a time
        went = delete_below(rb, keys.dlq, below)
        removed += went
        if went == 0:
            return removed
