"""Replay: the paper broker's replay mode, and `tradebot replay` of a committed recording (a trading
day of minute quotes and 300 signals) through a fleet of real processes, twice: the report must
match figures computed here from the recording alone, and the two replays must decide alike."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from bot.cli import cli
from bot.paper.testing import PaperAdmin, paper_client, paper_transport
from bot.recording import RecordedPrice, RecordedSignal, Recording, load
from bot.replay.report import reason_kind
from bot.replay.run import ReplayOptions, replay, shown_settings

DATA = Path(__file__).parent / "data"
DAY = DATA / "replay-day.jsonl"
NEW_YORK = ZoneInfo("America/New_York")
CENT = Decimal("0.01")


def et(hour: int, minute: int, second: float = 0.0) -> float:
    return datetime(2026, 11, 24, hour, minute, tzinfo=NEW_YORK).timestamp() + second


def small_recording(path: Path) -> Path:
    Recording(prices=[RecordedPrice(et(9, 0), "NVDA", Decimal("99.99"), Decimal("100.01"), Decimal("100")),
                      RecordedPrice(et(10, 0), "NVDA", Decimal("109.99"), Decimal("110.01"), Decimal("110")),
                      RecordedPrice(et(10, 0), "AAPL", Decimal("200"), Decimal("200.02"), None)],
              signals=[RecordedSignal(et(10, 1), {"ticker": "NVDA", "direction": "b"})]).write(path)
    return path


# --------------------------------------------------------------------------- the broker's replay mode


@pytest.fixture
def replaying(tmp_path: Path) -> Any:
    transport, exchange = paper_transport(replay=str(small_recording(tmp_path / "r.jsonl")), seed=1)
    client = paper_client(transport)
    try:
        yield client, PaperAdmin(client)
    finally:
        client.close()


def test_quotes_are_the_recorded_ones_at_market_time_stamped_in_wall_time(replaying: Any) -> None:
    client, admin = replaying
    assert admin.call("POST", "replay", {"at": et(9, 30)})["market_time"] == et(9, 30)
    quote = client.get("/v2/stocks/NVDA/quotes/latest").json()["quote"]
    assert (quote["bp"], quote["ap"]) == (99.99, 100.01)
    stamped = datetime.fromisoformat(quote["t"][:26] + "+00:00").timestamp()
    assert abs(stamped - time.time()) < 5  # wall time: the workers' quote-age check reads it
    admin.call("POST", "replay", {"at": et(10, 0, 30)})
    snapshot = client.get("/v2/stocks/snapshots", params={"symbols": "NVDA,AAPL,MSFT"}).json()
    assert snapshot["NVDA"]["latestQuote"]["ap"] == 110.01 and snapshot["NVDA"]["latestTrade"]["p"] == 110.0
    assert snapshot["AAPL"]["latestTrade"]["p"] == 200.01  # no last recorded: the mid
    assert "MSFT" not in snapshot  # nothing recorded: not quoted at all


def test_the_clock_is_the_market_instants_session_told_in_wall_time(replaying: Any) -> None:
    client, admin = replaying
    admin.call("POST", "replay", {"at": et(9, 0)})
    closed = client.get("/v2/clock").json()
    opens = datetime.fromisoformat(closed["next_open"]).timestamp()
    assert closed["is_open"] is False and abs(opens - time.time() - 1800) < 5
    admin.call("POST", "replay", {"at": et(10, 0)})
    open_ = client.get("/v2/clock").json()
    closes = datetime.fromisoformat(open_["next_close"]).timestamp()
    assert open_["is_open"] is True and abs(closes - time.time() - 6 * 3600) < 5


def test_market_time_never_goes_back_and_only_a_replay_has_one(replaying: Any, tmp_path: Path) -> None:
    client, admin = replaying
    admin.call("POST", "replay", {"at": et(10, 0)})
    answer = client.post("/_paper/replay", json={"at": et(9, 0)})
    assert answer.status_code == 400 and "cannot go back" in answer.json()["message"]
    assert client.post("/_paper/replay", json={"at": "soon"}).status_code == 400
    transport, _exchange = paper_transport(seed=1)
    with paper_client(transport) as plain:
        refused = plain.post("/_paper/replay", json={"at": et(9, 0)})
        assert refused.status_code == 400 and "not a replay" in refused.json()["message"]


def test_orders_fill_at_the_recorded_price_and_day_orders_expire_at_the_close(replaying: Any) -> None:
    client, admin = replaying
    admin.call("POST", "replay", {"at": et(10, 0, 5)})
    bought = client.post("/v2/orders", json={"symbol": "NVDA", "qty": "2", "side": "buy", "type": "market",
                                             "time_in_force": "day"}).json()
    order = client.get(f"/v2/orders/{bought['id']}").json()
    assert order["status"] == "filled" and order["filled_avg_price"] == "110.01"
    resting = client.post("/v2/orders", json={"symbol": "NVDA", "qty": "1", "side": "buy", "type": "limit",
                                              "limit_price": "50", "time_in_force": "day"}).json()
    admin.call("POST", "replay", {"at": et(15, 59)})
    assert client.get(f"/v2/orders/{resting['id']}").json()["status"] == "new"
    admin.call("POST", "replay", {"at": et(16, 1)})
    assert client.get(f"/v2/orders/{resting['id']}").json()["status"] == "expired"
    unpriced = client.post("/v2/orders", json={"symbol": "MSFT", "qty": "1", "side": "buy", "type": "market",
                                               "time_in_force": "day"})
    assert unpriced.status_code == 422 and "no recorded price" in unpriced.json()["message"]


# --------------------------------------------------------------------------- the figures, independently


@dataclass
class Expected:
    outcomes: list[tuple[str, str, str]]  # per signal: outcome, filled qty, fill price
    bought: Decimal
    sold: Decimal
    realized: Decimal
    unrealized: Decimal
    final_equity: Decimal


def expected_figures(recording: Recording, cash: Decimal) -> Expected:
    """What the fleet must do with the committed recording under the fixed strategy (each signal's
    qty): a buy fills at the ask in force, a sell at the bid if that many shares are held; nothing
    trades outside 09:30-16:00 ET; a bad direction or an unpriced ticker is dead-lettered."""
    ticks: dict[str, list[RecordedPrice]] = {}
    for price in sorted(recording.prices, key=lambda p: p.at):
        ticks.setdefault(price.symbol, []).append(price)
    held: dict[str, Decimal] = {}
    cost: dict[str, Decimal] = {}
    realized = bought = sold = Decimal(0)
    outcomes = []
    for signal in sorted(recording.signals, key=lambda s: s.at):
        ticker, direction = signal.fields["ticker"], signal.fields["direction"]
        qty = Decimal(signal.fields["qty"])
        if direction not in ("b", "s") or ticker not in ticks:
            outcomes.append(("dead-lettered", "", ""))
            continue
        if not et(9, 30) <= signal.at < et(16, 0):
            outcomes.append(("skipped", "", ""))
            continue
        tick = [p for p in ticks[ticker] if p.at <= signal.at][-1]
        have = held.get(ticker, Decimal(0))
        if direction == "b":
            assert tick.ask is not None
            cost[ticker] = cost.get(ticker, Decimal(0)) + qty * tick.ask
            held[ticker] = have + qty
            cash -= qty * tick.ask
            bought += qty
            outcomes.append(("filled", str(qty), format(tick.ask.normalize(), "f")))
        elif have < qty:
            outcomes.append(("skipped", "", ""))
        else:
            assert tick.bid is not None
            average = cost[ticker] / have
            realized += (tick.bid - average) * qty
            cost[ticker] -= average * qty
            held[ticker] = have - qty
            cash += qty * tick.bid
            sold += qty
            outcomes.append(("filled", str(qty), format(tick.bid.normalize(), "f")))
        assert cash > 0  # the recording never runs out of cash: no buy is cut short
    marks = {s: (t[-1].bid + t[-1].ask) / 2 for s, t in ticks.items() if t[-1].bid and t[-1].ask}
    unrealized = sum((held[s] * marks[s] - cost[s] for s in held), Decimal(0))
    equity = cash + sum((held[s] * marks[s] for s in held), Decimal(0))
    return Expected(outcomes, bought, sold, realized.quantize(CENT), unrealized.quantize(CENT), equity.quantize(CENT))


def decided(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(outcome, filled qty, fill price) per signal, numbers normalised (110.50 and 110.5 are one price)."""
    def number(text: str | None) -> str:
        return format(Decimal(text).normalize(), "f") if text else ""
    return [(d["outcome"], number(d.get("filled_qty")), number(d.get("filled_avg_price")))
            for d in report["decisions"]]


