"""The paper broker's NYSE clock (holidays, early closes) and its asset table (default CSV, an extra
CSV given with --assets-csv, configured symbols)."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot.paper.assets import AssetTable
from bot.paper.calendar import NEW_YORK
from bot.paper.clock import MarketClock, regular_hours_state
from bot.paper.exchange import BrokerError


def ny(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=NEW_YORK)


@pytest.mark.parametrize("local, is_open, next_open, next_close", [
    # Thanksgiving 2025 (Thu) closed; Friday closes at 13:00
    ("2025-11-26 17:00", False, "2025-11-28T09:30:00-05:00", "2025-11-28T13:00:00-05:00"),
    ("2025-11-28 12:00", True, "2025-12-01T09:30:00-05:00", "2025-11-28T13:00:00-05:00"),
    ("2025-11-28 13:30", False, "2025-12-01T09:30:00-05:00", "2025-12-01T16:00:00-05:00"),
    # Independence Day 2026 is a Saturday: observed Friday 3 July; Thursday 2 July is a full day
    ("2026-07-02 17:00", False, "2026-07-06T09:30:00-04:00", "2026-07-06T16:00:00-04:00"),
    ("2025-12-25 10:00", False, "2025-12-26T09:30:00-05:00", "2025-12-26T16:00:00-05:00"),
])
def test_the_clock_follows_the_nyse_calendar(local: str, is_open: bool, next_open: str, next_close: str) -> None:
    state = regular_hours_state(ny(local)).to_json()
    assert (state["is_open"], state["next_open"], state["next_close"]) == (is_open, next_open, next_close)


def test_day_orders_expire_at_an_early_close() -> None:
    clock = MarketClock("real", lambda: ny("2025-11-28 10:00"))
    assert clock.day_order_expiry(clock.now()) == ny("2025-11-28 13:00")
    assert MarketClock("closed", lambda: ny("2025-11-28 10:00")).state().next_open == ny("2025-12-01 09:30")


def test_asset_table_default_extra_and_configured(tmp_path: Path) -> None:
    extra = tmp_path / "extra.csv"
    extra.write_text("symbol,name,exchange,fractionable\n"
                     "XYZW,Made Up Corp,NYSE,false\nAAPL,Apple renamed,NASDAQ,true\n")
    table = AssetTable.build(str(extra), symbols=("QQQQ",))
    assert table.find("xyzw").fractionable is False and table.find("XYZW").exchange == "NYSE"
    assert table.find("AAPL").name == "Apple renamed"  # the extra CSV overrides the default row
    assert table.find(table.find("BRK.B").id).symbol == "BRK.B"
    assert table.find("QQQQ").tradable
    with pytest.raises(BrokerError) as raised:
        table.find("NOPE")
    assert (raised.value.status, raised.value.code) == (404, 40410000)
    assert {a.exchange for a in table.select(exchange="arca")} == {"ARCA"}


def test_a_bad_assets_csv_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("symbol,exchange\nABC,MOON\n")
    with pytest.raises(ValueError, match="exchange must be one of"):
        AssetTable.build(str(bad))


def test_the_assets_csv_flag_is_checked() -> None:
    from processes.paper_broker import main

    result = CliRunner().invoke(main, ["--assets-csv", "/nonexistent.csv"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_orders_need_a_listed_asset_and_dotted_share_classes_trade() -> None:
    from bot.paper.testing import paper_transport

    transport, exchange = paper_transport(always_open=True, seed=3, symbols=("NVDA",))
    base = {"side": "buy", "type": "market", "time_in_force": "day", "qty": "1"}
    with pytest.raises(BrokerError) as unknown:
        exchange.submit({**base, "symbol": "QQQQQ", "client_order_id": "a"})
    assert (unknown.value.status, unknown.value.message) == (422, 'asset "QQQQQ" not found')
    exchange.set_price("BRK.B", "450.00", spread="0.02", bid_size=1000, ask_size=1000)
    order = exchange.submit({**base, "symbol": "BRK.B", "client_order_id": "b"})
    assert order["symbol"] == "BRK.B" and order["status"] == "filled"
    transport.close()
