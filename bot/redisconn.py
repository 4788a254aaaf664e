"""Redis connections: one way to open them, with timeouts and reconnect backoff."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from bot.errors import TradebotError
from bot.logs import redact_url

# Only a connection error is retried by the client library. A timeout is not: the command may
# have been executed with its reply lost, and a plain XADD (or any non-idempotent command) sent
# again would then run twice, e.g. two source entries and two orders for one signal. Callers'
# loops back off and carry on after a timeout instead.
RETRIED_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError,)


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True)
class SentinelUrl:
    """``redis+sentinel://[user:pass@]host1:26379,host2:26379/service[/db][?sentinel_password=...]``."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False


def parse_sentinel_url(url: str) -> SentinelUrl:
    """ValueError (without the password) for anything but a well-formed Sentinel URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise ValueError("not a redis+sentinel:// URL")
    rest, _, query = rest.partition("?")
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    hosts_part, _, path = location.partition("/")
    hosts = []
    for item in hosts_part.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "26379"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("each sentinel must be host:port")
        hosts.append((host, int(port)))
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("the path must be /service_name or /service_name/db")
    params = dict(item.split("=", 1) for item in query.split("&") if "=" in item)
    username, _, password = userinfo.partition(":") if ":" in userinfo else (userinfo, "", "")
    return SentinelUrl(tuple(hosts), unquote(parts[0]), int(parts[1]) if len(parts) == 2 else 0,
                       unquote(username) or None, unquote(password) or None,
                       unquote(params["sentinel_username"]) if "sentinel_username" in params else None,
                       unquote(params["sentinel_password"]) if "sentinel_password" in params else None,
                       scheme.startswith("rediss"))


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0] in SENTINEL_SCHEMES


@dataclass(frozen=True)
class ClusterUrl:
    """``redis+cluster://[user:pass@]host1:6379,host2:6379[/]``: any reachable nodes of the cluster."""

    hosts: tuple[tuple[str, int], ...]
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ssl: bool = False


def parse_cluster_url(url: str) -> ClusterUrl:
    """ValueError (without the password) for anything but a well-formed cluster URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        raise ValueError("not a redis+cluster:// URL")
    rest = rest.partition("?")[0]
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    hosts_part, _, path = location.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ValueError("a cluster has only database 0")
    hosts = []
    for item in hosts_part.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), "6379"
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("each node must be host:port")
        hosts.append((host, int(port)))
    username, _, password = userinfo.partition(":") if ":" in userinfo else (userinfo, "", "")
    return ClusterUrl(tuple(hosts), unquote(username) or None, unquote(password) or None, scheme.startswith("rediss"))


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def connect(url: str, *, decode: bool = True, socket_timeout: float | None = 10.0) -> redis.Redis:
    """A client for ``url``. ``decode=False`` gives bytes, for reading untrusted stream payloads.

    ``socket_timeout`` must exceed any BLOCK time used with this client. A ``redis+sentinel://``
    URL gives a client of the service's current master: after a failover its next connection goes
    to the promoted replica (a connection error on the way is retried like any other).
    """
    options: dict[str, Any] = dict(
        decode_responses=decode,
        socket_connect_timeout=5.0,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        retry=Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), retries=3, supported_errors=RETRIED_ERRORS),
        retry_on_error=list(RETRIED_ERRORS),
    )
    if is_cluster_url(url):
        return _cluster_client(parse_cluster_url(url), options)
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    target = parse_sentinel_url(url)
    sentinel_auth = {k: v for k, v in (("username", target.sentinel_username),
                                       ("password", target.sentinel_password)) if v}
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs={"socket_timeout": 2.0, "ssl": target.ssl,
                                                             **sentinel_auth},
                        socket_connect_timeout=5.0)
    return sentinel.master_for(target.service, redis_class=redis.Redis, db=target.db, username=target.username,
                               password=target.password, ssl=target.ssl, **options)


def _cluster_client(target: ClusterUrl, options: dict[str, Any]) -> redis.Redis:
    """A RedisCluster: it learns the slot map from any of the nodes and follows MOVED/ASK and a
    replica's promotion by itself. Every key the fleet uses carries one hash tag (``Keys``), so each
    script and transaction stays in one slot. Typed as ``redis.Redis``: the fleet calls only
    commands both clients have."""
    from redis.cluster import ClusterNode, RedisCluster

    options = {k: v for k, v in options.items() if k != "retry_on_error"}
    cluster = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
                           username=target.username, password=target.password, ssl=target.ssl, **options)
    return cast(redis.Redis, cluster)


def bytes_twin(client: redis.Redis) -> redis.Redis:
    """A second client to the same server(s) that answers bytes (for payloads that are not UTF-8)."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        kwargs = {k: v for k, v in client.nodes_manager.connection_kwargs.items()
                  if k not in ("host", "port", "decode_responses")}
        nodes = list(client.nodes_manager.startup_nodes.values())
        return cast(redis.Redis, RedisCluster(startup_nodes=nodes, decode_responses=False, **kwargs))
    kwargs = {**client.connection_pool.connection_kwargs, "decode_responses": False}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=client.connection_pool.connection_class,
                                                            **kwargs))


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