def test_a_replayed_day_matches_the_figures_and_replays_alike(tmp_path: Path) -> None:
    recording = load(DAY)
    options = ReplayOptions(strategy="fixed", cash="100000")
    first = replay(recording, options)
    want = expected_figures(recording, Decimal("100000"))

    assert first["signals"]["total"] == 300 and first["signals"]["missing"] == 0
    assert decided(first) == want.outcomes
    assert first["orders"]["shares_bought"] == str(want.bought) and first["orders"]["shares_sold"] == str(want.sold)
    pnl = first["pnl"]
    assert (Decimal(pnl["realized"]), Decimal(pnl["unrealized"])) == (want.realized, want.unrealized)
    assert Decimal(pnl["final_equity"]) == want.final_equity
    assert Decimal(pnl["total"]) == want.final_equity - 100000
    filled = sum(1 for o in want.outcomes if o[0] == "filled")
    assert first["orders"]["placed"] == first["orders"]["filled"] == filled
    assert first["skips"]["market is closed"] == sum(1 for s in recording.signals if not et(9, 30) <= s.at < et(16, 0)
                                                      and s.fields["direction"] in "bs"
                                                      and s.fields["ticker"] != "MSFT")
    assert first["dlq"] and sum(first["dlq"].values()) == sum(1 for o in want.outcomes if o[0] == "dead-lettered")
    assert first["requests"]["order_requests"] >= filled  # at least one POST per order
    assert first["requests"]["peak_order_requests_per_market_minute"] <= first["requests"]["budget_per_minute"]
    assert first["equity"][-1][1] == float(want.final_equity)
    assert set(first["latency_ms"]) == {"route", "claim", "pre-trade", "broker", "total"}

    # the second replay through the command, compared with the first: the same decisions
    (tmp_path / "first.json").write_text(json.dumps(first), encoding="utf-8")
    result = CliRunner().invoke(cli, ["replay", str(DAY), "--strategy", "fixed", "--json", str(tmp_path / "second.json"),
                                      "--html", str(tmp_path / "report.html"), "--compare", str(tmp_path / "first.json")])
    assert result.exit_code == 0, result.output
    second = json.loads((tmp_path / "second.json").read_text(encoding="utf-8"))
    assert decided(second) == decided(first)
    assert second["pnl"] == first["pnl"] and second["orders"] == first["orders"]
    assert "signals decided differently" in result.output
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count("<polyline") == 2 and "equity over market time" in page


