"""Settings from the environment (and flags), one dataclass shared by every process."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from bot.errors import InputError
from bot.keys import DEFAULT_PREFIX, Keys

ALPACA_PAPER_URL = "https://paper-api.alpaca.markets"
ALPACA_DATA_URL = "https://data.alpaca.markets"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# A worker's limit on the age of the quote itself (its own time, not the poll's): during the session
# IEX quotes of a traded symbol are seconds old; a quote a minute old is no price to trade on.
DEFAULT_MAX_QUOTE_AGE = 60.0
# Alpaca's market-data budget depends on the plan: 200 requests/min free, 10,000/min Algo Trader Plus.
DEFAULT_DATA_RATE_LIMIT = 200
# Fields that are bookkeeping, not settings: kept out of public_view().
_INTERNAL_FIELDS = ("data_url_given", "rate_limit_given", "data_rate_limit_given")

log = logging.getLogger(__name__)

# Retention defaults (seconds). Markers outlive the stream retention by as long again, at most
# MARKER_SLACK (trim rounds run every minute; an hour covers a router that was down a while), and
# never a week.
DEFAULT_STREAM_RETENTION = 3600.0
DEFAULT_JOURNAL_RETENTION = 30 * 86400.0
DEFAULT_JOURNAL_MAXLEN = 1_000_000
DEFAULT_DLQ_RETENTION = 30 * 86400.0
DEFAULT_DLQ_MAXLEN = 100_000
MARKER_SLACK = 3600.0
MAX_MARKER_TTL = 7 * 86400


# The local paper broker's documented demo key pair (bot.paper accepts it when no pair is set).
DEMO_API_KEY = "PKDEMOPAPERBROKER000"
DEMO_SECRET_KEY = "demo-paper-broker-secret"


class ConfigError(InputError, ValueError):
    """A setting has a value that cannot be used; the message says which and why."""


def parse_symbols(text: str) -> tuple[str, ...]:
    symbols = tuple(s.strip().upper() for s in text.split(",") if s.strip())
    if not symbols:
        raise ConfigError("TRADEBOT_SYMBOLS is empty: give at least one ticker, e.g. NVDA")
    for symbol in symbols:
        if not symbol.replace(".", "").replace("/", "").isalnum() or len(symbol) > 12:
            raise ConfigError(f"TRADEBOT_SYMBOLS: {symbol!r} is not a ticker")
    return symbols


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def parse_weights(text: str, symbols: tuple[str, ...]) -> dict[str, Decimal]:
    """``NVDA=0.6,AAPL=0.4`` -> weights; empty text -> equal weights over ``symbols``."""
    if not text.strip():
        equal = Decimal(1) / Decimal(len(symbols))
        return {s: equal for s in symbols}
    weights: dict[str, Decimal] = {}
    for part in parse_list(text):
        name, sep, value = part.partition("=")
        symbol = name.strip().upper()
        if not sep or not symbol:
            raise ConfigError(f"TRADEBOT_WEIGHTS: {part!r} is not SYMBOL=WEIGHT")
        if symbol not in symbols:
            raise ConfigError(f"TRADEBOT_WEIGHTS: {symbol} is not in TRADEBOT_SYMBOLS {','.join(symbols)}")
        try:
            weight = Decimal(value.strip())
        except InvalidOperation:
            raise ConfigError(f"TRADEBOT_WEIGHTS: weight of {symbol} {value!r} is not a number") from None
        if not weight.is_finite() or weight < 0:
            raise ConfigError(f"TRADEBOT_WEIGHTS: weight of {symbol} must be >= 0, got {value}")
        weights[symbol] = weight
    total = sum(weights.values(), Decimal(0))
    if total > 1:
        raise ConfigError(f"TRADEBOT_WEIGHTS: weights sum to {total}, which is more than 1")
    return {s: weights.get(s, Decimal(0)) for s in symbols}


@dataclass(frozen=True)
class Settings:
    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)  # may carry a password
    alpaca_api_key: str = field(default="", repr=False)
    alpaca_secret_key: str = field(default="", repr=False)
    alpaca_base_url: str = ALPACA_PAPER_URL
    alpaca_data_url: str = ALPACA_DATA_URL
    data_feed: str = "iex"
    data_feed_fallback: str = ""  # feed used when Alpaca refuses data_feed for the plan ("" = none: report only)
    symbols: tuple[str, ...] = ("NVDA",)
    source_streams: tuple[str, ...] = ("nvda",)
    workers: int = 2
    prefix: str = DEFAULT_PREFIX
    weights_text: str = ""
    max_price_age: float = 5.0
    max_quote_age: float = DEFAULT_MAX_QUOTE_AGE
    max_signal_age: float = 60.0
    max_order_notional: Decimal = Decimal("1000000")
    max_position_value: Decimal = Decimal("1000000")
    rate_limit_per_minute: int = 200  # trading API requests per minute, fleet-wide
    data_rate_limit_per_minute: int = DEFAULT_DATA_RATE_LIMIT  # market-data requests per minute, fleet-wide
    extended_hours: bool = False
    # retention (seconds; 0 = keep): see docs/architecture.md "Retention"
    stream_retention: float = DEFAULT_STREAM_RETENTION  # acked source/signals entries older than this go
    journal_retention: float = DEFAULT_JOURNAL_RETENTION
    journal_maxlen: int = DEFAULT_JOURNAL_MAXLEN
    dlq_retention: float = DEFAULT_DLQ_RETENTION
    dlq_maxlen: int = DEFAULT_DLQ_MAXLEN
    # ALPACA_DATA_URL was given (env or flag); otherwise alpaca_data_url follows the base URL
    data_url_given: bool = field(default=False, repr=False, compare=False)
    # TRADEBOT_RATE_LIMIT / TRADEBOT_DATA_RATE_LIMIT were set: the broker's X-RateLimit-Limit is then
    # not followed (bot.ratelimit); unset, the fleet follows the plan Alpaca announces
    rate_limit_given: bool = field(default=False, repr=False, compare=False)
    data_rate_limit_given: bool = field(default=False, repr=False, compare=False)

    @property
    def keys(self) -> Keys:
        from bot.redisconn import is_cluster_url

        return Keys(self.prefix, hash_tag=is_cluster_url(self.redis_url))

    @property
    def marker_ttl(self) -> int:
        """Seconds a done/routed marker lives: twice the stream retention (at most retention + an
        hour, at most a week): past the time an acknowledged entry can stay in a stream (the
        retention plus the trim rounds' slack), so a group recreated at 0 after a Redis loss finds
        a marker for every entry it delivers again."""
        if self.stream_retention <= 0:
            return MAX_MARKER_TTL
        return max(1, int(min(self.stream_retention + min(self.stream_retention, MARKER_SLACK), MAX_MARKER_TTL)))

    @property
    def weights(self) -> dict[str, Decimal]:
        return parse_weights(self.weights_text, self.symbols)

    @property
    def has_alpaca_credentials(self) -> bool:
        return bool(self.alpaca_api_key and self.alpaca_secret_key)

    def with_overrides(self, **overrides: Any) -> Settings:
        """Flags win over the environment; ``None`` means 'flag not given'.

        URLs lose a trailing slash. A data URL that was not given explicitly follows a new base URL
        (a local paper broker serves market data under its own base URL), so a ``--alpaca-base-url``
        flag gets the same default data URL as ALPACA_BASE_URL in the environment.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        for name in ("alpaca_base_url", "alpaca_data_url"):
            if isinstance(given.get(name), str):
                given[name] = given[name].rstrip("/")
        if given.get("alpaca_data_url"):
            given["data_url_given"] = True
        elif "alpaca_base_url" in given and not self.data_url_given:
            given["alpaca_data_url"] = _default_data_url(given["alpaca_base_url"])
        return replace(self, **given)

    def with_demo_credentials(self, purpose: str = "to use") -> Settings:
        """Settings with a usable key pair: the given one; without one, the local paper broker's
        documented demo pair. Real Alpaca without keys, or a base URL that is not http(s), is a
        ConfigError (``purpose`` completes its message, e.g. "to trade on")."""
        if not self.alpaca_base_url.startswith(("http://", "https://")):
            raise ConfigError(f"ALPACA_BASE_URL={self.alpaca_base_url!r} is not an http(s) URL")
        if self.has_alpaca_credentials:
            return self
        if "alpaca.markets" in self.alpaca_base_url:
            raise ConfigError(f"ALPACA_API_KEY and ALPACA_SECRET_KEY are required {purpose} {self.alpaca_base_url}; "
                              "without them point ALPACA_BASE_URL at the paper broker")
        log.info("no Alpaca key pair set: using the paper broker's demo pair for %s", self.alpaca_base_url)
        return replace(self, alpaca_api_key=DEMO_API_KEY, alpaca_secret_key=DEMO_SECRET_KEY)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        get = env.get
        symbols = parse_symbols(get("TRADEBOT_SYMBOLS", "NVDA"))
        settings = cls(
            redis_url=get("REDIS_URL", DEFAULT_REDIS_URL),
            alpaca_api_key=get("ALPACA_API_KEY", ""),
            alpaca_secret_key=get("ALPACA_SECRET_KEY", ""),
            alpaca_base_url=get("ALPACA_BASE_URL", ALPACA_PAPER_URL).rstrip("/"),
            alpaca_data_url=get("ALPACA_DATA_URL", "").rstrip("/") or _default_data_url(get("ALPACA_BASE_URL", "")),
            data_url_given=bool(get("ALPACA_DATA_URL", "").strip()),
            rate_limit_given=bool(get("TRADEBOT_RATE_LIMIT", "").strip()),
            data_rate_limit_given=bool(get("TRADEBOT_DATA_RATE_LIMIT", "").strip()),
            data_feed=get("ALPACA_DATA_FEED", "iex"),
            data_feed_fallback=get("TRADEBOT_DATA_FEED_FALLBACK", "").strip().lower(),
            symbols=symbols,
            source_streams=parse_list(get("TRADEBOT_SOURCE_STREAMS", "")) or _default_source_streams(get),
            workers=_int(get, "TRADEBOT_WORKERS", 2, minimum=1),
            prefix=get("TRADEBOT_PREFIX", DEFAULT_PREFIX) or DEFAULT_PREFIX,
            weights_text=get("TRADEBOT_WEIGHTS", ""),
            max_price_age=_float(get, "TRADEBOT_MAX_PRICE_AGE", 5.0),
            max_quote_age=_float(get, "TRADEBOT_MAX_QUOTE_AGE", DEFAULT_MAX_QUOTE_AGE),
            max_signal_age=_float(get, "TRADEBOT_MAX_SIGNAL_AGE", 60.0),
            max_order_notional=_decimal(get, "TRADEBOT_MAX_ORDER_NOTIONAL", "1000000"),
            max_position_value=_decimal(get, "TRADEBOT_MAX_POSITION_VALUE", "1000000"),
            rate_limit_per_minute=_int(get, "TRADEBOT_RATE_LIMIT", 200, minimum=1),
            data_rate_limit_per_minute=_int(get, "TRADEBOT_DATA_RATE_LIMIT", DEFAULT_DATA_RATE_LIMIT, minimum=1),
            extended_hours=get("TRADEBOT_EXTENDED_HOURS", "").lower() in ("1", "true", "yes"),
            stream_retention=_seconds(get, "TRADEBOT_STREAM_RETENTION", DEFAULT_STREAM_RETENTION),
            journal_retention=_seconds(get, "TRADEBOT_JOURNAL_RETENTION", DEFAULT_JOURNAL_RETENTION),
            journal_maxlen=_int(get, "TRADEBOT_JOURNAL_MAXLEN", DEFAULT_JOURNAL_MAXLEN, minimum=0),
            dlq_retention=_seconds(get, "TRADEBOT_DLQ_RETENTION", DEFAULT_DLQ_RETENTION),
            dlq_maxlen=_int(get, "TRADEBOT_DLQ_MAXLEN", DEFAULT_DLQ_MAXLEN, minimum=0),
        )
        settings = settings.with_overrides(**overrides)
        _check_redis_url(settings.redis_url)
        _check_cluster_slots(settings)
        # validate early: a bad TRADEBOT_WEIGHTS fails at start, not at the first signal
        parse_weights(settings.weights_text, settings.symbols)
        return settings

    def public_view(self) -> dict[str, Any]:
        """Settings fit for logs and status: no keys, Redis password masked."""
        from bot.logs import redact_url

        hidden = ("alpaca_api_key", "alpaca_secret_key", *_INTERNAL_FIELDS)
        view = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in hidden}
        view["redis_url"] = redact_url(self.redis_url)
        view["alpaca_credentials"] = "set" if self.has_alpaca_credentials else "none"
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in view.items()}


