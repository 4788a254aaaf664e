"""`tradebot status` tells the truth: with no fleet it says so and how to start one."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from bot.cli import cli
from bot.embedded_redis import free_port


def test_status_without_a_fleet_says_how_to_start_one(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = CliRunner().invoke(cli, ["status", "--var-dir", str(tmp_path / "var")],
                                env={"REDIS_URL": closed, "TRADEBOT_VAR": ""})
    assert result.exit_code == 1
    assert "no fleet is running in" in result.output and "make run" in result.output


def test_status_watch_redraws_the_screen(r, redis_url: str) -> None:
    result = CliRunner().invoke(cli, ["status", "--watch", "--every", "0.2", "--times", "2"],
                                env={"REDIS_URL": redis_url, "TRADEBOT_PREFIX": "tbs"})
    assert result.exit_code == 0, result.output
    assert result.output.count("tradebot status") >= 1


def test_orders_follow_prints_new_entries_as_they_come(r, redis_url: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time
    from decimal import Decimal

    from bot.journal import JournalEntry, record_outcome
    from bot.keys import Keys
    from waiting import wait_for

    keys = Keys("tbs")
    r.xgroup_create(keys.signals, keys.workers_group, id="0", mkstream=True)

    def journal(n: int) -> None:
        entry = JournalEntry(source_stream="nvda", source_id=f"{1000 + n}-0", ticker="NVDA", side="buy",
                             outcome="filled", filled_qty=Decimal(1), filled_avg_price=Decimal(5),
                             final_at=time.time())
        assert record_outcome(r, keys, entry, ack_stream=keys.signals, group=keys.workers_group, entry_id=f"0-{n}")

    journal(1)
    out = tmp_path / "out.txt"
    with open(out, "w") as sink:
        follower = subprocess.Popen([sys.executable, "-m", "bot.cli", "orders", "--follow", "--json"],
                                    env={**os.environ, "REDIS_URL": redis_url, "TRADEBOT_PREFIX": "tbs"},
                                    stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: out.read_text().count("\n") >= 1, 60, "the first entry")
            journal(2)
            wait_for(lambda: out.read_text().count("\n") >= 2, 60, "the new entry followed")
        finally:
            follower.terminate()
            follower.wait(30)
    lines = out.read_text().splitlines()
    assert '"source_id": "1001-0"' in lines[0] and '"source_id": "1002-0"' in lines[1]


def test_orders_since_exports_csv_and_jsonl(r, redis_url: str) -> None:
    import csv
    import io
    import json
    import time
    from decimal import Decimal

    from bot.journal import JournalEntry, record_outcome
    from bot.keys import Keys

    keys = Keys("tbx")
    r.xgroup_create(keys.signals, keys.workers_group, id="0", mkstream=True)
    for n in range(3):
        entry = JournalEntry(source_stream="nvda", source_id=f"{1000 + n}-0", ticker="NVDA", side="buy",
                             outcome="filled", filled_qty=Decimal(1), filled_avg_price=Decimal("5.5"),
                             final_at=time.time())
        assert record_outcome(r, keys, entry, ack_stream=keys.signals, group=keys.workers_group, entry_id=f"0-{n}")
    env = {"REDIS_URL": redis_url, "TRADEBOT_PREFIX": "tbx"}
    result = CliRunner().invoke(cli, ["orders", "--since", "1h", "--format", "csv"], env=env)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [row["source_id"] for row in rows] == ["1000-0", "1001-0", "1002-0"]  # oldest first
    assert rows[0]["filled_avg_price"] == "5.5" and "adopted" in rows[0]
    lines = CliRunner().invoke(cli, ["orders", "--since", "2020-01-01", "--format", "jsonl"], env=env).output
    assert [json.loads(line)["source_id"] for line in lines.splitlines()] == ["1000-0", "1001-0", "1002-0"]
    future = CliRunner().invoke(cli, ["orders", "--since", str(time.time() + 3600), "--format", "jsonl"], env=env)
    assert future.output.strip() == ""
    bad = CliRunner().invoke(cli, ["orders", "--since", "yesterday-ish"], env=env)
    assert bad.exit_code == 2 and "--since" in bad.output
