"""Latency and fault injection, and the rate-limit headers, of the paper broker.

Endpoint groups: `orders` (/v2/orders...), `trading` (every other trading path, and orders when
no `orders` value is set), `data` (/v2/stocks/...), `all` (fallback for every group).
A setting is one value for all groups (`0.05`) or per group (`orders=0.05,data=0.01`);
a latency value may be a uniform range (`0.01-0.05`). Random draws come from a generator
seeded from the broker's seed, so a run with a given seed injects the same faults.
"""
from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.errors import InputError

log = logging.getLogger(__name__)

GROUPS = ("all", "trading", "orders", "data")
FALLBACKS = {"orders": ("orders", "trading", "all"), "trading": ("trading", "all"), "data": ("data", "all")}
WHEN_500 = ("before", "after", "random")

Range = tuple[float, float]


class SettingError(InputError, ValueError):
    """A latency/fault setting cannot be used; the message says which and why."""


def _number(text: Any, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SettingError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise SettingError(f"{what}: {text!r} must be a finite number >= 0")
    return value


def _split_groups(spec: Any, what: str) -> dict[str, Any]:
    """`0.1` | "0.1" | "orders=0.1,data=0.2" | {"orders": 0.1} -> {group: raw value}."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, str) and "=" in spec:
        items = []
        for part in spec.split(","):
            name, sep, value = part.partition("=")
            if not sep:
                raise SettingError(f"{what}: {part!r} is not GROUP=VALUE")
            items.append((name.strip(), value.strip()))
    else:
        items = [("all", spec)]
    out: dict[str, Any] = {}
    for name, value in items:
        if name not in GROUPS:
            raise SettingError(f"{what}: unknown group {name!r}; groups are {', '.join(GROUPS)}")
        out[name] = value
    return out


def parse_latency(spec: Any) -> dict[str, Range]:
    """Seconds per group; `A` is fixed, `A-B` (or a [A, B] list) uniform between A and B."""
    ranges: dict[str, Range] = {}
    for group, raw in _split_groups(spec, "latency").items():
        if isinstance(raw, (list, tuple)) and len(raw) == 2:
            low, high = (_number(x, "latency") for x in raw)
        elif isinstance(raw, str) and "-" in raw.strip().lstrip("-"):
            low_text, _, high_text = raw.strip().partition("-")
            low, high = _number(low_text, "latency"), _number(high_text, "latency")
        else:
            low = high = _number(raw, "latency")
        if high < low:
            raise SettingError(f"latency: range {raw!r} ends below its start")
        ranges[group] = (low, high)
    return ranges


def parse_probabilities(spec: Any, what: str) -> dict[str, float]:
    probabilities: dict[str, float] = {}
    for group, raw in _split_groups(spec, what).items():
        value = _number(raw, what)
        if value > 1:
            raise SettingError(f"{what}: probability {raw!r} is above 1")
        probabilities[group] = value
    return probabilities


def resolve(values: Mapping[str, Any], group: str, default: Any) -> Any:
    for name in FALLBACKS.get(group, (group, "all")):
        if name in values:
            return values[name]
    return default


@dataclass(frozen=True)
class Fault:
    kind: str  # "hang" | "429" | "500"
    after: bool = False  # 500 only: answer 500 after the request took effect


@dataclass
class FaultSettings:
    latency: dict[str, Range] = field(default_factory=dict)
    latency_jitter: float = 0.0
    fault_500: dict[str, float] = field(default_factory=dict)
    fault_429: dict[str, float] = field(default_factory=dict)
    fault_hang: dict[str, float] = field(default_factory=dict)
    hang_seconds: float = 30.0
    fault_500_when: str = "random"
    retry_after: float = 1.0
    # a POST /v2/orders is held this long in the network BEFORE it reaches the exchange (its client
    # may time out, look the order up, find nothing, and then the order appears)
    submit_delay: float = 0.0

    @classmethod
    def build(cls, **raw: Any) -> FaultSettings:
        settings = cls()
        settings.update(raw)
        return settings

    def update(self, changes: Mapping[str, Any]) -> None:
        """Validate every change first, then apply them all (a bad request changes nothing)."""
        parsed: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "latency":
                parsed[name] = parse_latency(value)
            elif name in ("fault_500", "fault_429", "fault_hang"):
                parsed[name] = parse_probabilities(value, name)
            elif name in ("latency_jitter", "hang_seconds", "retry_after", "submit_delay"):
                parsed[name] = _number(value, name)
            elif name == "fault_500_when":
                if value not in WHEN_500:
                    raise SettingError(f"fault_500_when must be one of {', '.join(WHEN_500)}, got {value!r}")
                parsed[name] = value
            else:
                raise SettingError(f"unknown setting {name!r}")
        for name, value in parsed.items():
            setattr(self, name, value)

    def to_json(self) -> dict[str, Any]:
        return {
            "latency": {g: list(r) for g, r in self.latency.items()},
            "latency_jitter": self.latency_jitter,
            "fault_500": dict(self.fault_500),
            "fault_429": dict(self.fault_429),
            "fault_hang": dict(self.fault_hang),
            "hang_seconds": self.hang_seconds,
            "fault_500_when": self.fault_500_when,
            "retry_after": self.retry_after,
            "submit_delay": self.submit_delay,
        }


class FaultInjector:
    """Draws latency and faults per request from a seeded generator. Thread-safe."""

    def __init__(self, settings: FaultSettings, seed: int) -> None:
        self.settings = settings
        self._rng = random.Random(f"{seed}:faults")
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.settings.update(changes)
            return self.settings.to_json()

    def restore(self, settings: FaultSettings) -> None:
        """Back to `settings` (the start-up ones) with no faults counted."""
        with self._lock:
            self.settings = settings
            self.counts.clear()

    def latency(self, group: str) -> float:
        with self._lock:
            low, high = resolve(self.settings.latency, group, (0.0, 0.0))
            delay = low if high == low else self._rng.uniform(low, high)
            if self.settings.latency_jitter:
                delay += self._rng.uniform(0, self.settings.latency_jitter)
            return delay

    def draw(self, group: str, mutating: bool) -> Fault | None:
        """At most one fault: hang is tried first, then 429, then 500 (each its own draw)."""
        with self._lock:
            s = self.settings
            fault = None
            if self._hit(resolve(s.fault_hang, group, 0.0)):
                fault = Fault("hang")
            elif self._hit(resolve(s.fault_429, group, 0.0)):
                fault = Fault("429")
            elif self._hit(resolve(s.fault_500, group, 0.0)):
                after = mutating and (s.fault_500_when == "after"
                                      or (s.fault_500_when == "random" and self._rng.random() < 0.5))
                fault = Fault("500", after=after)
            if fault is not None:
                name = "500_after" if fault.after else fault.kind
                self.counts[name] = self.counts.get(name, 0) + 1
            return fault

    def _hit(self, probability: float) -> bool:
        # no draw for 0 and 1, so switching a fault on or off does not shift the sequence of others
        if probability <= 0:
            return False
        if probability >= 1:
            return True
        return self._rng.random() < probability


@dataclass(frozen=True)
class RateState:
    limit: int
    remaining: int
    reset: int  # Unix seconds when the window refills
    allowed: bool

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(self.reset)}


class RateWindow:
    """Fixed one-minute windows per bucket (trading, data), like Alpaca's per-minute quota.
    Always counts (for the headers); refuses only when `enforce` is on."""

    def __init__(self, limit: int = 200, enforce: bool = False, wall: Any = time.time) -> None:
        self.limit = limit
        self.enforce = enforce
        self._wall = wall
        self._windows: dict[str, tuple[int, int]] = {}  # bucket -> (window start, count)
        self._lock = threading.Lock()

    def consume(self, bucket: str) -> RateState:
        now = self._wall()
        start = int(now // 60 * 60)
        with self._lock:
            window_start, used = self._windows.get(bucket, (start, 0))
            if window_start != start:
                window_start, used = start, 0
            allowed = not self.enforce or used < self.limit
            if allowed:
                used += 1
            self._windows[bucket] = (window_start, used)
        return RateState(self.limit, max(0, self.limit - used), window_start + 60, allowed)

    def peek(self, bucket: str) -> RateState:
        start = int(self._wall() // 60 * 60)
        with self._lock:
            window_start, used = self._windows.get(bucket, (start, 0))
        if window_start != start:
            used = 0
        return RateState(self.limit, max(0, self.limit - used), start + 60, True)

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()
