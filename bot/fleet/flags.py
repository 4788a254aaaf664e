"""Each program's extra command-line flags: split, checked with the program's own click command, redacted."""
from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping

import click

from bot.fleet.commands import COMMANDS, load_command
from bot.fleet.errors import FleetError
from bot.fleet.programs import PROGRAM_EXTRA_FLAGS
from bot.logs import redact_url

SECRET_FLAGS = ("--alpaca-api-key", "--alpaca-secret-key")


def split_flags(text: str, variable: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise FleetError(f"{variable}={text!r}: {exc}") from None


def check_flags(flags: Mapping[str, list[str]], programs: Iterable[str]) -> None:
    """Parse each started program's extra flags with its own click command now, so a typo is a
    clear error here rather than a program that supervisord restarts until it is FATAL."""
    for program in programs:
        if program not in PROGRAM_EXTRA_FLAGS or not flags.get(program):
            continue
        variable, command_name = PROGRAM_EXTRA_FLAGS[program]
        command = load_command(COMMANDS[command_name])
        if command is None:
            raise FleetError(f"`tradebot {command_name}` is not available in this installation")
        try:
            command.make_context(command_name, list(flags[program]), resilient_parsing=False)
        except click.exceptions.Exit:
            pass  # e.g. --help: nothing wrong with the flags
        except click.ClickException as exc:
            raise FleetError(f"{variable} / --{program.replace('paper-broker', 'paper')}-flags: "
                             f"{exc.format_message()}") from None


def redact_flags(text: str) -> str:
    """Extra flags fit to print: URL passwords and the values of key flags masked."""
    words, hide_next = [], False
    for word in shlex.split(text) if text else []:
        name, eq, _value = word.partition("=")
        if hide_next:
            word, hide_next = "***", False
        elif name in SECRET_FLAGS:
            word, hide_next = (f"{name}=***", False) if eq else (word, True)
        words.append(redact_url(word))
    return shlex.join(words)
