"""`tradebot worker`: one order worker process (thin: flags -> Settings + WorkerConfig -> bot.worker.Worker)."""
from __future__ import annotations

import logging
import os
from decimal import Decimal

import click

from bot.breakers import BreakerLimits
from bot.config import ConfigError, Settings, parse_symbols
from bot.heartbeat import Heartbeat, broker_requests_extra
from bot.logs import configure_logging, redact_url
from bot.redisconn import RedisAuthError, connect
from bot.runtime import probe_redis, stop_on_signals
from bot.strategies import ORDER_TYPES
from bot.strategy import Strategies, StrategyMap, available, parse_options
from bot.streams import default_consumer_name
from bot.worker import Worker, WorkerConfig

log = logging.getLogger(__name__)

_SECONDS = click.FloatRange(min=0, min_open=True)


@click.command(help="Turn signals from tradebot:signals into orders: size, check, submit, follow, journal.")
@click.option("--redis-url", envvar="REDIS_URL", help="redis:// or rediss:// URL (password allowed).")
@click.option("--prefix", envvar="TRADEBOT_PREFIX", help="Prefix of the bot's Redis keys (default tradebot).")
@click.option("--symbols", envvar="TRADEBOT_SYMBOLS", help="Tickers traded, comma-separated (default NVDA).")
@click.option("--weights", envvar="TRADEBOT_WEIGHTS",
              help="Share of equity per ticker for all-in, e.g. NVDA=0.6,AAPL=0.4 (default: equal).")
@click.option("--consumer", default=None, help="Consumer name in the workers' group (default <host>-<pid>).")
@click.option("--claim-idle", type=_SECONDS, default=30.0, show_default=True, metavar="SECONDS",
              help="Reclaim entries other workers left pending this long (keep it above the longest order).")
@click.option("--max-deliveries", type=click.IntRange(min=1), default=5, show_default=True,
              help="An entry delivered more often than this goes to the DLQ.")
@click.option("--order-timeout", type=_SECONDS, default=10.0, show_default=True, metavar="SECONDS",
              help="Cancel an order not final after this long.")
@click.option("--strategy", envvar="TRADEBOT_STRATEGY", default="all-in", show_default=True,
              callback=lambda _ctx, _param, value: _strategy_map(value),
              help="NAME, or SYMBOL=NAME,...,*=NAME. Built in: all-in (weight x equity per buy, the whole "
                   "position per sell), fixed, percent-of-equity, target-weight; plug-ins: the "
                   "tradebot.strategies entry points (docs/strategies.md).")
@click.option("--percent", envvar="TRADEBOT_PERCENT", type=str, default=None,
              help="percent-of-equity: the share of equity per order, e.g. 0.05.")
@click.option("--strategy-options", envvar="TRADEBOT_STRATEGY_OPTIONS", default="",
              help="KEY=VALUE,... passed to the strategy (plug-ins read them).")
@click.option("--fixed-qty", type=str, default=None, help="fixed: shares per order (when the signal has no qty).")
@click.option("--fixed-notional", type=str, default=None,
              help="fixed: dollars per buy, in whole shares at the ask (when the signal has no qty).")
@click.option("--order-type", type=click.Choice(ORDER_TYPES), default="market", show_default=True,
              help="market IOC, or a marketable limit IOC priced --slippage-bps beyond the quote.")
@click.option("--slippage-bps", type=click.IntRange(min=0, max=9999), default=10, show_default=True,
              help="Limit orders: basis points above the ask (buys) or below the bid (sells).")
@click.option("--max-signal-age", type=_SECONDS, default=None, metavar="SECONDS",
              help="Skip signals older than this (default TRADEBOT_MAX_SIGNAL_AGE or 60).")
@click.option("--max-quote-age", type=_SECONDS, default=None, metavar="SECONDS",
              help="Skip when the cached quote's own time is older than this (default TRADEBOT_MAX_QUOTE_AGE or 60).")
@click.option("--extended-hours/--no-extended-hours", default=None,
              help="Trade while the regular session is closed (limit day orders; default TRADEBOT_EXTENDED_HOURS).")
@click.option("--block-ms", type=click.IntRange(min=1, max=10_000), default=1000, show_default=True,
              help="XREADGROUP BLOCK time; a stop request waits at most about this long.")
@click.option("--stop-grace", type=_SECONDS, default=15.0, show_default=True, metavar="SECONDS",
              help="After SIGTERM: the open order is canceled by this minus the 5 s cancel timeout and given up "
                   "(left pending, replayed later) by this; keep well below supervisord's stopwaitsecs (30).")
@click.option("--follow", type=click.Choice(("events", "poll")), default="events", show_default=True,
              help="events: wait for the listener's order events (REST only when it is down or an event is "
                   "late); poll: read every order over REST until final.")
@click.option("--event-late", type=_SECONDS, default=5.0, show_default=True, metavar="SECONDS",
              help="An order with no event this long is read over REST once (then 2x, up to 4x this).")
