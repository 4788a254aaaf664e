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
