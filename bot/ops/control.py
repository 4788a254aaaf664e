"""The operator's hands on the fleet: inject a signal, set the trading state (halt, reduce-only, resume)."""
from __future__ import annotations

import time
from collections.abc import Mapping

import redis
from redis.typing import EncodableT, FieldT

from bot.breakers import acknowledge
from bot.codec import display
from bot.config import Settings
from bot.keys import Keys
from bot.ops.errors import OpsInputError
from bot.signals import SignalError, parse_raw
from bot.trading import ACTIVE, HALTED, REDUCE_ONLY, TradingState, read_state, set_state


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


def halt(r: redis.Redis, keys: Keys, reason: str, *, reduce_only: bool = False) -> TradingState:
    """Halt the fleet (no orders), or with ``reduce_only`` only allow orders that shrink a position;
    the state it had."""
    if not reason.strip():
        raise OpsInputError("--reason must not be empty")
    return set_state(r, keys, REDUCE_ONLY if reduce_only else HALTED, reason)


def resume(r: redis.Redis, keys: Keys) -> str | None:
    """Back to active; the state it left with its reason ("halted: news"), or None if it was active."""
    previous = set_state(r, keys, ACTIVE)
    acknowledge(r, keys)  # the breakers start afresh: the peak from now, the daily check tomorrow
    return previous.describe() if previous.state != ACTIVE else None


def halt_reason(r: redis.Redis, keys: Keys) -> str | None:
    """Why orders are held back (halted or reduce-only), None when trading is active."""
    state = read_state(r, keys)
    return None if state.state == ACTIVE else state.describe()
