"""P&L from the journal (average cost, marked at the cache) and the equity curve."""
from __future__ import annotations

import time
from decimal import Decimal

import redis

from bot.journal import JournalEntry, record_outcome
from bot.keys import Keys
from bot.pnl import equity_curve, journal_pnl, pnl_of, record_equity

KEYS = Keys("tbp")
D = Decimal


def fill(side: str, qty: str, price: str, ticker: str = "NVDA", n: int = 0) -> JournalEntry:
    return JournalEntry(source_stream="nvda", source_id=f"{1000 + n}-0", ticker=ticker, side=side, outcome="filled",
                        client_order_id=f"tb-nvda-{1000 + n}-0", order_id=f"o{n}", status="filled", qty=D(qty),
                        filled_qty=D(qty), filled_avg_price=D(price))


def test_average_cost_realizes_on_sells_and_marks_the_rest() -> None:
    entries = [fill("buy", "10", "100"), fill("buy", "10", "110", n=1), fill("sell", "5", "120", n=2)]
    report = pnl_of(entries, {"NVDA": D("115")})
    (nvda,) = report.symbols
    assert nvda.qty == 15 and nvda.avg_cost == 105
    assert nvda.realized == D("75")  # (120 - 105) x 5
    assert nvda.unrealized == D("150")  # (115 - 105) x 15
    assert report.to_dict()["total"] == "225"


def test_selling_everything_resets_the_basis_and_skips_and_unfilled_entries_count_nothing() -> None:
    skipped = JournalEntry(source_stream="nvda", source_id="9-0", ticker="NVDA", side="buy", outcome="skipped")
    entries = [fill("buy", "2", "50"), skipped, fill("sell", "2", "40", n=1), fill("buy", "1", "60", n=2)]
    (nvda,) = pnl_of(entries, {}).symbols
    assert nvda.realized == D("-20") and nvda.qty == 1 and nvda.avg_cost == 60
    assert nvda.unrealized == 0 and nvda.mark is None  # no price cached: nothing marked


def test_a_sell_of_shares_bought_outside_the_journal_realizes_nothing() -> None:
    (nvda,) = pnl_of([fill("buy", "1", "10"), fill("sell", "3", "12", n=1)], {}).symbols
    assert nvda.realized == D("2") and nvda.qty == 0


def test_journal_pnl_reads_the_journal_and_the_cache(r: redis.Redis) -> None:
    r.xgroup_create(KEYS.signals, KEYS.workers_group, id="0", mkstream=True)
    for n, entry in enumerate([fill("buy", "4", "100"), fill("buy", "2", "10", ticker="AMD", n=1)]):
        assert record_outcome(r, KEYS, entry, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id=f"0-{n + 1}")
    r.hset(KEYS.prices("NVDA"), mapping={"bid": "101", "ask": "103", "last": "102"})
    report = journal_pnl(r, KEYS).to_dict()
    by_symbol = {row["symbol"]: row for row in report["symbols"]}
    assert by_symbol["NVDA"]["unrealized"] == "8" and by_symbol["NVDA"]["mark"] == "102"
    assert by_symbol["AMD"]["mark"] == "" and report["unrealized"] == "8"


def test_the_equity_curve_is_recorded_and_trimmed_by_age(r: redis.Redis) -> None:
    now = time.time()
    for n in range(300):  # an old day of points (their ids are their times)
        r.xadd(KEYS.equity, {"equity": "1"}, id=f"{int((now - 86400 * 10) * 1000)}-{n}")
    record_equity(r, KEYS, D("100000.5"), D("90000"), now=now)
    curve = equity_curve(r, KEYS, since=now - 60)
    assert curve == [{"equity": "100000.5", "cash": "90000", "at": repr(now)}]
    assert r.xlen(KEYS.equity) < 100  # the old points trimmed (~: whole nodes)


def test_the_pnl_command(r: redis.Redis, redis_url: str) -> None:
    import json

    from click.testing import CliRunner

    from bot.cli import cli

    r.xgroup_create(KEYS.signals, KEYS.workers_group, id="0", mkstream=True)
    assert record_outcome(r, KEYS, fill("buy", "3", "10"), ack_stream=KEYS.signals, group=KEYS.workers_group,
                          entry_id="0-1")
    r.hset(KEYS.prices("NVDA"), mapping={"bid": "11", "ask": "11"})
    env = {"REDIS_URL": redis_url, "TRADEBOT_PREFIX": KEYS.prefix}
    result = CliRunner().invoke(cli, ["pnl", "--json"], env=env)
    assert result.exit_code == 0 and json.loads(result.output)["unrealized"] == "3"
    text = CliRunner().invoke(cli, ["pnl"], env=env)
    assert "unrealized 3" in text.output and "NVDA" in text.output
