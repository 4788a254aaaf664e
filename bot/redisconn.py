"""Redis connections: one way to open them, with timeouts and reconnect backoff."""
from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from bot.errors import TradebotError
from bot.logs import redact_url

# Only a connection error is retried by the client library. A timeout is not: the command may
# have been executed with its reply lost, and a plain XADD (or any non-idempotent command) sent
# again would then run twice, e.g. two source entries and two orders for one signal. Callers'
# loops back off and carry on after a timeout instead.
RETRIED_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError,)


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
        retry=Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), retries=3, supported_errors=RETRIED_ERRORS),
        retry_on_error=list(RETRIED_ERRORS),
    )


def check(client: redis.Redis, url: str) -> None:
    """Fail fast with a clear message (password hidden) when Redis cannot be used:
    RedisAuthError when it refuses the credentials, RedisUnavailable when it does not answer."""
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisAuthError(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
    except redis.ResponseError as exc:
        if is_auth_refusal(exc):
            raise RedisAuthError(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnavailable(f"Redis at {redact_url(url)} is unreachable: {exc}") from None


def is_auth_refusal(exc: BaseException) -> bool:
    """Is this Redis error a refusal of the credentials (wrong or missing password)?"""
    if isinstance(exc, redis.AuthenticationError):
        return True
    return isinstance(exc, redis.ResponseError) and any(
        marker in str(exc) for marker in ("NOAUTH", "WRONGPASS", "invalid password", "invalid username-password"))


class RedisUnavailable(TradebotError, RuntimeError):
    """Redis cannot be used (unreachable, or refusing the credentials: RedisAuthError)."""


class RedisAuthError(RedisUnavailable):
    """Redis refused the credentials: a configuration error, not an outage."""
