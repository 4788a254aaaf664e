"""`tradebot router`: the signal router process (thin: flags -> Settings -> bot.router.Router)."""
from __future__ import annotations

import logging

import click

from bot.config import ConfigError, Settings, parse_list, parse_symbols
from bot.heartbeat import Heartbeat
from bot.logs import configure_logging
from bot.redisconn import RedisAuthError
from bot.router import Router, TrimPolicy
from bot.runtime import probe_redis, stop_on_signals

log = logging.getLogger(__name__)


@click.command(help="Route signals from the source streams to tradebot:signals; bad ones to tradebot:dlq.")
@click.option("--redis-url", envvar="REDIS_URL", help="redis:// or rediss:// URL (password allowed).")
@click.option("--symbols", envvar="TRADEBOT_SYMBOLS", help="Tickers accepted, comma-separated (default NVDA).")
@click.option("--source-streams", envvar="TRADEBOT_SOURCE_STREAMS",
              help="Source streams, comma-separated (default nvda).")
@click.option("--prefix", envvar="TRADEBOT_PREFIX", help="Prefix of the bot's Redis keys (default tradebot).")
@click.option("--consumer", default=None, help="Consumer name in the router group (default router-<host>-<pid>).")
@click.option("--from-start", is_flag=True, help="A newly created group reads the source streams from their start.")
@click.option("--trim-maxlen", type=click.IntRange(min=1), default=None,
              help="Trim source streams and tradebot:signals to about N entries (only acknowledged ones).")
@click.option("--trim-minid-age", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Trim acknowledged entries older than SECONDS (default TRADEBOT_STREAM_RETENTION, 3600).")
@click.option("--trim-interval", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              metavar="SECONDS", help="How often to trim.")
@click.option("--block-ms", type=click.IntRange(min=1, max=60_000), default=2000, show_default=True,
              help="XREADGROUP BLOCK time.")
@click.option("--max-deliveries", type=click.IntRange(min=1), default=5, show_default=True,
              help="An entry delivered more often than this goes to the DLQ.")
@click.option("--claim-idle", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              metavar="SECONDS", help="Reclaim entries other routers left pending this long.")
def main(redis_url: str | None, symbols: str | None, source_streams: str | None, prefix: str | None,
         consumer: str | None, from_start: bool, trim_maxlen: int | None, trim_minid_age: float | None,
         trim_interval: float, block_ms: int, max_deliveries: int, claim_idle: float) -> None:
    configure_logging()
    try:
        settings = Settings.from_env(
            redis_url=redis_url or None,
            symbols=parse_symbols(symbols) if symbols else None,
            source_streams=parse_list(source_streams) or None if source_streams else None,
            prefix=prefix or None,
        )
        if trim_minid_age is not None and settings.stream_retention and trim_minid_age > settings.stream_retention:
            # the dedup markers last as long as TRADEBOT_STREAM_RETENTION covers: entries kept longer
            # would outlive their markers, and a group recreated at 0 would deliver them again
            raise ConfigError(f"--trim-minid-age {trim_minid_age:g} is longer than TRADEBOT_STREAM_RETENTION "
                              f"{settings.stream_retention:g}: raise TRADEBOT_STREAM_RETENTION instead")
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    router = Router(
        settings,
        consumer=consumer or None,  # None: router-<host>-<pid>
        from_start=from_start,
        block_ms=block_ms,
        trim=TrimPolicy.from_settings(settings, maxlen=trim_maxlen, min_age_s=trim_minid_age, interval_s=trim_interval),
        max_deliveries=max_deliveries,
        claim_idle_ms=int(claim_idle * 1000),
    )
    try:
        probe_redis(router.r, settings.redis_url)
    except RedisAuthError as exc:
        router.r.close()
        raise click.ClickException(str(exc)) from None
    log.info("router settings: %s", settings.public_view())
    with stop_on_signals(f"router {router.consumer}") as stop, \
            Heartbeat(router.r, settings.keys, router.consumer) as heartbeat:
        router.loop.on_round = heartbeat.progress
        router.run(stop)
