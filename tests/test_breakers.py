"""The breakers' rules: what trips, into which state, and how each resets."""
from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal as D

import pytest
import redis

from bot.breakers import Amount, BreakerLimits, Breakers, acknowledge
from bot.config import ConfigError
from bot.keys import Keys
from bot.ops.control import resume
from bot.trading import ACTIVE, HALTED, REDUCE_ONLY, read_state, set_state

KEYS = Keys("tbb")
DAY1 = 1_796_140_800.0  # 2026-12-01 15:00 UTC: 10:00 in New York
DAY2 = DAY1 + 86400


def env(**values: str) -> Callable[[str, str], str]:
    return lambda name, default: values.get(name, default)


def test_amounts_and_bad_settings_are_one_line_errors() -> None:
    assert Amount.parse("X", "2%") == Amount(D(2), True) and Amount.parse("X", "500") == Amount(D(500))
    assert Amount(D(2), True).of(D(10000)) == 200 and Amount.parse("X", "") is None
    limits = BreakerLimits.from_env(env(TRADEBOT_MAX_DAILY_LOSS="2%", TRADEBOT_MAX_OPEN_POSITIONS="3",
                                        TRADEBOT_COOLDOWN="30", TRADEBOT_BREAKER_ACTION="halted"))
    assert (limits.max_open_positions, limits.cooldown, limits.action) == (3, 30.0, HALTED)
    for name, value in (("TRADEBOT_MAX_DAILY_LOSS", "lots"), ("TRADEBOT_MAX_DRAWDOWN", "150%"),
                        ("TRADEBOT_MAX_ORDERS_PER_MINUTE", "0"), ("TRADEBOT_COOLDOWN", "-1"),
                        ("TRADEBOT_BREAKER_ACTION", "panic"), ("TRADEBOT_MAX_OPEN_POSITIONS", "two")):
        with pytest.raises(ConfigError) as caught:
            BreakerLimits.from_env(env(**{name: value}))
        assert name in str(caught.value) and "\n" not in str(caught.value)


def test_a_daily_loss_trips_reduce_only_and_ends_the_next_day(r: redis.Redis) -> None:
    clock = [DAY1]
    breakers = Breakers(r, KEYS, BreakerLimits(daily_loss=Amount(D(2), True)), now=lambda: clock[0])
    assert breakers.check_equity(D(9900), D(10000)) is None  # -1%
    reason = breakers.check_equity(D(9750), D(10000))  # -2.5%
    assert reason is not None and reason.startswith("daily loss 250.00")
    state = read_state(r, KEYS)
    assert state.state == REDUCE_ONLY and state.reason == "breaker: " + reason
    clock[0] = DAY2  # a new trading day: the trip ends by itself
    assert breakers.check_equity(D(9750), D(9750)) is None and read_state(r, KEYS).state == ACTIVE


def test_an_operators_state_is_not_undone_by_the_next_day(r: redis.Redis) -> None:
    clock = [DAY1]
    breakers = Breakers(r, KEYS, BreakerLimits(daily_loss=Amount(D(100))), now=lambda: clock[0])
    breakers.check_equity(D(9800), D(10000))
    set_state(r, KEYS, HALTED, "operator: broker incident")
    clock[0] = DAY2
    breakers.check_equity(D(9800), D(9800))
    assert read_state(r, KEYS).reason == "operator: broker incident"


def test_a_manual_resume_quiets_the_daily_check_until_tomorrow(r: redis.Redis) -> None:
    clock = [DAY1]
    breakers = Breakers(r, KEYS, BreakerLimits(daily_loss=Amount(D(100))), now=lambda: clock[0])
    breakers.check_equity(D(9800), D(10000))
    assert read_state(r, KEYS).state == REDUCE_ONLY
    acknowledge(r, KEYS, now=DAY1)
    set_state(r, KEYS, ACTIVE)
    assert breakers.check_equity(D(9700), D(10000)) is None and read_state(r, KEYS).state == ACTIVE
    clock[0] = DAY2
    assert breakers.check_equity(D(9500), D(9700)) is not None  # a new day's loss trips again


def test_a_drawdown_from_the_peak_halts_and_resume_restarts_the_peak(r: redis.Redis) -> None:
    breakers = Breakers(r, KEYS, BreakerLimits(drawdown=Amount(D(10), True), action=HALTED), now=lambda: DAY1)
    for equity in ("10000", "12000", "11500"):
        assert breakers.check_equity(D(equity), None) is None
    assert r.hget(KEYS.breakers, "peak") == "12000"
    reason = breakers.check_equity(D(10700), None)
    assert reason is not None and "from the equity peak 12000" in reason and read_state(r, KEYS).state == HALTED
    assert resume(r, KEYS) is not None and r.hget(KEYS.breakers, "peak") is None
    assert breakers.check_equity(D(10700), None) is None and read_state(r, KEYS).state == ACTIVE


def test_the_order_rate_trips_and_a_trip_never_softens_a_halt(r: redis.Redis) -> None:
    breakers = Breakers(r, KEYS, BreakerLimits(max_orders_per_minute=3), now=lambda: DAY1)
    assert [breakers.count_order(f"c{i}") for i in range(3)] == [None, None, None]
    assert breakers.count_order("c1") is None  # a replayed signal, a retried POST: the same order
    reason = breakers.count_order("c4")
    assert reason == "4 orders this minute (limit 3 a minute)" and read_state(r, KEYS).state == REDUCE_ONLY
    set_state(r, KEYS, HALTED, "operator")
    breakers.trip("something else", "2026-12-01")
    assert read_state(r, KEYS).reason == "operator"  # reduce-only would let buys' exits through a halt
    assert r.ttl(KEYS.orders_per_minute(int(DAY1 // 60))) > 0


def test_the_daily_reset_waits_for_the_brokers_day_and_never_undoes_a_newer_state(r: redis.Redis) -> None:
    clock = [DAY1]
    breakers = Breakers(r, KEYS, BreakerLimits(daily_loss=Amount(D(100))), now=lambda: clock[0])
    breakers.check_equity(D(9800), D(10000))
    clock[0] = DAY2
    breakers.check_equity(D(9800), D(10000))  # Alpaca has not rolled last_equity over yet
    assert read_state(r, KEYS).state == REDUCE_ONLY
    stale = read_state(r, KEYS)
    set_state(r, KEYS, HALTED, "operator")
    assert set_state(r, KEYS, ACTIVE, only_if=stale) != stale  # a compare-and-set that lost
    assert read_state(r, KEYS).reason == "operator"
