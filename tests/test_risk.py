from decimal import Decimal as D

import pytest

from bot.config import Settings
from bot.risk import (
    RiskLimits,
    buy_cash_cap,
    check_halt,
    check_market_open,
    check_order_notional,
    check_position_value,
    check_signal_age,
    pre_trade_reason,
    sell_qty_cap,
)

LIMITS = RiskLimits(max_signal_age=60, max_order_notional=D(10000), max_position_value=D(20000))


def test_from_settings():
    limits = RiskLimits.from_settings(Settings(max_signal_age=30.0, max_order_notional=D(5), extended_hours=True))
    assert limits == RiskLimits(30.0, D(5), D(1000000), True)


def test_halt():
    assert check_halt(None) is None
    assert check_halt("maintenance") == "kill switch on: maintenance"
    assert check_halt("") == "kill switch on: (no reason given)"


def test_signal_age():
    assert check_signal_age(1000.0, 1059.9, LIMITS) is None
    assert check_signal_age(1000.0, 1075.2, LIMITS) == "signal is 75.2s old (max 60s)"
    assert check_signal_age(1000.0, 998.0, LIMITS) is None  # small skew between hosts is tolerated
    assert "in the future" in check_signal_age(1000.0, 900.0, LIMITS)
    assert check_signal_age(None, 1000.0, LIMITS) == "signal age unknown: it carries no source time"


def test_market_open_fails_closed():
    assert check_market_open(True, LIMITS) is None
    assert check_market_open(False, LIMITS) == "market is closed"
    assert check_market_open(None, LIMITS).startswith("market clock unknown")
    extended = RiskLimits(60, D(1), D(1), allow_extended_hours=True)
    assert check_market_open(False, extended) is None
    assert check_market_open(None, extended).startswith("market clock unknown")


def test_market_clock_too_old_or_from_the_future_is_unknown():
    assert check_market_open(True, LIMITS, clock_age=89.0) is None
    assert check_market_open(True, LIMITS, clock_age=91.0) == \
        "market clock unknown: stale, polled 91s ago (max 90s); is the price poller running?"
    assert check_market_open(True, LIMITS, clock_age=-6.0).startswith("market clock unknown: polled 6.0s in the future")
    assert check_market_open(True, LIMITS, clock_age=-1.0) is None  # small skew between hosts
    extended = RiskLimits(60, D(1), D(1), allow_extended_hours=True)
    assert check_market_open(False, extended, clock_age=120.0).startswith("market clock unknown: stale")
    assert pre_trade_reason(halt_reason=None, source_at=90.0, now=100.0, clock_is_open=True, limits=LIMITS,
                            clock_age=300.0).startswith("market clock unknown: stale")


def test_sell_qty_cap_is_whole_shares_within_the_order_notional():
    assert sell_qty_cap(LIMITS, D("99.99")) == 100  # 10000 / 99.99 = 100.01
    assert sell_qty_cap(LIMITS, D(100)) == 100
    assert sell_qty_cap(LIMITS, D(20000)) == 0
    assert sell_qty_cap(LIMITS, D(0)) == 0


def test_order_notional():
    assert check_order_notional(D(100), D(100), LIMITS) is None  # exactly the limit
    assert check_order_notional(D(101), D(100), LIMITS) == \
        "order notional 10100.00 (101 x 100) exceeds the max 10000.00"
    assert "10000.001" in check_order_notional(D(1), D("10000.001"), LIMITS)  # the fraction is not hidden
    assert check_order_notional(None, D(1), LIMITS).startswith("order value unknown")


def test_position_value():
    assert check_position_value(D(100), D(100), D(100), LIMITS) is None
    assert check_position_value(D(150), D("50.5"), D(100), LIMITS) == \
        "position would be worth 20050.00 (150 held + 50.5 x 100), above the max 20000.00"
    assert check_position_value(D(0), None, D(1), LIMITS).startswith("position value unknown")


def test_buy_cash_cap_sizes_to_both_limits():
    assert buy_cash_cap(LIMITS, current_qty=D(0), price=D(100)) == D(10000)
    assert buy_cash_cap(LIMITS, current_qty=D(150), price=D(100)) == D(5000)
    assert buy_cash_cap(LIMITS, current_qty=D(300), price=D(100)) == 0


@pytest.mark.parametrize("halt,source_at,is_open,require_open,expected", [
    ("stop", 0.0, None, True, "kill switch on: stop"),  # halt first, even with an old signal
    (None, 0.0, False, True, "signal is 100.0s old (max 60s)"),  # then age
    (None, 90.0, False, True, "market is closed"),  # then the clock
    (None, 90.0, None, False, None),  # market hours not required (not the default strategy)
    (None, 90.0, True, True, None),
])
def test_pre_trade_reason_runs_halt_age_market_in_order(halt, source_at, is_open, require_open, expected):
    assert pre_trade_reason(halt_reason=halt, source_at=source_at, now=100.0, clock_is_open=is_open,
                            limits=LIMITS, require_open=require_open) == expected
