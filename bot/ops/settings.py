"""Which Redis (and symbols, streams, prefix) an operator command works on, and a checked client to it."""
from __future__ import annotations

import os
from collections.abc import Mapping

import redis

from bot.config import ConfigError, Settings
from bot.fleet import read_fleet_file
from bot.logs import redact_url
from bot.ops.errors import OpsError, OpsInputError
from bot.redisconn import RedisUnavailable, check, connect


def operator_settings(redis_url: str | None = None, var_dir: str | None = None,
                      env: Mapping[str, str] | None = None) -> Settings:
    """Settings for an operator command: flag, then environment, then what the local fleet's
    `tradebot up` recorded in var/fleet.json (its embedded Redis URL, symbols, streams, prefix)."""
    merged = dict(os.environ if env is None else env)
    fleet = read_fleet_file(var_dir) or {}
    if redis_url:
        merged["REDIS_URL"] = redis_url
    elif not merged.get("REDIS_URL") and fleet.get("redis_url"):
        merged["REDIS_URL"] = fleet["redis_url"]
    for name, key in (("TRADEBOT_SYMBOLS", "symbols"), ("TRADEBOT_SOURCE_STREAMS", "source_streams")):
        if not merged.get(name) and fleet.get(key):
            merged[name] = ",".join(fleet[key])
    if not merged.get("TRADEBOT_PREFIX") and fleet.get("prefix"):
        merged["TRADEBOT_PREFIX"] = fleet["prefix"]
    if fleet.get("paper_broker") and fleet.get("broker_url") and not merged.get("ALPACA_BASE_URL"):
        merged["ALPACA_BASE_URL"] = fleet["broker_url"]  # the fleet's own paper broker (demo key pair)
    try:
        return Settings.from_env(merged)
    except ConfigError as exc:
        raise OpsInputError(str(exc)) from None


def open_redis(settings: Settings, *, decode: bool = True) -> redis.Redis:
    """A checked client; OpsError with the password-free URL when Redis cannot be used."""
    client = connect(settings.redis_url, decode=decode, socket_timeout=5.0)
    try:
        check(client, settings.redis_url)
    except RedisUnavailable as exc:
        client.close()
        raise OpsError(str(exc)) from None
    except redis.RedisError as exc:
        client.close()
        raise OpsError(f"Redis at {redact_url(settings.redis_url)}: {exc}") from None
    return client
