"""`tradebot web`: metrics, health and the status page over HTTP (thin: flags -> bot.web.app)."""
from __future__ import annotations

import ipaddress
import logging
import socket

import click

from bot.config import ConfigError, Settings, parse_symbols
from bot.heartbeat import Heartbeat
from bot.logs import configure_logging, redact_url
from bot.redisconn import connect

log = logging.getLogger(__name__)

DEFAULT_PORT = 8770


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@click.command(help="Serve /metrics (Prometheus), /healthz (200 healthy, 503 with reasons) and the status page.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--token", envvar="TRADEBOT_WEB_TOKEN", default=None,
              help="Required from clients (Bearer or ?token=); mandatory when --host is not a loopback address.")
@click.option("--redis-url", envvar="REDIS_URL", help="redis:// or rediss:// URL (password allowed).")
@click.option("--prefix", envvar="TRADEBOT_PREFIX", help="Prefix of the bot's Redis keys (default tradebot).")
@click.option("--symbols", envvar="TRADEBOT_SYMBOLS", help="Tickers traded, comma-separated (default NVDA).")
@click.option("--var-dir", envvar="TRADEBOT_VAR", default=None, help="The fleet's var folder (for its processes).")
def main(host: str, port: int, token: str | None, redis_url: str | None, prefix: str | None, symbols: str | None,
         var_dir: str | None) -> None:
    configure_logging(secrets=[token] if token else [])
    try:
        settings = Settings.from_env(redis_url=redis_url or None, prefix=prefix or None,
                                     symbols=parse_symbols(symbols) if symbols else None)
        if not _loopback(host) and not token:
            raise ConfigError(f"--host {host} is reachable from other machines: set --token (or TRADEBOT_WEB_TOKEN)")
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    import uvicorn

    from bot.web.app import create_app

    r = connect(settings.redis_url, socket_timeout=5.0)
    app = create_app(settings, r, token=token, var_dir=var_dir)
    log.info("web on http://%s:%d  (metrics /metrics, health /healthz; redis %s)", host, port,
             redact_url(settings.redis_url))
    try:
        with Heartbeat(r, settings.keys, f"web@{socket.gethostname()}"):
            uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                          timeout_graceful_shutdown=2)).run()
    finally:
        r.close()
