"""var/fleet.json: what `tradebot up` started (no secrets), read by `tradebot status` and the other commands."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from bot.fleet.paths import FleetPaths
from bot.fleet.plan import FleetPlan


def read_fleet_file(var_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    try:
        return json.loads(FleetPaths.of(var_dir).fleet_file.read_text())
    except (OSError, ValueError):
        return None


def write_fleet_file(plan: FleetPlan, pid: int | None) -> None:
    target = plan.paths.fleet_file
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan.description(pid), indent=2) + "\n")
    tmp.replace(target)


def remove_fleet_file(paths: FleetPaths, supervisord_pid: int | None = None) -> None:
    """Remove var/fleet.json; with ``supervisord_pid``, only if it describes that supervisord (the
    fleet this process started), never another fleet's."""
    if supervisord_pid is not None:
        described = read_fleet_file(paths.var_dir)
        if described is None or described.get("supervisord_pid") != supervisord_pid:
            return
    with contextlib.suppress(FileNotFoundError):
        paths.fleet_file.unlink()
