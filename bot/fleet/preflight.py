"""Before `tradebot up` says "up": can the fleet use its Redis and its broker at all? And after the
start: is every program RUNNING with a heartbeat? A wrong password or key pair must be one line and
a non-zero exit, not "fleet is up" over processes that crash-loop."""
from __future__ import annotations

import time
from collections.abc import Iterable

import redis

from bot.fleet.errors import FleetError
from bot.fleet.plan import FleetPlan
from bot.logs import redact_url

# programs that write a heartbeat (redis, the paper broker and the notifier do not)
BEATING = ("poller", "listener", "router", "worker", "web", "generator")
HEALTH_TIMEOUT = 30.0
MIN_REDIS = (6, 2)  # XAUTOCLAIM arrived in 6.2


def preflight(plan: FleetPlan) -> None:
    """FleetError (one line, no secret) when an external Redis or a real broker refuses or does not
    answer; the embedded Redis and the paper broker are started by the fleet itself."""
    if not plan.embedded_redis:
        _check_redis(plan.settings.redis_url)
    if not plan.paper_broker and {"worker", "poller", "listener"} & set(plan.programs):
        _check_broker(plan)


def _check_redis(url: str) -> None:
    from bot.redisconn import RedisUnavailable, check, connect

    client = connect(url, socket_timeout=5.0)
    try:
        check(client, url)
        version = str(client.info("server").get("redis_version", "0"))
        if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < MIN_REDIS:
            raise FleetError(f"not starting: Redis at {redact_url(url)} is {version}; the fleet needs "
                             f"{'.'.join(map(str, MIN_REDIS))} or newer (XAUTOCLAIM, streams with consumer groups)")
    except RedisUnavailable as exc:
        raise FleetError(f"not starting: {exc}") from None
    except redis.RedisError as exc:
        raise FleetError(f"not starting: Redis at {redact_url(url)}: {type(exc).__name__}") from None
    finally:
        client.close()


def _check_broker(plan: FleetPlan) -> None:
    from bot.alpaca.client import AlpacaClient
    from bot.alpaca.errors import AlpacaError, Unauthorized

    settings = plan.settings
    try:
        with AlpacaClient.from_settings(settings, max_retries=0, timeout=5.0) as client:  # one request, no retry noise
            client.get_account()
    except Unauthorized:
        raise FleetError(f"not starting: the broker at {settings.alpaca_base_url} refused the key pair in "
                         "ALPACA_API_KEY/ALPACA_SECRET_KEY (401/403)") from None
    except AlpacaError as exc:
        raise FleetError(f"not starting: the broker at {settings.alpaca_base_url} did not answer: {exc}") from None


def unhealthy(plan: FleetPlan, infos: Iterable[dict[str, object]], timeout: float = HEALTH_TIMEOUT) -> list[str]:
    """After the start: what is wrong with the programs, waiting up to ``timeout`` for heartbeats.
    Empty when every program is RUNNING and every beating one has a heartbeat."""
    from bot.redisconn import connect

    states = {str(i["name"]): str(i["statename"]) for i in infos}
    problems = [f"{name} is {state}" for name, state in states.items() if state != "RUNNING"]
    beating = [name for name, state in states.items() if state == "RUNNING" and name.split("-")[0] in BEATING]
    if not beating:
        return problems
    keys = plan.settings.keys
    client = connect(plan.settings.redis_url, socket_timeout=5.0)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                beats = {str(k).split(":")[-1].split("@")[0] for k in client.scan_iter(match=keys.heartbeat("*"))}
            except redis.RedisError:
                beats = set()
            silent = [name for name in beating if name not in beats]
            if not silent or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
    finally:
        client.close()
    return problems + [f"{name} writes no heartbeat (see {plan.paths.log_dir / (name + '.log')})" for name in silent]
