"""Redis connections: one way to open them, with timeouts and reconnect backoff."""
from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from bot.logs import redact_url


def connect(url: str, *, decode: bool = True, socket_timeout: float | None = 10.0) -> redis.Redis:
    """A client for ``url``. ``decode=False`` gives bytes, for reading untrusted stream payloads.

    ``socket_timeout`` must exceed any BLOCK time used with this client.
    """
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_connect_timeout=5.0,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        retry=Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), retries=3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def check(client: redis.Redis, url: str) -> None:
    """Fail fast with a clear message (password hidden) when Redis cannot be used."""
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisUnavailable(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnavailable(f"Redis at {redact_url(url)} is unreachable: {exc}") from None


class RedisUnavailable(RuntimeError):
    pass