@pytest.mark.parametrize(("args", "message"), [
    (["--settings", "REDIS_URL=redis://elsewhere"], "cannot be set for a replay"),
    (["--settings", "TRADEBOT_PREFIX=live"], "cannot be set for a replay"),
    (["--settings", "nonsense"], "give KEY=VALUE"),
    (["--speed", "-3"], "must be > 0"),
    (["--speed", "fast"], "market seconds per wall second"),
])
def test_bad_options_are_one_line_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["replay", str(DAY), *args])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_recording_without_prices_or_signals_is_refused(tmp_path: Path) -> None:
    signals_only = tmp_path / "signals.csv"
    signals_only.write_text("time,ticker,direction\n1795530180,NVDA,b\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["replay", str(signals_only)])
    assert result.exit_code == 2 and "no prices" in result.output
    prices_only = tmp_path / "prices.jsonl"
    Recording(prices=[RecordedPrice(et(10, 0), "NVDA", last=Decimal(1))]).write(prices_only)
    result = CliRunner().invoke(cli, ["replay", str(prices_only)])
    assert result.exit_code == 2 and "no signals" in result.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"kind": "signal"}\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["replay", str(broken)])
    assert result.exit_code == 2 and "broken.jsonl:1" in result.output


def test_reasons_count_by_kind() -> None:
    assert reason_kind("no NVDA shares to sell", "NVDA") == "no SYM shares to sell"
    assert reason_kind("cooldown: NVDA filled 3s ago (TRADEBOT_COOLDOWN 60s)", "NVDA") == \
        "cooldown: SYM filled Ns ago (TRADEBOT_COOLDOWN Ns)"
    long = "no cash left to buy NVDA (all-in: at most 12.50): InsufficientCash: wanted 13.20, free 12.50 of 100000"
    assert reason_kind(long, "NVDA") == "no cash left to buy SYM"


def test_a_report_masks_settings_that_look_secret() -> None:
    shown = shown_settings({"TRADEBOT_WEB_TOKEN": "s3cret", "TRADEBOT_NOTIFY": "tgram://tok/chat",
                            "TRADEBOT_COOLDOWN": "60", "TRADEBOT_STRATEGY": "fixed"})
    assert shown == {"TRADEBOT_WEB_TOKEN": "***", "TRADEBOT_NOTIFY": "***", "TRADEBOT_COOLDOWN": "60"}
