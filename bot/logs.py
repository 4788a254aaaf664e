"""One logging format for every process, and a filter that keeps secrets out of logs."""
from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"

# the password runs to the LAST "@" before the host: redis-py reads "redis://:p@ss@host" that way
_URL_PASSWORD = re.compile(r"(rediss?(?:\+sentinel|\+cluster)?://[^:/@\s]*:)(\S+)(@)")
# redis-py also takes the password as a query parameter: redis://host:6379/0?password=...
_QUERY_PASSWORD = re.compile(r"([?&](?:sentinel_)?password=)([^&#\s]+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``redis://user:pass@host`` -> ``redis://user:***@host``; ``...?password=pass`` -> ``...?password=***``."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\3", url))


def url_passwords(url: str) -> list[str]:
    """The passwords a URL carries (in its user info and in a ``password=`` query parameter)."""
    return [m.group(2) for pattern in (_URL_PASSWORD, _QUERY_PASSWORD) for m in pattern.finditer(url)]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with URL passwords and every one of ``secrets`` replaced by ***."""
    text = redact_url(text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class SecretFilter(logging.Filter):
    """Replaces known secret values and URL passwords in every record's final message."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_text is None:
            # format the traceback now so the filter can scrub it too
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        return True


def secrets_from_env() -> list[str]:
    found = [os.environ.get("ALPACA_API_KEY", ""), os.environ.get("ALPACA_SECRET_KEY", "")]
    found += url_passwords(os.environ.get("REDIS_URL", ""))
    return [s for s in found if s]


def configure_logging(level: str | None = None, secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once per process: one format, stderr, secrets scrubbed."""
    level = level or os.environ.get("TRADEBOT_LOG_LEVEL", "INFO")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(SecretFilter([*secrets, *secrets_from_env()]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
