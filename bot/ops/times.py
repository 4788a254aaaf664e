"""Unix times as the fleet writes them (a number, or an ISO-8601 text), read leniently for display."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any


def unix_time(value: Any) -> float | None:
    """``value`` as seconds since the epoch; None when empty, unreadable or not finite."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    return number if math.isfinite(number) else None
