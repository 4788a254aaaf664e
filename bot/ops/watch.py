"""`tradebot status --watch`: the status screen redrawn in place (rich's Live) until Ctrl-C."""
from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.text import Text


def watch_status(render: Callable[[], str], every: float, times: int | None = None) -> None:
    console = Console()
    shown = 0
    try:
        with Live(Text(render()), console=console, refresh_per_second=4, screen=console.is_terminal) as live:
            shown = 1
            while times is None or shown < times:
                time.sleep(every)
                live.update(Text(render()))
                shown += 1
    except KeyboardInterrupt:
        return
