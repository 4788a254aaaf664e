"""tradebot: a signal-driven Alpaca trading bot built as a fleet of processes on Redis Streams."""

import sys

__version__ = "0.1.0"

# `import httpx` also imports httpx's command-line client (httpx._main) whenever click and rich are
# installed, and rich is (tradebot status --watch): rich and pygments, ~4 MB of RSS in every process
# of the fleet, never used. A module marked absent is skipped by httpx (its `main` then only says the
# CLI is not installed); rich itself stays importable.
if "httpx._main" not in sys.modules:
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