def _check_redis_url(url: str) -> None:
    """A malformed REDIS_URL is a clear one-line error, never a traceback that quotes the password."""
    from redis.connection import parse_url

    from bot.logs import redact_url
    from bot.redisconn import is_cluster_url, is_sentinel_url, parse_cluster_url, parse_sentinel_url

    special = is_sentinel_url(url) or is_cluster_url(url)
    try:
        if is_sentinel_url(url):
            parse_sentinel_url(url)
        elif is_cluster_url(url):
            parse_cluster_url(url)
        else:
            parse_url(url)
    except (ValueError, TypeError) as exc:
        kind = ("redis+sentinel://" if is_sentinel_url(url) else "redis+cluster://" if is_cluster_url(url)
                else "redis:// or rediss://")
        raise ConfigError(f"REDIS_URL {redact_url(url)!r} is not a valid {kind} URL"
                          + (f" ({exc})" if special else "")) from None


def _check_cluster_slots(settings: Settings) -> None:
    """On a cluster, the source streams must live in the slot of the fleet's keys: the router reads
    them in one XREADGROUP and routes each entry and acks it in one script."""
    from redis.crc import key_slot

    from bot.redisconn import is_cluster_url

    if not is_cluster_url(settings.redis_url):
        return
    head = settings.keys.head
    for stream in settings.source_streams:
        if key_slot(stream.encode()) != key_slot(head.encode()):
            raise ConfigError(f"TRADEBOT_SOURCE_STREAMS: {stream!r} is in another Redis Cluster slot than the "
                              f"fleet's keys; name it with their hash tag, e.g. {head}:{stream}")


