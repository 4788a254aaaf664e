"""Validation of Decimal inputs shared by the ledger and the sizing strategies."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any


def number(what: str, value: Any) -> Decimal:
    """``value`` as a finite Decimal, or a ValueError naming ``what``."""
    if value is None:
        raise ValueError(f"{what} is missing")
    try:
        result = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"{what} must be finite, got {value!r}")
    return result


def positive(what: str, value: Any) -> Decimal:
    result = number(what, value)
    if result <= 0:
        raise ValueError(f"{what} must be > 0, got {result}")
    return result


def non_negative(what: str, value: Any) -> Decimal:
    result = number(what, value)
    if result < 0:
        raise ValueError(f"{what} must be >= 0, got {result}")
    return result
