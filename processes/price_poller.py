"""`tradebot poller`: the price poller process (thin: flags -> Settings -> bot.poller.Poller)."""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import click
import redis

from bot.alpaca.client import AlpacaClient
from bot.breakers import BreakerLimits, Breakers
from bot.config import ConfigError, Settings, parse_symbols, seconds_setting
from bot.heartbeat import Heartbeat, broker_requests_extra
from bot.logs import configure_logging, redact_url
from bot.poller import Poller
from bot.ratelimit import RateLimiter
from bot.runtime import stop_on_signals
from processes.common import open_redis

log = logging.getLogger(__name__)

# A market-data poll is repeated by the next tick anyway: one quick retry inside a tick is enough,
# and a short read timeout keeps a hung request from holding the cache hostage for long (or a
# stop request waiting: the poller checks its stop event between the calls of a tick).
POLLER_MAX_RETRIES = 1
POLLER_HTTP_TIMEOUT = 2.0  # well under TRADEBOT_MAX_PRICE_AGE (5 s): one hung request must not stale every price
# Longest server-hinted wait (Retry-After, a spent rate window) inside one call.
POLLER_MAX_WAIT = 2.0


def poller_client(settings: Settings, r: redis.Redis, stop: threading.Event, **kw: Any) -> AlpacaClient:
    """The poller's AlpacaClient: short timeouts, one retry, and the fleet-wide rate limiter (the
    poller's requests count in the account's budget like the workers'), stop-aware."""
    options: dict[str, Any] = dict(max_retries=POLLER_MAX_RETRIES, timeout=POLLER_HTTP_TIMEOUT,
                                   max_wait=POLLER_MAX_WAIT, limiter=RateLimiter.from_settings(r, settings, stop=stop))
    options.update(kw)
    return AlpacaClient.from_settings(settings, **options)


@click.command(help="Poll market data, account, positions and the market clock into the Redis market cache.")
@click.option("--redis-url", envvar="REDIS_URL", help="redis:// or rediss:// URL (password allowed).")
@click.option("--symbols", envvar="TRADEBOT_SYMBOLS", help="Tickers to poll, comma-separated (default NVDA).")
@click.option("--prefix", envvar="TRADEBOT_PREFIX", help="Prefix of the bot's Redis keys (default tradebot).")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              metavar="SECONDS", help="One market-data request for all symbols this often.")
@click.option("--account-interval", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="SECONDS", help="Refresh account and positions this often (and when a worker asks).")
@click.option("--refresh-min-interval", type=click.FloatRange(min=0), default=1.0, show_default=True,
              metavar="SECONDS", help="Serve workers' refresh asks (one per fill) at most this often; asks "
                                      "arriving sooner merge into the next refresh (0: every ask at once).")
@click.option("--clock-interval", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS", help="Refresh the market clock this often.")
@click.option("--max-backoff", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS", help="Longest pause between tries while the broker or Redis is down.")
@click.option("--alpaca-api-key", envvar="ALPACA_API_KEY", help="Alpaca key id (prefer the environment variable).")
@click.option("--alpaca-secret-key", envvar="ALPACA_SECRET_KEY",
              help="Alpaca secret key (prefer the environment variable).")
@click.option("--alpaca-base-url", envvar="ALPACA_BASE_URL", help="Trading API base URL (default Alpaca paper).")
@click.option("--alpaca-data-url", envvar="ALPACA_DATA_URL",
              help="Market-data base URL (default: Alpaca's, or the base URL for a local paper broker).")
def main(redis_url: str | None, symbols: str | None, prefix: str | None, interval: float,
         account_interval: float, refresh_min_interval: float, clock_interval: float, max_backoff: float,
         alpaca_api_key: str | None, alpaca_secret_key: str | None, alpaca_base_url: str | None,
         alpaca_data_url: str | None) -> None:
    configure_logging(secrets=[s for s in (alpaca_api_key, alpaca_secret_key) if s])
    try:
        settings = Settings.from_env(
            redis_url=redis_url or None,
            symbols=parse_symbols(symbols) if symbols else None,
            prefix=prefix or None,
            alpaca_api_key=alpaca_api_key or None,
            alpaca_secret_key=alpaca_secret_key or None,
            alpaca_base_url=alpaca_base_url or None,
            alpaca_data_url=alpaca_data_url or None,
        ).with_demo_credentials("to poll")
        limits = BreakerLimits.from_env(lambda name, default: os.environ.get(name, default))
        # seconds of polled prices kept for `tradebot record` (unset: none)
        history = seconds_setting(os.environ.get, "TRADEBOT_PRICE_HISTORY", 0.0, allow_zero=True) or 0.0
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None

    r = open_redis(settings.redis_url)
    log.info("price poller settings: %s (redis %s)", settings.public_view(), redact_url(settings.redis_url))
    try:
        with stop_on_signals("price poller") as stop, poller_client(settings, r, stop) as client, \
                Heartbeat(r, settings.keys, f"poller@{socket.gethostname()}",
                          extra=broker_requests_extra(client)) as heartbeat:
            poller = Poller(client, r, settings.keys, settings.symbols, interval=interval,
                            account_interval=account_interval, clock_interval=clock_interval,
                            max_backoff=max_backoff, refresh_min_interval=refresh_min_interval,
                            breakers=Breakers(r, settings.keys, limits) if limits.watches_equity else None,
                            price_history=history)
            poller.on_tick = heartbeat.progress
            poller.run(stop)
    finally:
        r.close()
