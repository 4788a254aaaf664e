"""The errors of the operator commands: both are ``bot.errors.TradebotError``s, so the command line
maps them with every other error of the project."""
from __future__ import annotations

from bot.errors import InputError, TradebotError


class OpsError(TradebotError):
    """An operator command cannot do its job (exit code 1)."""


class OpsInputError(OpsError, InputError):
    """The operator's input is wrong (exit code 2, from InputError)."""
