"""Where a fleet keeps its files: the var folder and what is in it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FleetPaths:
    """Where a fleet keeps its socket, pidfile, logs, Redis data and description."""

    var_dir: Path

    @classmethod
    def of(cls, var_dir: str | os.PathLike[str] | None = None) -> FleetPaths:
        chosen = var_dir or os.environ.get("TRADEBOT_VAR") or "var"
        return cls(Path(chosen).expanduser().resolve())

    @property
    def socket(self) -> Path:
        return self.var_dir / "supervisor.sock"

    @property
    def serverurl(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return self.var_dir / "supervisord.pid"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def supervisord_log(self) -> Path:
        return self.log_dir / "supervisord.log"

    @property
    def redis_dir(self) -> Path:
        return self.var_dir / "redis"

    @property
    def up_lock(self) -> Path:
        """Locked by the `tradebot up` starting or running the fleet (bot.fleet.lock)."""
        return self.var_dir / "up.lock"

    @property
    def fleet_file(self) -> Path:
        """What `tradebot up` started (no secrets): read by `tradebot status` and the other commands."""
        return self.var_dir / "fleet.json"
