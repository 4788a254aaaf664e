"""The command table the CLI and supervisord share: `tradebot` command name -> its click command."""
from __future__ import annotations

import importlib

import click

# `tradebot` command name -> "module:attribute" of its click command: the programs supervisord runs.
# The cli lists them as lazy subcommands (so `tradebot worker` does not pay for importing the paper
# broker's web stack) and `plan_fleet` parses each program's extra flags with its own command.
COMMANDS: dict[str, str] = {
    "paper-broker": "processes.paper_broker:main",
    "poller": "processes.price_poller:main",
    "router": "processes.signal_router:main",
    "worker": "processes.worker:main",
    "listener": "processes.order_listener:main",
    "web": "processes.web:main",
    "notify": "processes.notifier:main",
    "generate": "processes.signal_generator:main",
}


def load_command(spec: str) -> click.Command | None:
    """The click command named by ``spec`` ("module:attribute", a value of COMMANDS), imported now;
    None when its module is not part of this installation (not built yet)."""
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(module_name.split(".")[0]):
            return None  # not built yet
        raise
    command: click.Command = getattr(module, attr)
    return command
