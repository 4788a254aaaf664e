"""`tradebot listener`: the order-updates listener process (thin: flags -> Settings -> bot.listener.Listener)."""
from __future__ import annotations

import logging
from dataclasses import replace

import click

from bot.alpaca.client import AlpacaClient
from bot.config import ConfigError, Settings
from bot.heartbeat import Heartbeat, broker_requests_extra
from bot.listener import Listener, ListenerConfig, stream_url
from bot.logs import configure_logging, redact_url
from bot.order_events import OrderEvents
from bot.ratelimit import RateLimiter
from bot.reconcile import Reconciler
from bot.runtime import stop_on_signals
from processes.common import open_redis

log = logging.getLogger(__name__)


@click.command(help="Hold the broker's trade_updates stream and record every order event in Redis "
                    "(one active per account; another is a hot standby).")
@click.option("--redis-url", envvar="REDIS_URL", help="redis:// or rediss:// URL (password allowed).")
@click.option("--prefix", envvar="TRADEBOT_PREFIX", help="Prefix of the bot's Redis keys (default tradebot).")
@click.option("--name", "holder", default=None,
              help="This listener's name in the lease (default listener-<host>-<pid>).")
@click.option("--stream-url", "url", default=None, metavar="URL",
              help="The trading stream (default: wss://<ALPACA_BASE_URL host>/stream).")
@click.option("--lease-ttl", type=click.FloatRange(min=1), default=10.0, show_default=True, metavar="SECONDS",
              help="A standby takes over this long after the active listener stops renewing its lease.")
@click.option("--probe-after", type=click.FloatRange(min=0.1), default=5.0, show_default=True, metavar="SECONDS",
              help="Ask a stream quiet this long whether it still listens.")
@click.option("--probe-timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True, metavar="SECONDS",
              help="No answer this long: the socket is silent, reconnect and back-fill.")
@click.option("--lookback", type=click.FloatRange(min=0), default=86400.0, show_default=True, metavar="SECONDS",
              help="At the first start, back-fill orders submitted this long ago.")
@click.option("--msgpack/--json", "packed", default=False, show_default=True, help="Frames the stream sends.")
@click.option("--reconcile/--no-reconcile", default=True, show_default=True,
              help="Reconcile the broker with the books (and fix) after every (re)connect and every "
                   "--reconcile-every seconds.")
@click.option("--reconcile-every", type=click.FloatRange(min=1), default=300.0, show_default=True,
              metavar="SECONDS", help="Reconcile this often while connected.")
@click.option("--alpaca-api-key", envvar="ALPACA_API_KEY", help="Alpaca key id (prefer the environment variable).")
@click.option("--alpaca-secret-key", envvar="ALPACA_SECRET_KEY",
              help="Alpaca secret key (prefer the environment variable).")
@click.option("--alpaca-base-url", envvar="ALPACA_BASE_URL", help="Trading API base URL (default Alpaca paper).")
def main(redis_url: str | None, prefix: str | None, holder: str | None, url: str | None, lease_ttl: float,
         probe_after: float, probe_timeout: float, lookback: float, packed: bool, reconcile: bool,
         reconcile_every: float, alpaca_api_key: str | None,
         alpaca_secret_key: str | None, alpaca_base_url: str | None) -> None:
    configure_logging(secrets=[s for s in (alpaca_api_key, alpaca_secret_key) if s])
    try:
        settings = Settings.from_env(redis_url=redis_url or None, prefix=prefix or None,
                                     alpaca_api_key=alpaca_api_key or None,
                                     alpaca_secret_key=alpaca_secret_key or None,
                                     alpaca_base_url=alpaca_base_url or None).with_demo_credentials("to listen")
        if holder is not None and (not holder or any(ch.isspace() for ch in holder)):
            raise ConfigError(f"listener name {holder!r} must be non-empty without spaces")
        config = replace(ListenerConfig(), lease_ttl=lease_ttl, probe_after=probe_after, probe_timeout=probe_timeout,
                         lookback=lookback, msgpack=packed, reconcile_every=reconcile_every)
        if holder:
            config = replace(config, holder=holder)
        if url is not None and not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"--stream-url {url!r} is not a ws:// or wss:// URL")
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    r = open_redis(settings.redis_url)
    target = url or stream_url(settings.alpaca_base_url)
    log.info("order-updates listener %s: %s (redis %s)", config.holder, target, redact_url(settings.redis_url))
    try:
        with stop_on_signals("listener") as stop, \
                AlpacaClient.from_settings(settings, max_retries=2,
                                           limiter=RateLimiter.from_settings(r, settings, stop=stop)) as client:
            listener = Listener(url=target, api_key=settings.alpaca_api_key, secret_key=settings.alpaca_secret_key,
                                r=r, events=OrderEvents(r, settings.keys), client=client, config=config,
                                reconciler=Reconciler(r, settings.keys, client) if reconcile else None)
            with Heartbeat(r, settings.keys, config.holder, extra=broker_requests_extra(client)) as heartbeat:
                listener.on_progress = heartbeat.progress
                listener.run(stop)
    finally:
        r.close()
