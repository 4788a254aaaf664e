from decimal import Decimal as D

import pytest

from bot.strategies import STRATEGIES, OrderPlan, plan_buy, plan_sell, round_to_tick


def buy(strategy="all-in", **kw):
    args = dict(weight=D(1), equity=D(10000), ask=D(100), signal_qty=None, fixed_qty=None, fixed_notional=None)
    args.update(kw)
    return plan_buy(strategy, **args)


def sell(strategy="all-in", **kw):
    args = dict(bid=D(100), signal_qty=None, fixed_qty=None)
    args.update(kw)
    return plan_sell(strategy, **args)


def test_strategies_listed():
    assert STRATEGIES == ("all-in", "fixed")


def test_all_in_buy_spends_its_weight_of_equity():
    plan = buy(weight=D("0.6"), equity=D(10000), ask=D(100))
    assert plan == OrderPlan("buy", None, D(6000), "market", "ioc", None)
    assert buy(weight=D("0.333"), equity=D("1000.5")).max_cash == D("333.16")  # rounded down to a cent
    assert buy(signal_qty=D(3)).qty is None  # all-in sizes from cash, not from the signal


def test_all_in_buy_counts_the_position_already_held():
    assert buy(weight=D("0.6"), position_value=D(2500)).max_cash == D(3500)
    with pytest.raises(ValueError, match="at or above its target"):
        buy(weight=D("0.6"), position_value=D(6000))


@pytest.mark.parametrize("weight,equity,needle", [
    (D(0), D(10000), "weight of this symbol is 0"),
    (D("1.5"), D(10000), "between 0 and 1"),
    (D("0.5"), D(0), "equity must be > 0"),
    (D("0.5"), None, "equity is missing"),
    (D("0.5"), D("0.01"), "less than a cent"),
])
def test_all_in_buy_refuses_bad_inputs(weight, equity, needle):
    with pytest.raises(ValueError, match=needle):
        buy(weight=weight, equity=equity)


def test_fixed_buy_prefers_signal_then_fixed_qty_then_notional():
    assert buy("fixed", signal_qty=D(3), fixed_qty=D(5), fixed_notional=D(1000)).qty == 3
    assert buy("fixed", fixed_qty=D(5), fixed_notional=D(1000)).qty == 5
    plan = buy("fixed", fixed_notional=D(1050), ask=D(100))
    assert (plan.qty, plan.max_cash, plan.time_in_force) == (10, None, "ioc")
    with pytest.raises(ValueError, match="buys no whole share"):
        buy("fixed", fixed_notional=D(50), ask=D(100))
    with pytest.raises(ValueError, match="needs a qty"):
        buy("fixed")
    with pytest.raises(ValueError, match="signal qty must be > 0"):
        buy("fixed", signal_qty=D(0))
    with pytest.raises(ValueError, match="more than 9 decimal"):
        buy("fixed", signal_qty=D("0.0000000001"))


def test_fractional_qty_must_be_a_day_order():
    assert buy("fixed", signal_qty=D("0.5")).time_in_force == "day"
    assert sell("fixed", fixed_qty=D("1.25")).time_in_force == "day"
    plan = sell()
    assert plan.sized(D(3)) == OrderPlan("sell", D(3), None, "market", "ioc", None)
    assert plan.sized(D("2.5")).time_in_force == "day"


def test_limit_buy_rounds_up_to_a_valid_tick():
    plan = buy(order_type="limit", slippage_bps=25, ask=D("100.01"))
    assert plan.limit_price == D("100.27")  # 100.260025 up to the cent
    assert plan.order_type == "limit" and plan.time_in_force == "ioc"
    assert buy(order_type="limit", slippage_bps=10, ask=D("0.5123")).limit_price == D("0.5129")  # 0.5128123
    assert buy(order_type="limit", ask=D(100)).limit_price == D("100.00")
    assert plan.reserve_price(D("100.01")) == D("100.27")
    assert buy().reserve_price(D("100.01")) == D("100.01")


def test_limit_sell_rounds_down_to_a_valid_tick():
    assert sell(order_type="limit", slippage_bps=25, bid=D("100.01")).limit_price == D("99.75")  # 99.759975
    assert sell(order_type="limit", slippage_bps=10, bid=D("0.5123")).limit_price == D("0.5117")  # 0.5117877
    assert sell().limit_price is None and sell().qty is None
    with pytest.raises(ValueError, match="bid"):
        sell(order_type="limit", bid=None)
    assert sell(bid=None).order_type == "market"  # a market sell needs no bid


@pytest.mark.parametrize("price,up,expected", [
    (D("1.001"), True, D("1.01")),
    (D("1.009"), False, D("1.00")),
    (D("0.99995"), True, D("1.00")),  # crosses $1: 4 decimals would be a sub-penny price
    (D("0.99995"), False, D("0.9999")),
    (D("0.00001"), True, D("0.0001")),
    (D("250"), True, D("250.00")),
])
def test_round_to_tick(price, up, expected):
    rounded = round_to_tick(price, up=up)
    assert rounded == expected
    assert -rounded.as_tuple().exponent <= (2 if rounded >= 1 else 4)


@pytest.mark.parametrize("kwargs,needle", [
    ({"strategy": "yolo"}, "unknown strategy 'yolo'"),
    ({"order_type": "stop"}, "unknown order type"),
    ({"slippage_bps": -1}, "slippage_bps"),
    ({"slippage_bps": 1.5}, "slippage_bps"),
    ({"ask": D(0)}, "ask must be > 0"),
    ({"ask": D("NaN")}, "finite"),
])
def test_validation_messages(kwargs, needle):
    strategy = kwargs.pop("strategy", "all-in")
    with pytest.raises(ValueError, match=needle):
        buy(strategy, **kwargs)
    if "ask" not in kwargs:
        with pytest.raises(ValueError, match=needle):
            sell(strategy, **kwargs)
