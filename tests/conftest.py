"""A real Redis for every test: REDIS_URL if set, else testcontainers' Redis when a Docker
engine answers, else a redis-server started on a free port in a temp folder.

Each test gets a flushed database, so REDIS_URL must name a throwaway database.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import redis

from bot.embedded_redis import EmbeddedRedis


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
        yield os.environ["REDIS_URL"]
        return
    if os.environ.get("TRADEBOT_TEST_DOCKER", "1") != "0" and _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(container.port)
            yield f"redis://{host}:{port}/0"
        return
    server = EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


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
