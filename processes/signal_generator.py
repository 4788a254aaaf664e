"""`tradebot generate`: random b/s signals for the configured tickers during US market hours."""
from __future__ import annotations

import logging

import click
import redis

from bot.config import ConfigError, Settings, parse_symbols

log = logging.getLogger(__name__)


@click.command("generate")
@click.option("--redis-url", envvar="REDIS_URL", help="Redis to write to [env REDIS_URL].")
@click.option("--symbols", envvar="TRADEBOT_SYMBOLS", help="Tickers, comma separated [env TRADEBOT_SYMBOLS].")
@click.option("--stream", help="Source stream to XADD to [default: first of TRADEBOT_SOURCE_STREAMS].")
@click.option("--probability", type=float, default=None,
              help="Chance of a signal per second per ticker [default: 0.005].")
@click.option("--rate", type=float, default=None, help="Steady signals per second (overrides --probability).")
@click.option("--count", type=click.IntRange(min=0), default=None, help="Stop after this many signals.")
@click.option("--seed", type=int, default=None, help="Seed of the random choices (reproducible runs).")
@click.option("--always-open", is_flag=True, help="Ignore market hours (demo and load tests).")
@click.option("--first-buy", is_flag=True, help="One buy per ticker as soon as the market is open (the demo).")
@click.option("--wait-for-router", is_flag=True,
              help="Send nothing before the router's consumer group exists on the stream (a fleet starting).")
def main(redis_url: str | None, symbols: str | None, stream: str | None, probability: float | None,
         rate: float | None, count: int | None, seed: int | None, always_open: bool, first_buy: bool,
         wait_for_router: bool) -> None:
    """Random buy/sell signals (the original project's signal source)."""
    import socket

    from bot.generator import DEFAULT_PROBABILITY, GeneratorConfig, SignalGenerator
    from bot.heartbeat import Heartbeat
    from bot.logs import configure_logging, redact_url
    from bot.redisconn import RedisUnavailable, check, connect
    from bot.runtime import probe_redis, stop_on_signals

    configure_logging()
    try:
        settings = Settings.from_env(redis_url=redis_url or None,
                                     symbols=parse_symbols(symbols) if symbols is not None else None)
        config = GeneratorConfig(symbols=settings.symbols, stream=stream or settings.source_streams[0],
                                 probability=DEFAULT_PROBABILITY if probability is None else probability,
                                 rate=rate, count=count, always_open=always_open, seed=seed,
                                 first_buy=first_buy,
                                 wait_for_group=settings.keys.router_group if wait_for_router else None)
    except (ConfigError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    r = connect(settings.redis_url)
    try:
        if count is None:
            # long-running (as under supervisord): only refused credentials stop it; an outage is ridden out
            probe_redis(r, settings.redis_url)
        else:
            check(r, settings.redis_url)  # a finite job run by hand fails fast on any Redis problem
        with stop_on_signals("generator") as stop, \
                Heartbeat(r, settings.keys, f"generator@{socket.gethostname()}") as heartbeat:
            generator = SignalGenerator(r, config, stop_event=stop)
            generator.on_step = heartbeat.progress
            sent = generator.run()
    except RedisUnavailable as exc:  # refused credentials (any run) or unreachable (a --count run)
        raise click.ClickException(str(exc)) from None
    except redis.RedisError as exc:  # outages are retried inside; this is e.g. WRONGTYPE on the stream key
        raise click.ClickException(f"Redis error on stream {config.stream}: {redact_url(str(exc))}") from None
    finally:
        r.close()
    if count is not None:
        click.echo(f"sent {sent} signals to {config.stream}")
