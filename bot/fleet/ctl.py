"""`tradebot ctl ARGS...`: supervisorctl of this venv, pointed at the fleet's supervisord.

supervisorctl reads the ``[supervisorctl] serverurl`` of supervisord.conf, which names the socket
in the var folder through ``%(ENV_TRADEBOT_VAR)s``; supervisord.conf's other ``%(ENV_...)s``
variables get placeholders (supervisorctl does not use them), so the same file serves both.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bot.fleet.errors import FleetError
from bot.fleet.fleet_file import read_fleet_file
from bot.fleet.paths import FleetPaths
from bot.fleet.plan import default_config_file
from bot.fleet.supervisord import read_pid, supervisord_state

ENV_REFERENCE = re.compile(r"%\(ENV_(\w+)\)s")
PLACEHOLDER = "0"  # every value supervisord.conf takes is fine as "0" for supervisorctl, which ignores them


def fleet_config_file(paths: FleetPaths) -> Path:
    """The supervisord.conf the running fleet was started with (var/fleet.json), else the default one."""
    described = read_fleet_file(paths.var_dir) or {}
    recorded = described.get("config_file")
    if isinstance(recorded, str) and Path(recorded).is_file():
        return Path(recorded)
    return default_config_file()


def ctl_env(paths: FleetPaths, config_file: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """supervisorctl's environment: TRADEBOT_VAR of the fleet, a placeholder for every other
    %(ENV_...)s of the config file (supervisorctl refuses a file it cannot expand)."""
    env = dict(os.environ if base is None else base)
    try:
        text = config_file.read_text()
    except OSError as exc:
        raise FleetError(f"supervisord config {config_file} cannot be read: {exc.strerror}") from None
    for name in ENV_REFERENCE.findall(text):
        env[name] = PLACEHOLDER
    env["TRADEBOT_VAR"] = str(paths.var_dir)
    return env


def ctl_command(config_file: Path, args: Sequence[str]) -> list[str]:
    """supervisorctl of this interpreter's environment (the venv tradebot runs from)."""
    return [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(config_file), *args]


def run_ctl(paths: FleetPaths, args: Sequence[str]) -> int:
    """Run supervisorctl ARGS against the fleet in ``paths``: its exit code (128+N when killed by
    signal N). FleetError when no fleet is running there."""
    if read_pid(paths) is None and supervisord_state(paths) is None:
        raise FleetError(f"no fleet is running in {paths.var_dir}; start one with `make run` or `tradebot up`")
    config_file = fleet_config_file(paths)
    process = subprocess.Popen(ctl_command(config_file, args), env=ctl_env(paths, config_file))
    # Ctrl-C reaches supervisorctl too (same process group): it decides (`tail -f` stops, the
    # shell ignores it), and this process only waits for it and passes its exit code on.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - code if code < 0 else code
