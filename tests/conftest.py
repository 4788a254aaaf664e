"""A real Redis for every test: REDIS_URL if set, else testcontainers' Redis when a Docker
engine answers (unless TRADEBOT_REDIS_SERVER names a server), else a redis-server started on a
free port in a temp folder: bot.embedded_redis.find_redis_server's choice (Valkey 8.1 by default;
TRADEBOT_REDIS_SERVER=redis-6.2 for the oldest supported server, as `make test-redis62` does).

Each test gets a flushed database, so REDIS_URL must name a throwaway database.  The header of the
run names the server chosen; the summary at its end, the one used (INFO server).
"""
from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.embedded_redis import EmbeddedRedis, RedisServerNotFound, find_redis_server

DOCKER_IMAGE = "redis:7-alpine"
_used: dict[str, str] = {}  # the server the redis_url fixture gave, for the summary


def describe_server(info: Mapping[str, Any]) -> str:
    """INFO server as one phrase: ``valkey 8.1.8 (redis_version 7.2.4)`` or ``redis 6.2.5``."""
    name = str(info.get("server_name") or "redis")
    own = info.get(f"{name}_version")
    compat = str(info.get("redis_version", "?"))
    return f"{name} {own} (redis_version {compat})" if own and str(own) != compat else f"{name} {compat}"


def server_version(r: redis.Redis) -> tuple[int, int]:
    """INFO redis_version as (major, minor): what the server implements of Redis (Valkey 8 says 7.2)."""
    version = str(r.info("server").get("redis_version", "0.0"))
    major, minor, *_ = [*(int(p) if p.isdigit() else 0 for p in version.split(".")), 0, 0]
    return major, minor


def _use_docker() -> bool:
    return (os.environ.get("TRADEBOT_TEST_DOCKER", "1") != "0" and not os.environ.get("TRADEBOT_REDIS_SERVER")
            and _docker_answers())


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("REDIS_URL"):
        return "redis server: REDIS_URL (its INFO server is in the summary at the end)"
    if _use_docker():
        return f"redis server: testcontainers {DOCKER_IMAGE}"
    try:
        binary = find_redis_server()
    except RedisServerNotFound as exc:
        return f"redis server: {exc}"
    try:
        banner = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        banner = f"--version failed: {exc}"
    return f"redis server: {binary}: {banner}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _used:
        terminalreporter.write_line(f"redis server used: {_used['server']}")


@functools.cache
def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield _note(os.environ["REDIS_URL"])
        return
    if _use_docker():
        from testcontainers.redis import RedisContainer

        with RedisContainer(DOCKER_IMAGE) as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(container.port)
            yield _note(f"redis://{host}:{port}/0")
        return
    server = EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    try:
        yield _note(server.url)
    finally:
        server.stop()


def _note(url: str) -> str:
    """Record the INFO server of ``url`` for the run's summary."""
    with redis.Redis.from_url(url, decode_responses=True) as client:
        _used["server"] = describe_server(client.info("server"))
    return url


@pytest.fixture(scope="session")
def redis_version(redis_url: str) -> tuple[int, int]:
    """The (major, minor) Redis version the test server implements (Valkey 8.1: (7, 2))."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        return server_version(client)


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A decoded client on a clean database."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def rb(redis_url: str, r: redis.Redis) -> Iterator[redis.Redis]:
    """A bytes client on the same clean database (for non-UTF-8 payloads)."""
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path
