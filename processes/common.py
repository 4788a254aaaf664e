"""What the process entry points share."""
from __future__ import annotations

import click
import redis

from bot.redisconn import RedisAuthError, connect
from bot.runtime import probe_redis


def open_redis(url: str) -> redis.Redis:
    """A client for a long-running process: refused credentials end the process with one line (no
    password); an unreachable Redis is logged and ridden out by the process's loop (bot.runtime)."""
    client = connect(url)
    try:
        probe_redis(client, url)
    except RedisAuthError as exc:
        client.close()
        raise click.ClickException(str(exc)) from None
    return client
