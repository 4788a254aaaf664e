"""`tradebot notify`: alerts through apprise URLs (thin: flags -> bot.notify.Notifier)."""
from __future__ import annotations

import logging

import click

from bot.config import ConfigError, Settings
from bot.logs import configure_logging, redact_url
from bot.notify import Notifier, NotifyConfig, apprise_sender
from bot.runtime import stop_on_signals
from processes.common import open_redis

log = logging.getLogger(__name__)


@click.command(help="Send alerts (fills, rejections, dead letters, halt/resume, stale processes, lost order "
                    "events, position drift) through the apprise URLs in TRADEBOT_NOTIFY.")
@click.option("--urls", envvar="TRADEBOT_NOTIFY", default="",
              help="apprise URLs, comma separated (tgram://, discord://, slack://, mailto://, json://...).")
@click.option("--redis-url", envvar="REDIS_URL", help="redis:// or rediss:// URL (password allowed).")
@click.option("--prefix", envvar="TRADEBOT_PREFIX", help="Prefix of the bot's Redis keys (default tradebot).")
@click.option("--every", type=click.FloatRange(min=0.1), default=2.0, show_default=True, metavar="SECONDS")
@click.option("--per-minute", type=click.IntRange(min=1), default=20, show_default=True,
              help="At most this many alerts a minute; the rest are counted in one summary.")
@click.option("--var-dir", envvar="TRADEBOT_VAR", default=None,
              help="The fleet's var folder: programs supervisord reports FATAL are alerted too.")
def main(urls: str, redis_url: str | None, prefix: str | None, every: float, per_minute: int,
         var_dir: str | None) -> None:
    targets = [u.strip() for u in urls.split(",") if u.strip()]
    configure_logging(secrets=targets)
    try:
        settings = Settings.from_env(redis_url=redis_url or None, prefix=prefix or None)
        if not targets:
            raise ConfigError("no alert channel: set TRADEBOT_NOTIFY (apprise URLs, comma separated) or --urls")
        send = apprise_sender(targets)
    except (ConfigError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    r = open_redis(settings.redis_url)
    log.info("notifier: %d channel(s) (redis %s)", len(targets), redact_url(settings.redis_url))
    try:
        with stop_on_signals("notifier") as stop:
            config = NotifyConfig(every=every, per_minute=per_minute, secrets=tuple(targets))
            processes = None
            if var_dir:
                from bot.fleet import FleetPaths, process_infos

                paths = FleetPaths.of(var_dir)
                processes = lambda: process_infos(paths) or []  # noqa: E731
            Notifier(r, settings.keys, send, config, processes=processes).run(stop)
    finally:
        r.close()
