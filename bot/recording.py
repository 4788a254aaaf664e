"""Recordings for replay: the signals that arrived and the prices that were there.

A recording is JSONL, one record a line, oldest first:
    {"kind": "signal", "at": 1796140800.123, "stream": "nvda", "id": "1796140800123-0",
     "fields": {"ticker": "NVDA", "direction": "b"}}
    {"kind": "price", "at": 1796140800.5, "symbol": "NVDA", "bid": "100.01", "ask": "100.03",
     "last": "100.02"}
``tradebot record`` writes one from a fleet's Redis (the source streams, and the price history the
poller keeps when ``TRADEBOT_PRICE_HISTORY`` is set); ``load_signals_csv`` / ``load_prices_csv``
read what users bring (TradingView alert logs, downloaded bars). Bad input is a RecordingError
naming the file, the line and the field.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import redis

from bot.codec import display, display_fields
from bot.errors import InputError
from bot.keys import Keys
from bot.streams import parse_id

PRICE_FIELDS = ("bid", "ask", "last")


class RecordingError(InputError, ValueError):
    """A recording or an imported file that cannot be used (the message names where)."""


@dataclass(frozen=True)
class RecordedSignal:
    at: float  # Unix seconds the entry arrived (its id's time)
    fields: Mapping[str, str]  # the source entry's own fields: ticker, direction, qty...
    stream: str = "nvda"
    id: str = ""  # the original entry id, when recorded from Redis

    def to_json(self) -> dict[str, Any]:
        return {"kind": "signal", "at": self.at, "stream": self.stream, "id": self.id, "fields": dict(self.fields)}


@dataclass(frozen=True)
class RecordedPrice:
    at: float
    symbol: str
    bid: Decimal | None = None
    ask: Decimal | None = None
    last: Decimal | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "price", "at": self.at, "symbol": self.symbol}
        for name in PRICE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = format(value, "f")
        return out


@dataclass
class Recording:
    signals: list[RecordedSignal] = field(default_factory=list)
    prices: list[RecordedPrice] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [s.at for s in self.signals] + [p.at for p in self.prices]

    @property
    def start(self) -> float | None:
        return min(self.times) if self.times else None

    @property
    def end(self) -> float | None:
        return max(self.times) if self.times else None

    def records(self) -> list[RecordedSignal | RecordedPrice]:
        """Every record, oldest first (a price before a signal of the same instant: it was there)."""
        both: list[RecordedSignal | RecordedPrice] = [*self.prices, *self.signals]
        return sorted(both, key=lambda r: (r.at, isinstance(r, RecordedSignal)))

    def write(self, path: Path) -> int:
        """Write the recording as JSONL; how many records."""
        records = self.records()
        with path.open("w", encoding="utf-8") as out:
            for record in records:
                out.write(json.dumps(record.to_json(), separators=(",", ":")) + "\n")
        return len(records)


# --------------------------------------------------------------------------- from a fleet's Redis


def record_from_redis(r: redis.Redis, keys: Keys, streams: Iterable[str], since: float, until: float) -> Recording:
    """The source streams' entries and the recorded prices between ``since`` and ``until``."""
    recording = Recording()
    for stream in streams:
        for entry_id, fields in _range(r, stream, since, until):
            recording.signals.append(RecordedSignal(at=parse_id(entry_id)[0] / 1000.0, fields=display_fields(fields),
                                                    stream=stream, id=entry_id))
    for entry_id, fields in _range(r, keys.price_history, since, until):
        text = display_fields(fields)
        at = _number(text.get("at", ""), "price history", entry_id, "at") or parse_id(entry_id)[0] / 1000.0
        recording.prices.append(RecordedPrice(at=at, symbol=text.get("symbol", ""),
                                              **{n: _decimal(text.get(n), "price history", entry_id, n)
                                                 for n in PRICE_FIELDS}))
    return recording


