"""The operator's hands on the fleet: inject a signal, switch the kill switch on (halt) and off (resume)."""
from __future__ import annotations

import time
from collections.abc import Mapping

import redis
from redis.typing import EncodableT, FieldT

from bot.codec import display
from bot.config import Settings
from bot.keys import Keys
from bot.ops.errors import OpsInputError
from bot.signals import SignalError, parse_raw


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
