"""What `tradebot status` reports, as data: the report and its parts, and their JSON form."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


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
    halt: dict[str, Any] = field(default_factory=lambda: {"on": False, "reason": None, "state": "active"})
    trading_state: str = "active"  # active | reduce-only | halted (bot.trading)
    breakers: dict[str, str] = field(default_factory=dict)  # tradebot:breakers: peak, the last trip
    streams: list[StreamStatus] = field(default_factory=list)
    prices: list[dict[str, Any]] = field(default_factory=list)
    account: dict[str, Any] | None = None
    positions: dict[str, Any] = field(default_factory=dict)
    positions_age_s: float | None = None  # None: never polled
    clock: dict[str, Any] | None = None
    orders: list[dict[str, str]] = field(default_factory=list)
    dlq: int = 0
    # the order-updates listener: live or what is wrong; the last reconciliation and its drift
    listener: dict[str, Any] = field(default_factory=dict)
    reconcile: dict[str, Any] = field(default_factory=dict)
    unresolved: int = 0  # orders whose POST had an unknown outcome, not resolved yet
    heartbeats: list[dict[str, Any]] = field(default_factory=list)  # one per living process, with staleness
    pnl: dict[str, Any] = field(default_factory=dict)  # realized/unrealized per symbol and in total (bot.pnl)

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
