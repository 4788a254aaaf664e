"""Strategy plug-ins: the built-ins on the interface, the per-ticker map, target-weight's replay
safety through a real worker, and an entry-point plug-in installed from tests/plugins that trades."""
from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal as D
from pathlib import Path

import pytest

from bot.config import ConfigError
from bot.strategy import (
    AllIn,
    Fixed,
    Intent,
    MarketView,
    Pass,
    PercentOfEquity,
    SignalView,
    Strategies,
    StrategyMap,
    StrategySettings,
    TargetWeight,
    available,
    parse_options,
)
from bot.signals import Signal, SignalError, parse_raw
from test_worker import CASH, SYMBOL, Rig, rig  # noqa: F401  (the fixture)

PLUGIN = Path(__file__).parent / "plugins" / "example_strategy"


def market(*, qty: str = "0", price: str = "100", equity: str = "10000", cash: str = "10000") -> MarketView:
    return MarketView(ticker="NVDA", bid=D(price), ask=D(price), price=D(price), equity=D(equity), cash=D(cash),
                      buying_power=D(cash), position_qty=D(qty), position_available=D(qty), session_open=True)


def buy(**kw: object) -> SignalView:
    return SignalView("NVDA", "buy", **kw)  # type: ignore[arg-type]


def sell(**kw: object) -> SignalView:
    return SignalView("NVDA", "sell", **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the built-ins

def test_all_in_spends_its_weight_less_what_is_held() -> None:
    assert AllIn().size(buy(), market(qty="10"), StrategySettings(weight=D("0.5"))) == \
        Intent(max_cash=D("4000.00"), max_position_value=D("5000.0"))
    assert isinstance(AllIn().size(buy(), market(qty="60"), StrategySettings(weight=D("0.5"))), Pass)
    assert AllIn().size(sell(), market(qty="10"), StrategySettings()) == Intent()  # every share


def test_fixed_and_percent_of_equity() -> None:
    assert Fixed().size(buy(qty=D(3)), market(), StrategySettings(fixed_qty=D(1))) == Intent(qty=D(3))
    assert Fixed().size(buy(), market(), StrategySettings(fixed_notional=D(250))) == Intent(qty=D(2))
    assert "needs a qty" in Fixed().size(sell(), market(), StrategySettings()).reason  # type: ignore[union-attr]
    percent = StrategySettings(percent=D("0.05"))
    assert PercentOfEquity().size(buy(), market(), percent) == Intent(max_cash=D("500.00"))
    assert PercentOfEquity().size(sell(), market(qty="3"), percent) == Intent(qty=D(3))  # at most what is there
    assert isinstance(PercentOfEquity().size(buy(), market(), StrategySettings()), Pass)


def test_target_weight_orders_the_difference_and_nothing_at_the_target() -> None:
    tw = TargetWeight()
    assert tw.size(buy(target_weight=D("0.3")), market(qty="10"), StrategySettings()) == \
        Intent(max_cash=D("2000.00"), max_position_value=D("3000.0"))
    at_target = tw.size(buy(target_weight=D("0.3")), market(qty="30"), StrategySettings())
    assert isinstance(at_target, Pass) and at_target.reason.startswith("at target")
    assert tw.size(sell(target_weight=D("0.1")), market(qty="30"), StrategySettings()) == Intent(qty=D(20))
    assert isinstance(tw.size(sell(target_weight=D("0.5")), market(qty="30"), StrategySettings()), Pass)


def test_the_strategy_map_and_its_errors() -> None:
    chosen = StrategyMap.parse("NVDA=target-weight, *=fixed")
    assert (chosen.name_for("nvda"), chosen.name_for("AAPL"), str(chosen)) == \
        ("target-weight", "fixed", "NVDA=target-weight,*=fixed")
    assert StrategyMap.parse("all-in").name_for("X") == "all-in"
    for bad in ("NVDA=", "=fixed"):
        with pytest.raises(ConfigError):
            StrategyMap.parse(bad)
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        Strategies(StrategyMap.parse("NVDA=nope,*=all-in"))
    assert {"all-in", "fixed", "percent-of-equity", "target-weight"} <= set(available())
    assert parse_options("share=0.25, x=y") == {"share": "0.25", "x": "y"}
    with pytest.raises(ConfigError):
        parse_options("share")


def test_signals_carry_a_target_weight_and_bad_ones_are_refused() -> None:
    fields = {b"ticker": b"NVDA", b"direction": b"b", b"target_weight": b"0.25"}
    signal = parse_raw(fields, source_stream="nvda", source_id="1-1", symbols=("NVDA",), routed_at=0.001)
    assert signal.target_weight == D("0.25") and Signal.from_fields(signal.to_fields()) == signal
    for bad in (b"1.5", b"-0.1", b"abc", b"NaN"):
        with pytest.raises(SignalError, match="target_weight"):
            parse_raw({**fields, b"target_weight": bad}, source_stream="nvda", source_id="1-1", symbols=("NVDA",),
                      routed_at=0.001)


# ----------------------------------------------------------------------------- through a worker

def _target_signal(rig: Rig, side: str, weight: str) -> str:
    rig.seq += 1
    import time

    now = time.time()
    signal = Signal(SYMBOL, side, None, "nvda", f"{int(now * 1000)}-{rig.seq}", now, target_weight=D(weight))
    return rig.r.xadd(rig.keys.signals, signal.to_fields())


def test_a_replayed_target_weight_signal_orders_nothing(rig: Rig) -> None:  # noqa: F811
    worker = rig.worker(strategy="target-weight")
    _target_signal(rig, "buy", "0.3")
    rig.run_until(worker, lambda: len(rig.journal()) == 1)
    first = rig.journal()[0]
    assert first.outcome == "filled"
    bought = first.filled_qty
    assert bought is not None and bought * first.filled_avg_price <= D("0.3") * CASH  # type: ignore[operator]
    assert bought * D(100) > D("0.29") * CASH  # type: ignore[operator]
    _target_signal(rig, "buy", "0.3")  # the same signal again (a replay, a duplicate webhook)
    rig.run_until(worker, lambda: len(rig.journal()) == 2)
    again = rig.journal()[1]
    assert (again.outcome, again.reason.startswith("at target")) == ("skipped", True), (first, again)
    _target_signal(rig, "sell", "0.1")
    rig.run_until(worker, lambda: len(rig.journal()) == 3)
    down = rig.journal()[2]
    assert down.outcome == "filled" and down.side == "sell" and D(0) < down.filled_qty < bought  # type: ignore[operator]
    assert rig.orders() == 2


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Iterator[Path]:
    """The example plug-in pip-installed into a folder of its own, on sys.path for this test only."""
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--target", str(target), str(PLUGIN)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("tradebot_example_strategy", None)
        importlib.invalidate_caches()


def test_an_installed_plugin_is_found_by_its_entry_point_and_trades(installed_plugin: Path,
                                                                     rig: Rig) -> None:  # noqa: F811
    assert "half" in available()
    worker = rig.worker(strategy=f"{SYMBOL}=half,*=all-in", strategy_options={"share": "0.5"})
    rig.signal("buy")
    rig.run_until(worker, lambda: len(rig.journal()) == 1)
    entry = rig.journal()[0]
    assert entry.outcome == "filled" and entry.filled_qty is not None
    spent = entry.filled_qty * entry.filled_avg_price  # type: ignore[operator]
    assert D("0.45") * CASH < spent <= D("0.5") * CASH  # half the cash, in whole shares
    rig.signal("sell")
    rig.run_until(worker, lambda: len(rig.journal()) == 2)
    assert rig.journal()[1].filled_qty == (entry.filled_qty / 2).to_integral_value(rounding="ROUND_FLOOR")
