"""The fleet's error."""
from __future__ import annotations

from bot.errors import TradebotError


class FleetError(TradebotError):
    """The fleet cannot be started/stopped/queried; the message says why and what to do."""