def _default_source_streams(get: Any) -> tuple[str, ...]:
    """``nvda``; on a Redis Cluster ``{tradebot}:nvda``, in the slot of the fleet's keys."""
    from bot.redisconn import is_cluster_url

    if is_cluster_url(get("REDIS_URL", "")):
        return (Keys(get("TRADEBOT_PREFIX", "") or DEFAULT_PREFIX, hash_tag=True).head + ":nvda",)
    return ("nvda",)


def _default_data_url(base_url: str) -> str:
    # A local paper broker serves market data under its own base URL.
    if base_url and "alpaca.markets" not in base_url:
        return base_url.rstrip("/")
    return ALPACA_DATA_URL


def _int(get: Any, name: str, default: int, minimum: int | None = None) -> int:
    raw = get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _seconds(get: Any, name: str, default: float) -> float:
    """A duration in seconds, >= 0 (0 = keep forever)."""
    value = seconds_setting(get, name, default, allow_zero=True)
    return default if value is None else value


def seconds_setting(get: Any, name: str, default: float | None, *, allow_zero: bool) -> float | None:
    """A finite duration in seconds from the environment (``default`` when unset): > 0, or >= 0 with
    ``allow_zero``; ConfigError in one line otherwise. Shared by the settings, the breakers and the
    poller's price history."""
    raw = str(get(name, "")).strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if value == float("inf") or not (value >= 0 if allow_zero else value > 0):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'} seconds"
                          + (" (0 keeps everything)" if allow_zero else "") + f", got {raw}")
    return value


def _float(get: Any, name: str, default: float) -> float:
    raw = get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise ConfigError(f"{name}={raw} must be > 0")
    return value


def _decimal(get: Any, name: str, default: str) -> Decimal:
    raw = get(name, "") or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise ConfigError(f"{name}={raw} must be > 0")
    return value
