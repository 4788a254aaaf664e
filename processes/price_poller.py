"""`tradebot poller`: the price poller process (thin: flags -> Settings -> bot.poller.Poller)."""
from __future__ import annotations

import logging
import signal
import threading
from dataclasses import replace

import click

from bot.alpaca.client import AlpacaClient
from bot.config import ConfigError, Settings, parse_symbols
from bot.logs import configure_logging, redact_url
from bot.poller import Poller
from bot.redisconn import RedisUnavailable, check, connect

log = logging.getLogger(__name__)

# A market-data poll is repeated by the next tick anyway: one quick retry inside a tick is enough,
# and a short read timeout keeps a hung request from holding the cache hostage for long.
POLLER_MAX_RETRIES = 1
POLLER_HTTP_TIMEOUT = 5.0


def with_credentials(settings: Settings) -> Settings:
    """Without a key pair, a local paper broker is spoken to with its documented demo pair;
    real Alpaca without keys is a configuration error."""
    if not settings.alpaca_base_url.startswith(("http://", "https://")):
        raise ConfigError(f"ALPACA_BASE_URL={settings.alpaca_base_url!r} is not an http(s) URL")
    if settings.has_alpaca_credentials:
        return settings
    if "alpaca.markets" in settings.alpaca_base_url:
        raise ConfigError("ALPACA_API_KEY and ALPACA_SECRET_KEY are required to poll "
                          f"{settings.alpaca_base_url}; without them point ALPACA_BASE_URL at the paper broker")
    from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY

    log.info("no Alpaca key pair set: using the paper broker's demo pair for %s", settings.alpaca_base_url)
    return replace(settings, alpaca_api_key=DEMO_API_KEY, alpaca_secret_key=DEMO_SECRET_KEY)


@click.command(help="Poll market data, account, positions and the market clock into the Redis market cache.")
@click.option("--redis-url", envvar="REDIS_URL", help="redis:// or rediss:// URL (password allowed).")
@click.option("--symbols", envvar="TRADEBOT_SYMBOLS", help="Tickers to poll, comma-separated (default NVDA).")
@click.option("--prefix", envvar="TRADEBOT_PREFIX", help="Prefix of the bot's Redis keys (default tradebot).")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              metavar="SECONDS", help="One market-data request for all symbols this often.")
@click.option("--account-interval", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="SECONDS", help="Refresh account and positions this often (and at once on request).")
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
         account_interval: float, clock_interval: float, max_backoff: float, alpaca_api_key: str | None,
         alpaca_secret_key: str | None, alpaca_base_url: str | None, alpaca_data_url: str | None) -> None:
    configure_logging(secrets=[s for s in (alpaca_api_key, alpaca_secret_key) if s])
    try:
        settings = Settings.from_env(
            redis_url=redis_url or None,
            symbols=parse_symbols(symbols) if symbols else None,
            prefix=prefix or None,
            alpaca_api_key=alpaca_api_key or None,
            alpaca_secret_key=alpaca_secret_key or None,
            alpaca_base_url=alpaca_base_url.rstrip("/") if alpaca_base_url else None,
            alpaca_data_url=alpaca_data_url.rstrip("/") if alpaca_data_url else None,
        )
        if alpaca_base_url and not alpaca_data_url and "alpaca.markets" not in alpaca_base_url:
            # a local paper broker serves market data under its own base URL
            settings = replace(settings, alpaca_data_url=settings.alpaca_base_url)
        settings = with_credentials(settings)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None

    r = connect(settings.redis_url)
    try:
        check(r, settings.redis_url)
    except RedisUnavailable as exc:
        raise click.ClickException(str(exc)) from None

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("price poller: %s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("price poller settings: %s (redis %s)", settings.public_view(), redact_url(settings.redis_url))
    try:
        with AlpacaClient.from_settings(settings, max_retries=POLLER_MAX_RETRIES,
                                        timeout=POLLER_HTTP_TIMEOUT) as client:
            poller = Poller(client, r, settings.keys, settings.symbols, interval=interval,
                            account_interval=account_interval, clock_interval=clock_interval,
                            max_backoff=max_backoff)
            poller.run(stop)
    finally:
        r.close()
