"""`tradebot up` checks its Redis and its broker before it starts anything: a wrong password, a
closed port or refused keys are one line and a non-zero exit, never "fleet is up"."""
from __future__ import annotations

from pathlib import Path

import pytest

from bot import fleet
from bot.embedded_redis import EmbeddedRedis, free_port
from bot.fleet.errors import FleetError
from bot.fleet.preflight import preflight
from bot.paper.testing import PaperBrokerServer
from test_fleet import base_env

PASSWORD = "pr3flight-secret"


def test_a_closed_redis_port_stops_up_before_anything_starts(tmp_path: Path) -> None:
    env = base_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", ALPACA_API_KEY="k" * 8,
                   ALPACA_SECRET_KEY="s" * 8, ALPACA_BASE_URL="http://127.0.0.1:9")
    plan = fleet.plan_fleet(var_dir=tmp_path / "var", env=env)
    with pytest.raises(FleetError, match="not starting: .*unreachable"):
        preflight(plan)
    assert not (tmp_path / "var" / "supervisord.pid").exists()


def test_a_wrong_redis_password_is_one_line_without_the_password(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis", password=PASSWORD, appendonly=False) as server:
        env = base_env(REDIS_URL=f"redis://:wrong-{PASSWORD}@127.0.0.1:{server.port}/0")
        plan = fleet.plan_fleet(var_dir=tmp_path / "var", env=env, only=("router",))
        with pytest.raises(FleetError) as caught:
            preflight(plan)
    message = str(caught.value)
    assert "not starting" in message and PASSWORD not in message and "\n" not in message


def test_a_broker_refusing_the_keys_stops_up(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis", appendonly=False) as server, \
            PaperBrokerServer(api_key="PKREALKEY1", secret_key="real-secret-1") as broker:
        env = base_env(REDIS_URL=server.url, ALPACA_API_KEY="PKWRONG", ALPACA_SECRET_KEY="wrong-secret",
                       ALPACA_BASE_URL=broker.base_url, ALPACA_DATA_URL=broker.base_url)
        plan = fleet.plan_fleet(var_dir=tmp_path / "var", env=env)
        with pytest.raises(FleetError, match="refused the key pair"):
            preflight(plan)
        good = fleet.plan_fleet(var_dir=tmp_path / "var",
                                env={**env, "ALPACA_API_KEY": "PKREALKEY1", "ALPACA_SECRET_KEY": "real-secret-1"})
        preflight(good)  # the right pair passes


def test_more_workers_than_memory_holds_is_refused_unless_overridden(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="at most .* fit .*TRADEBOT_MAX_WORKERS"):
        fleet.plan_fleet(var_dir=tmp_path / "var", workers=1_000_000, env=base_env())
    plan = fleet.plan_fleet(var_dir=tmp_path / "var", workers=3, env=base_env(TRADEBOT_MAX_WORKERS="3"))
    assert plan.workers == 3
    with pytest.raises(FleetError, match="at most 2 fit"):
        fleet.plan_fleet(var_dir=tmp_path / "var", workers=3, env=base_env(TRADEBOT_MAX_WORKERS="2"))


@pytest.mark.parametrize("case", ["wrong-password", "closed-redis", "broker-unreachable"])
def test_up_refuses_with_one_line_and_starts_nothing(tmp_path: Path, case: str) -> None:
    from click.testing import CliRunner

    from bot.cli import cli

    with EmbeddedRedis(tmp_path / "redis", password=PASSWORD, appendonly=False) as server:
        good_redis = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        env = {"REDIS_URL": {"wrong-password": f"redis://:nope@127.0.0.1:{server.port}/0",
                             "closed-redis": f"redis://127.0.0.1:{free_port()}/0"}.get(case, good_redis)}
        if case == "broker-unreachable":  # keys set, the broker's port closed
            env.update(ALPACA_API_KEY="PKKEY1234", ALPACA_SECRET_KEY="secret-1234",
                       ALPACA_BASE_URL=f"http://127.0.0.1:{free_port()}")
        var = tmp_path / "var"
        result = CliRunner().invoke(cli, ["up", "--detach", "--var-dir", str(var)], env={**base_env(), **env})
    assert result.exit_code == 1, result.output
    assert "not starting" in result.output and len(result.output.strip().splitlines()) == 1
    assert PASSWORD not in result.output and "secret-1234" not in result.output
    assert not (var / "supervisord.pid").exists() and not (var / "fleet.json").exists()
