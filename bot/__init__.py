"""tradebot: a signal-driven Alpaca trading bot built as a fleet of processes on Redis Streams."""

__version__ = "0.1.0"