@click.option("--broker-timeout", type=_SECONDS, default=3.0, show_default=True, metavar="SECONDS",
              help="Read timeout of one broker request; a POST past it has an unknown outcome (resolved by "
                   "sending the same client_order_id again).")
@click.option("--wait-reconcile/--no-wait-reconcile", default=False, show_default=True,
              help="Take no signal until a reconciliation completed (the listener's at start; the fleet sets it).")
@click.option("--resolve-after", type=_SECONDS, default=60.0, show_default=True, metavar="SECONDS",
              help="After a POST with an unknown outcome, wait this long for its order to show before a skip "
                   "or a dead letter.")
@click.option("--alpaca-api-key", envvar="ALPACA_API_KEY", help="Alpaca key id (prefer the environment variable).")
@click.option("--alpaca-secret-key", envvar="ALPACA_SECRET_KEY",
              help="Alpaca secret key (prefer the environment variable).")
@click.option("--alpaca-base-url", envvar="ALPACA_BASE_URL", help="Trading API base URL (default Alpaca paper).")
@click.option("--alpaca-data-url", envvar="ALPACA_DATA_URL",
              help="Market-data base URL (default: Alpaca's, or the base URL for a local paper broker).")
def main(redis_url: str | None, prefix: str | None, symbols: str | None, weights: str | None,
         consumer: str | None, claim_idle: float, max_deliveries: int, order_timeout: float, strategy: str,
         percent: str | None, strategy_options: str, fixed_qty: str | None, fixed_notional: str | None,
         order_type: str, slippage_bps: int,
         max_signal_age: float | None, max_quote_age: float | None, extended_hours: bool | None, block_ms: int,
         stop_grace: float, follow: str, event_late: float, broker_timeout: float, wait_reconcile: bool,
         resolve_after: float,
         alpaca_api_key: str | None,
         alpaca_secret_key: str | None, alpaca_base_url: str | None,
         alpaca_data_url: str | None) -> None:
    configure_logging(secrets=[s for s in (alpaca_api_key, alpaca_secret_key) if s])
    try:
        settings = Settings.from_env(
            redis_url=redis_url or None,
            prefix=prefix or None,
            symbols=parse_symbols(symbols) if symbols else None,
            weights_text=weights or None,
            max_quote_age=max_quote_age,
            alpaca_api_key=alpaca_api_key or None,
            alpaca_secret_key=alpaca_secret_key or None,
            alpaca_base_url=alpaca_base_url or None,
            alpaca_data_url=alpaca_data_url or None,
        )
        config = WorkerConfig(
            consumer=consumer or default_consumer_name(), claim_idle=claim_idle, max_deliveries=max_deliveries,
            order_timeout=order_timeout, strategy=strategy, fixed_qty=_decimal("--fixed-qty", fixed_qty),
            fixed_notional=_decimal("--fixed-notional", fixed_notional), order_type=order_type,
            percent=_decimal("--percent", percent), strategy_options=parse_options(strategy_options),
            breakers=BreakerLimits.from_env(lambda name, default: os.environ.get(name, default)),
            slippage_bps=slippage_bps, max_signal_age=max_signal_age, extended_hours=extended_hours,
            block_ms=block_ms, stop_grace=stop_grace, max_quote_age=settings.max_quote_age,
            follow_events=follow == "events", event_late=event_late, wait_reconcile=wait_reconcile,
            resolve_after=resolve_after, broker_timeout=broker_timeout)
        Strategies(StrategyMap.parse(config.strategy))  # an unknown or broken plug-in: a one-line error now
        settings = settings.with_demo_credentials("to trade on")  # after the flags: their errors come first
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None

    probe = connect(settings.redis_url)
    try:
        probe_redis(probe, settings.redis_url)
    except RedisAuthError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        probe.close()

    log.info("worker settings: %s (redis %s)", settings.public_view(), redact_url(settings.redis_url))
    with stop_on_signals(f"worker {config.consumer}", "finishing the order in hand, then stopping") as stop:
        worker = Worker(settings, config)
        beats = connect(settings.redis_url)
        try:
            with Heartbeat(beats, settings.keys, config.consumer,
                           extra=broker_requests_extra(worker.client)) as heartbeat:
                worker.loop.on_round = heartbeat.progress
                worker.run(stop)
        finally:
            beats.close()


def _strategy_map(text: str) -> str:
    """--strategy checked where the flag is parsed (so `tradebot up` refuses a bad one at once):
    the map's syntax and every name installed."""
    try:
        chosen = StrategyMap.parse(text)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    unknown = sorted(chosen.names - set(available()))
    if unknown:
        raise click.BadParameter(f"unknown strategy {', '.join(map(repr, unknown))}: choose one of "
                                 f"{', '.join(sorted(available()))}")
    return text


def _decimal(flag: str, text: str | None) -> Decimal | None:
    if text is None or text == "":
        return None
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise ConfigError(f"{flag} {text!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise ConfigError(f"{flag} must be > 0, got {text}")
    return value
