"""Redis replies as Python values: text, Decimals, floats.

A stream entry written by a foreign program may hold any bytes, so each reader says what it needs:
``text`` (strict UTF-8: a malformed name or value is an error the caller turns into a DLQ reason),
``text_or_none`` (malformed is "absent"), or ``display`` (malformed bytes shown escaped, for
people: status, the DLQ listing).
"""
from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any


def text(value: Any) -> str:
    """``value`` as str; bytes are decoded as strict UTF-8 (UnicodeDecodeError when they are not)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    return str(value)


def text_or_none(value: Any) -> str | None:
    """``text(value)``, or None when ``value`` is bytes that are not UTF-8."""
    try:
        return text(value)
    except UnicodeDecodeError:
        return None


def display(value: Any) -> str:
    """``value`` as str for people: bytes that are not UTF-8 come out backslash-escaped, never raise."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def display_fields(fields: Mapping[Any, Any]) -> dict[str, str]:
    """A stream entry's fields with ``display`` applied to every name and value."""
    return {display(name): display(value) for name, value in fields.items()}


def decimal_text(value: Decimal | None) -> str:
    """A Decimal as Redis stores it: plain notation, no trailing zeros ("" for None)."""
    if value is None:
        return ""
    plain = format(value, "f")
    return plain.rstrip("0").rstrip(".") if "." in plain else plain


def optional_decimal(what: str, value: Any) -> Decimal | None:
    """A stored Decimal field; None when empty or missing, ValueError naming ``what`` when not a number."""
    if value is None or value == "" or value == b"":
        return None
    try:
        return Decimal(text(value))
    except (InvalidOperation, UnicodeDecodeError):
        raise ValueError(f"{what}={value!r} is not a number") from None


def optional_float(what: str, value: Any) -> float | None:
    """A stored float field (a Unix time, say); None when empty or missing, ValueError when not a number."""
    if value is None or value == "" or value == b"":
        return None
    try:
        return float(text(value))
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{what}={value!r} is not a number") from None
