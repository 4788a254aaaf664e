"""The root of the project's own errors.

Every error the project raises on purpose derives from ``TradebotError``, so the command line maps
them in one place: ``InputError`` (bad input from the operator or the configuration) exits 2,
any other ``TradebotError`` exits 1, each with its message on one line.
"""
from __future__ import annotations


class TradebotError(Exception):
    """An error of the project's own, with a message fit for one line of output."""

    exit_code = 1


class InputError(TradebotError):
    """Bad input (a flag, an environment variable, an argument): fix it and run again."""

    exit_code = 2
