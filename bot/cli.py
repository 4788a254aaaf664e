"""The `tradebot` command: one click group; each process's command lives in processes/."""
from __future__ import annotations

import importlib
import sys

import click

from bot import __version__

# command name -> "module:attribute" of a click command; imported lazily so that
# `tradebot worker` does not pay for importing the paper broker's web stack.
COMMANDS: dict[str, str] = {
    "paper-broker": "processes.paper_broker:main",
    "poller": "processes.price_poller:main",
    "router": "processes.signal_router:main",
    "worker": "processes.worker:main",
    "generate": "processes.signal_generator:main",
}


class LazyGroup(click.Group):
    def __init__(self, *args, lazy: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module_name, attr = self.lazy[name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.startswith(module_name.split(".")[0]):
                    return None  # not built yet
                raise
            return getattr(module, attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(__version__, prog_name="tradebot")
def cli() -> None:
    """tradebot: turns trading signals on Redis streams into Alpaca orders, exactly once."""


def main() -> None:
    cli(prog_name="tradebot")


if __name__ == "__main__":
    sys.exit(main())