def _range(r: redis.Redis, stream: str, since: float, until: float, page: int = 5000) -> Iterator[tuple[str, Any]]:
    low, high = f"{int(since * 1000)}-0", f"{int(until * 1000)}-{2**64 - 1}"
    while True:
        rows = r.xrange(stream, min=low, max=high, count=page) or []
        for entry_id, fields in rows:
            yield display(entry_id), fields or {}
        if len(rows) < page:
            return
        low = "(" + display(rows[-1][0])


# --------------------------------------------------------------------------- files


def load(path: Path) -> Recording:
    """A JSONL recording (as ``tradebot record`` writes it)."""
    recording = Recording()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RecordingError(f"{path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError:
            raise RecordingError(f"{where}: not JSON") from None
        if not isinstance(record, dict):
            raise RecordingError(f"{where}: a record must be a JSON object")
        kind = record.get("kind")
        at = _number(record.get("at"), where, "", "at")
        if at is None:
            raise RecordingError(f"{where}: 'at' (Unix seconds) is required")
        if kind == "signal":
            fields = record.get("fields")
            if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
                raise RecordingError(f"{where}: 'fields' must be an object of strings")
            recording.signals.append(RecordedSignal(at=at, fields=fields, stream=str(record.get("stream") or "nvda"),
                                                    id=str(record.get("id") or "")))
        elif kind == "price":
            recording.prices.append(_price(record, at, where))
        else:
            raise RecordingError(f"{where}: 'kind' must be signal or price, got {kind!r}")
    return recording


def load_signals_csv(path: Path, stream: str = "nvda") -> list[RecordedSignal]:
    """``time,ticker,direction[,qty,...]`` with a header; time as Unix seconds or ISO 8601. Every
    other column becomes a field of the signal, as a source entry would carry it."""
    signals = []
    for where, row in _csv_rows(path, required=("time", "ticker", "direction")):
        at = _time(row.pop("time"), where)
        fields = {k: v for k, v in row.items() if k and v not in (None, "")}
        signals.append(RecordedSignal(at=at, fields=fields, stream=stream))
    return signals


def load_prices_csv(path: Path) -> list[RecordedPrice]:
    """``time,symbol,bid,ask,last[,volume]`` with a header (bars: give ``close`` as ``last``)."""
    prices = []
    for where, row in _csv_rows(path, required=("time", "symbol")):
        if "last" not in row and "close" in row:
            row["last"] = row["close"]
        record = {"symbol": row["symbol"], **{n: row.get(n) for n in PRICE_FIELDS if row.get(n) not in (None, "")}}
        prices.append(_price(record, _time(row["time"], where), where))
    return prices


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[str, dict[str, str]]]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise RecordingError(f"{path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            shown = ", ".join(header) or "none"
            raise RecordingError(f"{path}: the header needs {', '.join(missing)} (it has {shown})")
        for number, raw in enumerate(reader, 2):
            yield f"{path}:{number}", {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}


def _price(record: Mapping[str, Any], at: float, where: str) -> RecordedPrice:
    symbol = str(record.get("symbol") or "").strip().upper()
    if not symbol:
        raise RecordingError(f"{where}: 'symbol' is required")
    values = {n: _decimal(record.get(n), where, "", n) for n in PRICE_FIELDS}
    if all(v is None for v in values.values()):
        raise RecordingError(f"{where}: a price needs bid, ask or last")
    return RecordedPrice(at=at, symbol=symbol, **values)


def _time(text: str, where: str) -> float:
    value = _number(text, where, "", "time")
    if value is not None:
        return value
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RecordingError(f"{where}: time {text!r} is neither Unix seconds nor ISO 8601") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _number(raw: Any, where: str, entry: str, name: str) -> float | None:
    if raw is None or raw == "" or isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value < 0:
        raise RecordingError(f"{where}{' ' + entry if entry else ''}: {name} {raw!r} is not a time")
    return value


def _decimal(raw: Any, where: str, entry: str, name: str) -> Decimal | None:
    if raw is None or raw == "":
        return None
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise RecordingError(f"{where}{' ' + entry if entry else ''}: {name} {raw!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise RecordingError(f"{where}{' ' + entry if entry else ''}: {name} {raw!r} must be a positive price")
    return value
