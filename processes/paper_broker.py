"""`tradebot paper-broker`: the local Alpaca-compatible paper broker (thin entry point)."""
from __future__ import annotations

import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

import click

from bot.logs import configure_logging
from bot.paper import DEFAULT_HOST, DEFAULT_PORT, PaperConfig, keys_from_env
from bot.paper.faults import SettingError, parse_latency, parse_probabilities


def _cash(ctx: click.Context, param: click.Parameter, value: str) -> Decimal:
    try:
        cash = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not a number") from None
    if not cash.is_finite() or cash < 0:
        raise click.BadParameter("must be a number >= 0")
    return cash


def _checked(parser: Callable[[str], object]) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """A click callback that checks an option's value with ``parser`` (the paper broker's own)."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value:
            try:
                parser(value)
            except SettingError as error:
                raise click.BadParameter(str(error)) from None
        return value
    return callback


@click.command(name="paper-broker")
@click.option("--host", default=DEFAULT_HOST, show_default=True, envvar="PAPER_BROKER_HOST",
              help="Address to bind; keep the loopback default unless you mean to expose it.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535),
              envvar="PAPER_BROKER_PORT")
@click.option("--always-open", is_flag=True, envvar="PAPER_BROKER_ALWAYS_OPEN",
              help="Market always open (default: the NYSE regular session, with its holidays and early closes).")
@click.option("--seed", type=int, default=None, envvar="PAPER_BROKER_SEED",
              help="Seed of the price walk, ids and fault draws (default: random, printed at start).")
@click.option("--cash", default="100000", show_default=True, callback=_cash, envvar="PAPER_BROKER_CASH",
              help="Starting cash of the paper account.")
@click.option("--symbols", default="", envvar="TRADEBOT_SYMBOLS",
              help="Comma-separated symbols listed (and priced) besides the default asset table.")
@click.option("--assets-csv", type=click.Path(exists=True, dir_okay=False), default=None,
              envvar="PAPER_BROKER_ASSETS_CSV",
              help="CSV of extra assets (symbol,name,exchange,class,tradable,shortable,marginable,"
                   "easy_to_borrow,fractionable) added to the default table of common US symbols.")
@click.option("--fill-delay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              envvar="PAPER_BROKER_FILL_DELAY", help="Seconds an order stays `new` before it can fill.")
@click.option("--latency", default="0", show_default=True, envvar="PAPER_BROKER_LATENCY",
              callback=_checked(parse_latency),
              help="Added seconds: 0.05 | 0.01-0.05 (uniform) | per group orders=0.05,trading=..,data=0.01,all=..")
@click.option("--latency-jitter", type=click.FloatRange(min=0), default=0.0, show_default=True,
              envvar="PAPER_BROKER_LATENCY_JITTER", help="Plus uniform(0, JITTER) seconds per request.")
@click.option("--fault-500", default="0", show_default=True, envvar="PAPER_BROKER_FAULT_500",
              callback=_checked(lambda v: parse_probabilities(v, "fault-500")),
              help="Probability of a 500 (one value or per group like --latency).")
@click.option("--fault-500-when", type=click.Choice(["before", "after", "random"]), default="random",
              show_default=True, envvar="PAPER_BROKER_FAULT_500_WHEN",
              help="On POST/DELETE, does the 500 hit before or after the request took effect (random: 50/50, seeded).")
@click.option("--fault-429", default="0", show_default=True, envvar="PAPER_BROKER_FAULT_429",
              callback=_checked(lambda v: parse_probabilities(v, "fault-429")),
              help="Probability of a 429 with Retry-After.")
@click.option("--fault-hang", default="0", show_default=True, envvar="PAPER_BROKER_FAULT_HANG",
              callback=_checked(lambda v: parse_probabilities(v, "fault-hang")),
              help="Probability that a request answers only after --hang-seconds (and still takes effect).")
@click.option("--hang-seconds", type=click.FloatRange(min=0), default=30.0, show_default=True,
              envvar="PAPER_BROKER_HANG_SECONDS")
@click.option("--retry-after", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Retry-After seconds on injected 429s.")
@click.option("--rate-limit", type=click.IntRange(min=1), default=200, show_default=True,
              envvar="PAPER_BROKER_RATE_LIMIT", help="Requests per minute per bucket (trading, data) in X-RateLimit-*.")
@click.option("--enforce-rate-limit", is_flag=True, envvar="PAPER_BROKER_ENFORCE_RATE_LIMIT",
              help="Answer 429 once a bucket's minute quota is used (default: headers only).")
@click.option("--replay", "replay", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve a recording's prices (JSONL or prices CSV) at the market time POST /_paper/replay sets "
                   "(tradebot replay drives it).")
@click.option("--log-level", default=None, envvar="TRADEBOT_LOG_LEVEL", help="DEBUG, INFO, WARNING...")
def main(host: str, port: int, always_open: bool, seed: int | None, cash: Decimal, symbols: str,
         assets_csv: str | None, fill_delay: float, latency: str, latency_jitter: float, fault_500: str,
         fault_500_when: str,
         fault_429: str, fault_hang: str, hang_seconds: float, retry_after: float, rate_limit: int,
         enforce_rate_limit: bool, replay: str | None, log_level: str | None) -> None:
    """Local Alpaca-compatible paper broker: trading + market data under one base URL.

    Accepts the key pair in ALPACA_API_KEY/ALPACA_SECRET_KEY when set, else the demo pair
    (bot.paper.DEMO_API_KEY / DEMO_SECRET_KEY). Admin endpoints (loopback only, no auth):
    GET /_paper/stats, POST /_paper/reset, POST /_paper/price, GET|POST /_paper/faults,
    GET|POST /_paper/latency, GET|POST /_paper/clock, GET|POST /_paper/fill_delay, GET|POST /_paper/replay.
    """
    configure_logging(log_level)
    try:
        api_key, secret_key = keys_from_env()
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    from bot.paper.app import load_replay, serve

    if replay:
        try:
            load_replay(replay)  # a bad recording is a one-line error here, not a traceback from the server
        except ValueError as error:
            raise click.UsageError(f"--replay: {error}") from None

    config = PaperConfig(
        host=host, port=port, api_key=api_key, secret_key=secret_key, always_open=always_open, seed=seed,
        cash=cash, symbols=tuple(symbols.split(",")), assets_csv=assets_csv, fill_delay=fill_delay, latency=latency,
        latency_jitter=latency_jitter, fault_500=fault_500, fault_429=fault_429, fault_hang=fault_hang,
        hang_seconds=hang_seconds, fault_500_when=fault_500_when, retry_after=retry_after,
        rate_limit=rate_limit, enforce_rate_limit=enforce_rate_limit, replay=replay)
    serve(config, echo=lambda text: click.echo(text, file=sys.stdout))


if __name__ == "__main__":
    main()
