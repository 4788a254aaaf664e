"""The paper broker: a local server speaking Alpaca's REST protocol (trading and market data
under one base URL) over a simulated exchange, with latency and fault injection.

Modules: app (HTTP layer, create_app), exchange (orders, fills, account), prices (the walk),
faults (latency/faults/rate headers), clock (market hours), testing (in-process helpers).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

# The documented demo pair (defined with the settings that fall back on it): accepted when
# ALPACA_API_KEY/ALPACA_SECRET_KEY are not set. Not a secret: it only guards a loopback toy server.
from bot.config import DEMO_API_KEY, DEMO_SECRET_KEY

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclass
class PaperConfig:
    """Everything the broker can be told at start; faults/latency/clock are changeable at run time."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str = field(default=DEMO_API_KEY, repr=False)
    secret_key: str = field(default=DEMO_SECRET_KEY, repr=False)
    always_open: bool = False
    seed: int | None = None  # None: a random seed, reported by /_paper/stats and at start
    cash: Decimal = Decimal("100000")
    symbols: tuple[str, ...] = ()  # created up front (and always listed as assets); prices for any
    # other 1-5 letter symbol still appear on first request
    assets_csv: str | None = None  # a CSV of assets added to the default table (bot/paper/data/assets.csv)
    fill_delay: float = 0.0  # seconds an order stays `new` before its first execution
    latency: Any = 0.0  # seconds: 0.05 | "0.01-0.05" | "orders=0.05,data=0.01" | {"data": 0.01}
    latency_jitter: float = 0.0  # plus uniform(0, jitter) seconds
    fault_500: Any = 0.0  # probability, one value or per group like latency
    fault_429: Any = 0.0
    fault_hang: Any = 0.0
    hang_seconds: float = 30.0
    fault_500_when: str = "random"  # before | after | random: on mutating requests, when the 500 hits
    retry_after: float = 1.0  # Retry-After seconds on injected 429s
    rate_limit: int = 200  # requests per minute per bucket shown in X-RateLimit-*
    enforce_rate_limit: bool = False  # answer 429 once a bucket's minute quota is used up
    step_seconds: float = 1.0  # price walk step
    volatility: float = 0.0002  # stdev of the log-return per step
    now: Callable[[], datetime] | None = field(default=None, repr=False, compare=False)  # tests pin time
    replay: str | None = None  # a recording (JSONL) or prices CSV: recorded prices at a driven market time

    def __post_init__(self) -> None:
        self.cash = Decimal(str(self.cash))
        if isinstance(self.symbols, str):
            self.symbols = tuple(s for s in self.symbols.split(","))
        self.symbols = tuple(s.strip().upper() for s in self.symbols if s and s.strip())
        if not self.cash.is_finite() or self.cash < 0:
            raise ValueError(f"cash must be a number >= 0, got {self.cash}")
        if self.fill_delay < 0:
            raise ValueError("fill_delay must be >= 0")
        if self.rate_limit < 1:
            raise ValueError("rate_limit must be >= 1")

    def fault_settings(self) -> Any:
        from bot.paper.faults import FaultSettings

        return FaultSettings.build(latency=self.latency, latency_jitter=self.latency_jitter,
                                   fault_500=self.fault_500, fault_429=self.fault_429,
                                   fault_hang=self.fault_hang, hang_seconds=self.hang_seconds,
                                   fault_500_when=self.fault_500_when, retry_after=self.retry_after)


def keys_from_env(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(key id, secret) the broker accepts: ALPACA_API_KEY/ALPACA_SECRET_KEY when both are set,
    else the demo pair. Exactly one of them set is a mistake worth stopping for."""
    env = os.environ if env is None else env
    key, secret = env.get("ALPACA_API_KEY", ""), env.get("ALPACA_SECRET_KEY", "")
    if key and secret:
        return key, secret
    if key or secret:
        raise ValueError("set both ALPACA_API_KEY and ALPACA_SECRET_KEY, or neither (demo pair)")
    return DEMO_API_KEY, DEMO_SECRET_KEY


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEMO_API_KEY", "DEMO_SECRET_KEY", "PaperConfig", "keys_from_env"]
