"""alpaca-py (the official SDK) against the paper broker over real HTTP: assets, calendar, clock,
account configurations, portfolio history, activities and historical market data with paging.
The SDK's own models parse every answer, so a field it cannot read fails here."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from alpaca.common.exceptions import APIError
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import StockBarsRequest, StockLatestTradeRequest, StockQuotesRequest, StockTradesRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import AssetExchange, AssetStatus
from alpaca.trading.models import AccountConfiguration
from alpaca.trading.requests import GetAssetsRequest, GetCalendarRequest, GetPortfolioHistoryRequest

from bot.paper.testing import PaperBrokerServer, auth_headers

T0 = datetime(2026, 3, 4, 15, 0, tzinfo=timezone.utc)  # Wednesday 10:00 ET
HOURS = 3  # of walk history: 10800 one-second trades per symbol, more than one SDK page (10000)


class FakeNow:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture(scope="module")
def broker() -> Iterator[PaperBrokerServer]:
    now = FakeNow(T0)
    with PaperBrokerServer(always_open=True, seed=7, symbols="ZZZZ", now=now) as server:
        with httpx.Client(base_url=server.base_url, headers=auth_headers(server.api_key, server.secret_key)) as c:
            order = {"symbol": "AAPL", "qty": "3", "side": "buy", "type": "market", "time_in_force": "day"}
            assert c.post("/v2/orders", json=order).status_code == 200
            # walk forward in half hours: each read records every step (a longer gap is bridged in one move)
            for _ in range(HOURS * 2):
                now.at += timedelta(minutes=30)
                assert c.get("/v2/stocks/trades/latest", params={"symbols": "AAPL,MSFT"}).status_code == 200
        yield server


@pytest.fixture(scope="module")
def trading(broker: PaperBrokerServer) -> TradingClient:
    return TradingClient(broker.api_key, broker.secret_key, paper=True, url_override=broker.base_url)


@pytest.fixture(scope="module")
def data(broker: PaperBrokerServer) -> StockHistoricalDataClient:
    return StockHistoricalDataClient(broker.api_key, broker.secret_key, url_override=broker.base_url)


def test_assets(trading: TradingClient) -> None:
    assets: Any = trading.get_all_assets(GetAssetsRequest(status=AssetStatus.ACTIVE, exchange=AssetExchange.ARCA))
    assert assets and {a.exchange for a in assets} == {AssetExchange.ARCA} and "SPY" in {a.symbol for a in assets}
    everything: Any = trading.get_all_assets()
    assert {"AAPL", "BRK.B", "ZZZZ"} <= {a.symbol for a in everything}  # ZZZZ: configured with symbols=
    aapl: Any = trading.get_asset("AAPL")
    assert aapl.name.startswith("Apple") and aapl.fractionable
    assert trading.get_asset(aapl.id).symbol == "AAPL"  # type: ignore[union-attr]
    with pytest.raises(APIError) as raised:
        trading.get_asset("NOSUCH")
    assert raised.value.status_code == 404 and raised.value.code == 40410000


def test_calendar_has_holidays_and_early_closes(trading: TradingClient) -> None:
    days: Any = trading.get_calendar(GetCalendarRequest(start=date(2025, 11, 24), end=date(2025, 11, 28)))
    assert [d.date for d in days] == [date(2025, 11, 24), date(2025, 11, 25), date(2025, 11, 26), date(2025, 11, 28)]
    assert days[-1].close.hour == 13  # the day after Thanksgiving closes at 13:00


def test_clock(trading: TradingClient) -> None:
    clock: Any = trading.get_clock()
    assert clock.is_open and clock.next_close < clock.next_open


def test_account_configurations(trading: TradingClient) -> None:
    config: Any = trading.get_account_configurations()
    assert config.fractional_trading and config.no_shorting
    config.trade_confirm_email = "none"
    changed: Any = trading.set_account_configurations(AccountConfiguration(**config.model_dump()))
    assert changed.trade_confirm_email == "none"
    assert trading.get_account_configurations().trade_confirm_email == "none"  # type: ignore[union-attr]


def test_portfolio_history_ends_at_the_account_equity(trading: TradingClient) -> None:
    history: Any = trading.get_portfolio_history(GetPortfolioHistoryRequest(period="1D", timeframe="15Min"))
    account: Any = trading.get_account()
    assert len(history.timestamp) == len(history.equity) >= HOURS * 4
    assert history.equity[-1] == pytest.approx(float(account.equity), abs=0.01)
    assert history.base_value == pytest.approx(100000)


def test_activities(broker: PaperBrokerServer, trading: TradingClient) -> None:
    # alpaca-py 0.44's TradingClient has no activities call: through its raw GET
    fills: Any = trading.get("/account/activities", {"activity_types": "FILL"})
    assert [(f["symbol"], f["side"], f["qty"]) for f in fills] == [("AAPL", "buy", "3")]


def test_bars_agree_with_the_latest_bar(data: StockHistoricalDataClient) -> None:
    bars: Any = data.get_stock_bars(StockBarsRequest(symbol_or_symbols=["AAPL", "MSFT"], timeframe=TimeFrame.Minute,
                                                     start=T0, limit=None))
    latest: Any = data.get_stock_latest_bar(StockLatestTradeRequest(symbol_or_symbols="AAPL"))
    assert len(bars["AAPL"]) == HOURS * 60 + 1 and bars["AAPL"][-1] == latest["AAPL"]
    hourly: Any = data.get_stock_bars(StockBarsRequest(symbol_or_symbols="AAPL",
                                                       timeframe=TimeFrame(1, TimeFrameUnit.Hour), start=T0))
    assert sum(b.volume for b in hourly["AAPL"]) == sum(b.volume for b in bars["AAPL"])


def test_trades_page_through_the_whole_walk(data: StockHistoricalDataClient) -> None:
    # 10801 trades per symbol: more than one 10000-item page, so the SDK follows next_page_token
    trades: Any = data.get_stock_trades(StockTradesRequest(symbol_or_symbols=["AAPL", "MSFT"], start=T0))
    latest: Any = data.get_stock_latest_trade(StockLatestTradeRequest(symbol_or_symbols=["AAPL", "MSFT"]))
    for symbol in ("AAPL", "MSFT"):
        assert len(trades[symbol]) == HOURS * 3600 + 1
        assert trades[symbol][-1].id == latest[symbol].id and trades[symbol][-1].price == latest[symbol].price
        assert [t.timestamp for t in trades[symbol]] == sorted(t.timestamp for t in trades[symbol])


def test_quotes_with_a_limit_and_range(data: StockHistoricalDataClient) -> None:
    end = T0 + timedelta(minutes=1)
    quotes: Any = data.get_stock_quotes(StockQuotesRequest(symbol_or_symbols="AAPL", start=T0, end=end, limit=25))
    assert len(quotes["AAPL"]) == 25 and all(T0 <= q.timestamp <= end for q in quotes["AAPL"])


def test_raw_paging_resumes_after_the_token(broker: PaperBrokerServer) -> None:
    with httpx.Client(base_url=broker.base_url, headers=auth_headers(broker.api_key, broker.secret_key)) as c:
        params: dict[str, Any] = {"symbols": "AAPL,MSFT", "timeframe": "1Min", "start": T0.isoformat(), "limit": 100}
        seen: list[tuple[str, str]] = []
        while True:
            page = c.get("/v2/stocks/bars", params=params).json()
            seen += [(s, b["t"]) for s, bars in page["bars"].items() for b in bars]
            if page["next_page_token"] is None:
                break
            params["page_token"] = page["next_page_token"]
        assert len(seen) == len(set(seen)) == 2 * (HOURS * 60 + 1) and seen == sorted(seen)
