"""The fleet's trading state: ``active``, ``reduce-only`` (only orders that shrink a position) or
``halted`` (no orders), one for the whole fleet, in Redis.

Two keys, so the kill switch stays what DESIGN.md names: ``tradebot:halt`` present = halted (any
tool may SET it), ``tradebot:reduce_only`` present = reduce-only; the value of each is the reason.
Halted wins when both are there. Workers read both in the snapshot their gates judge.
"""
from __future__ import annotations

from dataclasses import dataclass

import redis

from bot.codec import display
from bot.keys import Keys

ACTIVE, REDUCE_ONLY, HALTED = "active", "reduce-only", "halted"
STATES = (ACTIVE, REDUCE_ONLY, HALTED)


@dataclass(frozen=True)
class TradingState:
    state: str
    reason: str | None = None

    @property
    def allows_buys(self) -> bool:
        return self.state == ACTIVE

    @property
    def allows_sells(self) -> bool:
        return self.state != HALTED

    def describe(self) -> str:
        return self.state + (f": {self.reason}" if self.reason else "")


def state_of(halt_value: str | None, reduce_only_value: str | None) -> TradingState:
    """The state the two keys' values say (None: the key is absent)."""
    if halt_value is not None:
        return TradingState(HALTED, halt_value.strip() or "(no reason given)")
    if reduce_only_value is not None:
        return TradingState(REDUCE_ONLY, reduce_only_value.strip() or "(no reason given)")
    return TradingState(ACTIVE)


def read_state(r: redis.Redis, keys: Keys) -> TradingState:
    pipe = r.pipeline(transaction=False)
    pipe.get(keys.halt)
    pipe.get(keys.reduce_only)
    halt_value, reduce_value = pipe.execute()
    return state_of(None if halt_value is None else display(halt_value),
                    None if reduce_value is None else display(reduce_value))


def set_state(r: redis.Redis, keys: Keys, state: str, reason: str = "", *,
              only_if: TradingState | None = None) -> TradingState:
    """Switch the fleet to ``state`` (``reason`` required unless active), atomically; the state it
    had. With ``only_if``, only while the state is still that one (a breaker's compare-and-set: an
    operator's halt set meanwhile is never overwritten); the state found is returned either way."""
    if state not in STATES:
        raise ValueError(f"trading state {state!r} is not one of {', '.join(STATES)}")
    if state != ACTIVE and not reason.strip():
        raise ValueError("a reason is required")
    found: list[TradingState] = []

    def switch(pipe: redis.client.Pipeline) -> None:
        halt_value, reduce_value = pipe.get(keys.halt), pipe.get(keys.reduce_only)
        found[:] = [state_of(None if halt_value is None else display(halt_value),
                             None if reduce_value is None else display(reduce_value))]
        if only_if is not None and found[0] != only_if:
            return
        pipe.multi()
        pipe.delete(keys.halt, keys.reduce_only)
        if state == HALTED:
            pipe.set(keys.halt, reason.strip())
        elif state == REDUCE_ONLY:
            pipe.set(keys.reduce_only, reason.strip())

    r.transaction(switch, keys.halt, keys.reduce_only)
    return found[0]
