"""Consumer-group plumbing shared by the router and the workers: create groups, read (own pending
entries first), reclaim, count deliveries, dead-letter, record exactly once, trim, forget consumers.

Works with decoded (str) and bytes clients alike: stream names and ids come back as ``str``, field
names and values as the client gives them.  Written for Redis 6.2 (XAUTOCLAIM exists, XINFO GROUPS
has no lag) and works on 7+.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import redis
from redis.typing import KeyT, StreamIdT

from bot import codec, lua
from bot.keys import Keys

log = logging.getLogger(__name__)

DONE_TTL_SECONDS = 7 * 24 * 3600  # how long a done/routed marker guards against a second record
MAX_RAW_FIELDS = 100  # more original fields than this go to the DLQ as one JSON field
MAX_RAW_NAME_CHARS = 64
# A dead letter keeps at most this much of one original value (a 1 MB poison payload would otherwise
# be copied whole into the DLQ): the rest is dropped, its size and SHA-256 recorded in `truncated`.
MAX_DLQ_VALUE_BYTES = 4096
KEPT_OF_TRUNCATED = 256
TRIM_CHUNK = 10_000  # entries removed per trim call at most when trimming to a MAXLEN

StreamId = tuple[int, int]


class StreamEntry(NamedTuple):
    stream: str
    id: str
    fields: dict[Any, Any]


# --------------------------------------------------------------------------- small helpers

def _b(value: bytes | str) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)


# A complete stream entry id as Redis gives it: <milliseconds>-<sequence>.
_STREAM_ID = re.compile(r"(\d+)-(\d+)")


def is_stream_id(text: str) -> bool:
    """Is ``text`` a complete stream entry id (``<ms>-<seq>``, as XADD returns)?"""
    return bool(_STREAM_ID.fullmatch(text))


def parse_id(entry_id: str | bytes) -> StreamId:
    ms, _, seq = codec.text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def format_id(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def next_id(stream_id: StreamId) -> StreamId:
    """The smallest id greater than ``stream_id``."""
    ms, seq = stream_id
    return (ms + 1, 0) if seq == 2**64 - 1 else (ms, seq + 1)


def _pairs(flat: Sequence[Any] | None) -> dict[Any, Any]:
    flat = flat or []
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


# --------------------------------------------------------------------------- groups and reading

def ensure_group(r: redis.Redis, stream: str, group: str, start_id: str = "$") -> bool:
    """Create ``group`` on ``stream`` (and the stream itself) unless it exists; True if created."""
    try:
        r.xgroup_create(stream, group, id=start_id, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    log.info("created consumer group %s on %s at %s", group, stream, start_id)
    return True


def _stream_items(reply: Any) -> list[tuple[str, list]]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [(codec.text(stream), items[0] if items and isinstance(items[0], list) else items)
                for stream, items in reply.items()]
    return [(codec.text(stream), items) for stream, items in reply]


class GroupReader:
    """XREADGROUP for one consumer: first its own pending entries (id ``0``, paged), then new ones (``>``).

    The replay matters after a restart: entries delivered to this consumer name before a crash are
    in its PEL and would otherwise wait for someone's XAUTOCLAIM.  ``last_replayed`` names the
    entries of the last read that came from the PEL (their delivery count is above 1).
    """

    def __init__(self, streams: str | Iterable[str], group: str, consumer: str, *, count: int = 10,
                 block_ms: int | None = 2000, pending_first: bool = True) -> None:
        self.streams = (streams,) if isinstance(streams, str) else tuple(streams)
        self.group, self.consumer = group, consumer
        self.count, self.block_ms = count, block_ms
        # per stream: the PEL position being replayed, or None once reading new entries
        self._cursor: dict[str, str | None] = {s: ("0" if pending_first else None) for s in self.streams}
        self.last_replayed: frozenset[tuple[str, str]] = frozenset()

    @property
    def replaying(self) -> bool:
        return any(c is not None for c in self._cursor.values())

    def replay_pending(self) -> None:
        """Replay the own PEL again on the next read (e.g. after Redis came back)."""
        self._cursor = {s: "0" for s in self.streams}

    def read(self, r: redis.Redis) -> list[StreamEntry]:
        """The next entries; while replaying, an exhausted PEL falls through to new entries at once."""
        while True:
            was_replaying = self.replaying
            entries = self._read_once(r)
            if entries or not was_replaying:
                return entries

    def read_pending(self, r: redis.Redis) -> list[StreamEntry]:
        """The next page of this consumer's own PEL, never new entries: [] once it is drained (then
        ``read`` takes new ones). Reading the history counts a delivery of each entry returned."""
        if not self.replaying:
            return []
        return self._read_once(r)

    def _read_once(self, r: redis.Redis) -> list[StreamEntry]:
        ids: dict[KeyT, StreamIdT] = {s: (c if c is not None else ">") for s, c in self._cursor.items()}
        # a history read never blocks; block only when every stream reads new entries
        block = None if self.replaying else self.block_ms
        try:
            reply = r.xreadgroup(self.group, self.consumer, ids, count=self.count, block=block)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the group (restart without data, or someone deleted it): recreate from
            # the beginning of what is there so nothing added since is skipped.
            log.warning("consumer group %s missing (%s); recreating it", self.group, exc)
            for stream in self.streams:
                ensure_group(r, stream, self.group, "0")
            reply = r.xreadgroup(self.group, self.consumer, ids, count=self.count, block=block)
        return self._collect(r, reply)

    def _collect(self, r: redis.Redis, reply: Any) -> list[StreamEntry]:
        entries: list[StreamEntry] = []
        replayed: set[tuple[str, str]] = set()
        answered: set[str] = set()
        for stream, items in _stream_items(reply):
            answered.add(stream)
            from_pel = self._cursor.get(stream) is not None
            if from_pel:
                # an empty history answer means the own PEL is drained: switch to new entries
                self._cursor[stream] = codec.text(items[-1][0]) if items else None
            for raw_id, fields in items:
                entry_id = codec.text(raw_id)
                if from_pel and not fields:
                    # pending, but its data was deleted/trimmed: nothing to process or dead-letter
                    r.xack(stream, self.group, entry_id)
                    log.warning("acked pending entry %s %s of %s: its data was deleted",
                                stream, entry_id, self.consumer)
                    continue
                entries.append(StreamEntry(stream, entry_id, dict(fields or {})))
                if from_pel:
                    replayed.add((stream, entry_id))
        for stream, cursor in self._cursor.items():
            if cursor is not None and stream not in answered:
                self._cursor[stream] = None  # no history answer at all: treat the PEL as drained
        self.last_replayed = frozenset(replayed)
        return entries


# --------------------------------------------------------------------------- reclaiming

# The script (bot/lua/stream_autoclaim.lua) also resolves and reports entries whose data was deleted:
# on Redis 6.2 XAUTOCLAIM claims them with nil data and the script acks them; Redis >= 7 drops them
# from the PEL itself and names them in its reply's third element (acked too, a no-op there).

AUTOCLAIM_LOGGED_IDS = 10  # deleted ids named at most in the warning of one autoclaim call


class Autoclaimed(NamedTuple):
    """What one autoclaim call did: entries claimed, and the ids of pending entries whose data
    was deleted, which are no longer pending (``acked`` by the script, ``dropped`` by the server)."""

    claimed: list[tuple[str, dict[Any, Any]]]
    acked: list[str]
    dropped: list[str]

    @property
    def deleted(self) -> list[str]:
        return [*self.acked, *self.dropped]


def autoclaim_entries(r: redis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int,
                      count: int = 100) -> Autoclaimed:
    """Claim up to ``count`` entries idle for ``min_idle_ms`` (any consumer's, own included).

    Follows the XAUTOCLAIM cursor until the scan wraps or ``count`` entries are claimed.  Pending
    entries whose data was deleted are never left pending: acked, counted in the result and logged.
    """
    result = Autoclaimed([], [], [])
    cursor = "0-0"
    for _ in range(10_000):  # each call advances the cursor; the bound only guards against surprises
        try:
            next_cursor, entries, acked, dropped = lua.run(
                r, "stream_autoclaim", [stream],
                [group, consumer, int(min_idle_ms), cursor, count - len(result.claimed)])
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                break  # nothing can be pending in a group that does not exist
            raise
        result.acked.extend(codec.text(entry_id) for entry_id in acked)
        result.dropped.extend(codec.text(entry_id) for entry_id in dropped)
        result.claimed.extend((codec.text(entry_id), _pairs(flat)) for entry_id, flat in entries)
        cursor = codec.text(next_cursor)
        if cursor == "0-0" or len(result.claimed) >= count:
            break
    if result.acked or result.dropped:
        deleted = result.deleted
        shown = ", ".join(deleted[:AUTOCLAIM_LOGGED_IDS]) + (", ..." if len(deleted) > AUTOCLAIM_LOGGED_IDS else "")
        log.warning("%d pending entries of %s (group %s) had their data deleted, so are no longer pending "
                    "(%d acked, %d dropped by the server's XAUTOCLAIM): %s",
                    len(deleted), stream, group, len(result.acked), len(result.dropped), shown)
    return result


def autoclaim(r: redis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int,
              count: int = 100) -> list[tuple[str, dict[Any, Any]]]:
    """The entries claimed by :func:`autoclaim_entries` (deleted ones are acked, logged and skipped)."""
    return autoclaim_entries(r, stream, group, consumer, min_idle_ms, count).claimed


def delivery_count(r: redis.Redis, stream: str, group: str, entry_id: str) -> int:
    """How often ``entry_id`` was delivered in ``group``; 0 when it is not pending."""
    rows = r.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
    return int(rows[0]["times_delivered"]) if rows else 0


# --------------------------------------------------------------------------- exactly-once records

# bot/lua/stream_record_once.lua: marker, stream, ack stream and guards as KEYS; see its header.


def record_once(r: redis.Redis, *, marker: str, stream: str, fields: Mapping[Any, Any], ack_stream: str,
                group: str, entry_id: str, guards: Sequence[str] = (), marker_prefix: str = "",
                maxlen: int | None = None, ttl: int = DONE_TTL_SECONDS,
                pending_only: bool = False) -> tuple[bool, str]:
    """Atomically: unless ``marker`` (or any of ``guards``) exists, XADD ``fields`` to ``stream`` and
    SET ``marker`` = prefix + new id; in every case XACK ``entry_id`` of ``ack_stream``.
    ``pending_only``: also nothing when ``group`` delivered ``entry_id`` and it is no longer pending
    (acked by the consumer that recorded it: this one held it past the marker's ttl).

    Returns (True, new id) when written, (False, the existing marker's value) when already done.
    """
    args: list[Any] = [group, entry_id, int(ttl), "" if maxlen is None else int(maxlen), marker_prefix,
                       "1" if pending_only else "0"]
    for name, value in fields.items():
        args += [name, value]
    written, value = lua.run(r, "stream_record_once", [marker, stream, ack_stream, *guards], args)
    return bool(int(written)), codec.text(value)


def raw_fields_for_dlq(raw_fields: Mapping[bytes | str, bytes | str]) -> dict[str, bytes | str]:
    """The original fields as ``raw_<name>`` — or one ``raw`` JSON field when a name or value is not
    UTF-8, a name is empty/unprintable/over 64 chars, or there are more than 100 fields. A value over
    MAX_DLQ_VALUE_BYTES keeps its first KEPT_OF_TRUNCATED bytes; ``truncated`` (JSON) names it with
    its size and SHA-256 (such an entry is for inspection, not replay)."""
    items, truncated = [], []
    for name, value in ((_b(name), _b(value)) for name, value in raw_fields.items()):
        if len(value) > MAX_DLQ_VALUE_BYTES:
            truncated.append({"name": name.decode("utf-8", "replace"), "size": len(value),
                              "sha256": hashlib.sha256(value).hexdigest()})
            value = value[:KEPT_OF_TRUNCATED]
        items.append((name, value))
    kept = _raw_fields(items)
    if truncated:
        kept["truncated"] = json.dumps(truncated)
    return kept


def _raw_fields(items: list[tuple[bytes, bytes]]) -> dict[str, bytes | str]:
    texts: list[tuple[str, str]] = []
    for name, value in items:
        try:
            texts.append((name.decode("utf-8"), value.decode("utf-8")))
        except UnicodeDecodeError:
            break
    usable = len(texts) == len(items) <= MAX_RAW_FIELDS and all(
        0 < len(name) <= MAX_RAW_NAME_CHARS and name.isprintable() for name, _ in texts)
    if usable:
        return {f"raw_{name}": value for name, value in texts}
    return {"raw": json.dumps([_json_pair(name, value) for name, value in items])}


def _json_pair(name: bytes, value: bytes) -> dict[str, str]:
    pair: dict[str, str] = {}
    for label, data in (("name", name), ("value", value)):
        try:
            pair[label] = data.decode("utf-8")
        except UnicodeDecodeError:
            pair[f"{label}_b64"] = base64.b64encode(data).decode("ascii")
    return pair


def original_fields(dlq_fields: Mapping[bytes | str, bytes | str]) -> dict[bytes, bytes]:
    """Rebuild the original entry's fields from a DLQ entry (for inspection and replay)."""
    fields = {codec.text(k): v for k, v in dlq_fields.items()}
    if "raw" in fields:
        pairs = json.loads(codec.text(fields["raw"]))
        return {_from_json(p, "name"): _from_json(p, "value") for p in pairs}
    return {_b(k[4:]): _b(v) for k, v in fields.items() if k.startswith("raw_")}


def _from_json(pair: Mapping[str, str], label: str) -> bytes:
    if f"{label}_b64" in pair:
        return base64.b64decode(pair[f"{label}_b64"])
    return pair[label].encode("utf-8")


def dead_letter(r: redis.Redis, keys: Keys, *, ack_stream: str, group: str, entry_id: str,
                source_stream: str, source_id: str, reason: str, deliveries: int,
                raw_fields: Mapping[bytes | str, bytes | str], guard_keys: Sequence[str] = (),
                consumer: str = "", maxlen: int | None = None, ttl: int = DONE_TTL_SECONDS,
                pending_only: bool = False) -> bool:
    """Move an entry to ``keys.dlq`` with its reason and original fields, and XACK it — atomically,
    at most once per signal (guarded by ``keys.done(source_stream, source_id)`` and ``guard_keys``).

    ``ack_stream``/``entry_id`` is the entry being consumed (a source entry for the router, a
    ``tradebot:signals`` entry for a worker); ``source_stream``/``source_id`` name the original
    signal.  Returns True when the DLQ entry was written, False when the signal already had its
    journal or DLQ entry (the entry is acked either way).  The done marker's value is
    ``dlq:<dlq entry id>``.
    """
    fields: dict[str, Any] = {
        "source_stream": source_stream,
        "source_id": source_id,
        "reason": reason or "unknown reason",
        "deliveries": str(int(deliveries)),
        "entry_stream": ack_stream,
        "entry_id": entry_id,
        "consumer": consumer,
        "dead_at": repr(time.time()),
    }
    fields.update(raw_fields_for_dlq(raw_fields))
    written, _ = record_once(r, marker=keys.done(source_stream, source_id), stream=keys.dlq, fields=fields,
                             ack_stream=ack_stream, group=group, entry_id=entry_id, guards=guard_keys,
                             marker_prefix="dlq:", maxlen=maxlen, ttl=ttl, pending_only=pending_only)
    return written


# --------------------------------------------------------------------------- trimming



def acknowledged_bound(r: redis.Redis, stream: str, groups: Iterable[str] | None = None) -> StreamId | None:
    """The lowest id some group may still need: entries below it are acknowledged by every group.

    Every group on the stream counts, not only ``groups``; but if one of ``groups`` does not
    exist yet the answer is None (nothing is known to be acknowledged).  Per group: the oldest
    pending id (XPENDING summary), else just past its last-delivered-id (XINFO GROUPS).
    """
    try:
        infos = r.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream
        return None
    by_name = {codec.text(info["name"]): info for info in infos}
    missing = set(groups or ()) - set(by_name)
    if missing or not by_name:
        return None
    bounds = []
    for name, info in by_name.items():
        summary = r.xpending(stream, name) if int(info["pending"]) else None
        if summary and summary.get("pending") and summary.get("min"):
            bounds.append(parse_id(summary["min"]))
        else:
            bounds.append(next_id(parse_id(info["last-delivered-id"])))
    return min(bounds)


def delete_below(r: redis.Redis, stream: str, below: str, limit: int = TRIM_CHUNK) -> int:
    """Delete up to ``limit`` entries of ``stream`` with ids below ``below``; how many went. The
    exact trim every retention uses (see bot/lua/stream_delete_below.lua for why not XTRIM MINID)."""
    return int(lua.run(r, "stream_delete_below", [stream], [below, int(limit)]))


def trim_acknowledged(r: redis.Redis, stream: str, groups: Iterable[str] | None = None,
                      maxlen: int | None = None, *, min_age_ms: int | None = None,
                      now_ms: int | None = None) -> int:
    """Trim ``stream`` only behind what every group has acknowledged; returns entries removed.

    Without ``maxlen``/``min_age_ms`` every acknowledged entry goes.  With ``maxlen`` at most the
    oldest entries beyond ``maxlen`` go (at most 10 000 per call), with ``min_age_ms`` only
    entries older than that — and in all cases never one at or past the acknowledged bound.
    """
    bound = acknowledged_bound(r, stream, groups)
    if bound is None:
        return 0
    cutoff = bound
    if maxlen is not None:
        first_kept = lua.run(r, "stream_first_kept", [stream], [int(maxlen), TRIM_CHUNK])
        if not first_kept:
            return 0
        cutoff = min(cutoff, parse_id(first_kept))
    if min_age_ms is not None:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = min(cutoff, (max(now_ms - int(min_age_ms), 0), 0))
    if cutoff <= (0, 1):
        return 0
    removed = delete_below(r, stream, format_id(cutoff))
    if removed:
        log.debug("trimmed %d acknowledged entries from %s (below %s)", removed, stream, format_id(cutoff))
    return removed


# --------------------------------------------------------------------------- consumers



def delete_consumer_if_idle(r: redis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int = 0) -> bool:
    """XGROUP DELCONSUMER, atomically, only if ``consumer`` has no pending entries (and has been
    idle ``min_idle_ms``): a consumer's pending entries would become unclaimable."""
    return bool(int(lua.run(r, "stream_delete_consumer_if_idle", [stream], [group, consumer, int(min_idle_ms)])))


def default_consumer_name(role: str = "") -> str:
    """A consumer name unique per process: ``<host>-<pid>``, or ``<role>-<host>-<pid>``."""
    name = f"{socket.gethostname()}-{os.getpid()}"
    return f"{role}-{name}" if role else name


def reap_idle_consumers(r: redis.Redis, stream: str, group: str, min_idle_ms: int, keep: str = "") -> list[str]:
    """Remove the consumers of ``group`` idle at least ``min_idle_ms`` with nothing pending (dead
    processes: default names change with every pid), except ``keep`` (the caller itself).
    Returns the names removed; each removal re-checks pending and idle atomically."""
    reaped = []
    for info in consumers(r, stream, group):
        if info["name"] == keep or info["pending"] or info["idle"] < min_idle_ms:
            continue
        if delete_consumer_if_idle(r, stream, group, info["name"], min_idle_ms):
            reaped.append(info["name"])
            log.info("removed idle consumer %s from %s on %s", info["name"], group, stream)
    return reaped


def consumers(r: redis.Redis, stream: str, group: str) -> list[dict[str, Any]]:
    """XINFO CONSUMERS as dicts with str ``name`` and int ``pending``/``idle`` (ms); [] if no group."""
    try:
        rows = r.xinfo_consumers(stream, group)
    except redis.ResponseError:
        return []
    return [{**row, "name": codec.text(row["name"]), "pending": int(row["pending"]), "idle": int(row["idle"])}
            for row in rows]
