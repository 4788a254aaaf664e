"""Recordings for replay: what `tradebot record` writes from a fleet's Redis (the source streams and
the price history the poller keeps), what it imports from CSV, and clear errors for bad files."""
from __future__ import annotations

import json
import time
from decimal import Decimal as D
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from bot.alpaca.models import Snapshot
from bot.cli import cli
from bot.keys import Keys
from bot.market import record_prices
from bot.recording import RecordedPrice, Recording, RecordingError, load, load_prices_csv, load_signals_csv

PREFIX = "tbrec"
KEYS = Keys(PREFIX)


def snapshot(symbol: str, bid: str, ask: str, last: str) -> Snapshot:
    return Snapshot(symbol, D(bid), D(ask), None, None, D(last), None)


def test_record_writes_the_signals_and_prices_of_a_window_oldest_first(r: redis.Redis, redis_url: str,
                                                                       tmp_path: Path) -> None:
    now = time.time()
    old = r.xadd("nvda", {"ticker": "NVDA", "direction": "b"}, id=f"{int((now - 7200) * 1000)}-0")
    inside = [r.xadd("nvda", {"ticker": "NVDA", "direction": d, "qty": "2"}) for d in ("b", "s")]
    record_prices(r, KEYS, {"NVDA": snapshot("NVDA", "100.01", "100.03", "100.02")}, now, keep=3600)
    record_prices(r, KEYS, {"NVDA": snapshot("NVDA", "101.00", "101.02", "101.01")}, now + 0.5, keep=3600)
    out = tmp_path / "day.jsonl"
    result = CliRunner().invoke(cli, ["record", "--since", "1h", "--out", str(out)],
                                env={"REDIS_URL": redis_url, "TRADEBOT_PREFIX": PREFIX})
    assert result.exit_code == 0, result.output
    assert "2 signals, 2 prices" in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["at"] for line in lines] == sorted(line["at"] for line in lines)
    assert [s["id"] for s in lines if s["kind"] == "signal"] == inside and old not in out.read_text()
    loaded = load(out)
    assert [s.fields["direction"] for s in loaded.signals] == ["b", "s"]
    assert [p.last for p in loaded.prices] == [D("100.02"), D("101.01")]


def test_the_price_history_is_trimmed_by_age(r: redis.Redis) -> None:
    first = None
    for _ in range(300):  # kept a millisecond: every node but the newest is old by the end
        record_prices(r, KEYS, {"NVDA": snapshot("NVDA", "100", "100.02", "100.01")}, time.time(), keep=0.001)
        first = first or r.xrange(KEYS.price_history, count=1)[0][0]
    assert r.xlen(KEYS.price_history) < 300 and r.xrange(KEYS.price_history, count=1)[0][0] != first


def test_csv_imports_from_tradingview_style_logs_and_bars(tmp_path: Path) -> None:
    signals = tmp_path / "alerts.csv"
    signals.write_text("time,ticker,direction,qty\n2026-12-01T14:30:00Z,NVDA,b,3\n1796140900,NVDA,s,\n")
    prices = tmp_path / "bars.csv"
    prices.write_text("time,symbol,open,high,low,close,volume\n2026-12-01T14:30:00Z,NVDA,100,101,99,100.5,1000\n")
    loaded = load_signals_csv(signals)
    assert [(s.at, dict(s.fields)) for s in loaded] == [
        (1796135400.0, {"ticker": "NVDA", "direction": "b", "qty": "3"}),
        (1796140900.0, {"ticker": "NVDA", "direction": "s"})]
    assert load_prices_csv(prices) == [RecordedPrice(at=1796135400.0, symbol="NVDA", last=D("100.5"))]
    out = tmp_path / "imported.jsonl"
    result = CliRunner().invoke(cli, ["record", "--signals-csv", str(signals), "--prices-csv", str(prices),
                                      "--out", str(out)])
    assert result.exit_code == 0 and "2 signals, 1 prices" in result.output, result.output
    again = load(out)
    assert isinstance(again, Recording) and again.start == 1796135400.0 and again.end == 1796140900.0


@pytest.mark.parametrize("text,message", [
    ("time,ticker\n1,NVDA\n", "the header needs direction"),
    ("time,ticker,direction\nyesterday,NVDA,b\n", ":2: time 'yesterday' is neither Unix seconds nor ISO 8601"),
])
def test_bad_signal_csvs_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(RecordingError) as caught:
        load_signals_csv(path)
    assert message in str(caught.value)


@pytest.mark.parametrize("line,message", [
    ("not json", "not JSON"),
    ('{"kind": "price", "at": 1, "symbol": "NVDA"}', "a price needs bid, ask or last"),
    ('{"kind": "price", "at": 1, "symbol": "NVDA", "bid": "-1"}', "bid '-1' must be a positive price"),
    ('{"kind": "trade", "at": 1}', "'kind' must be signal or price"),
    ('{"kind": "signal", "fields": {}}', "'at' (Unix seconds) is required"),
])
def test_bad_recordings_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"kind": "signal", "at": 1, "fields": {"ticker": "NVDA", "direction": "b"}}\n' + line + "\n")
    with pytest.raises(RecordingError) as caught:
        load(path)
    assert f"{path}:2: {message}" in str(caught.value)


def test_bad_record_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, message in ((["record", "--out", str(tmp_path / "x.jsonl")], "give --since"),
                          (["record", "--since", "1h", "--until", "2h", "--out", str(tmp_path / "x")],
                           "--until must be after --since")):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2 and message in result.output, result.output
