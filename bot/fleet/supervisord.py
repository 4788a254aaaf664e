"""supervisord: its command line, its XML-RPC interface on the fleet's unix socket, its pidfile,
and waiting for it and its processes to start."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bot.fleet.errors import FleetError
from bot.fleet.paths import FleetPaths
from bot.fleet.plan import FleetPlan
from bot.fleet.programs import start_order

START_TIMEOUT = 30.0  # seconds for every program to leave STARTING (startsecs is 5)

# supervisord process states (supervisor.states.ProcessStates names)
PENDING_STATES = frozenset({"STARTING", "BACKOFF"})


def supervisord_command(plan: FleetPlan, *, detach: bool) -> list[str]:
    """supervisord of the same venv; -n keeps it in the foreground (Ctrl-C stops the fleet)."""
    command = [sys.executable, "-m", "supervisor.supervisord", "-c", str(plan.config_file)]
    return command if detach else [*command, "-n"]


def rpc(paths: FleetPaths, timeout: float = 5.0) -> xmlrpc.client.ServerProxy:
    """A proxy to supervisord's XML-RPC interface over the fleet's unix socket."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, serverurl=paths.serverurl)
    transport.timeout = timeout
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def supervisord_state(paths: FleetPaths) -> str | None:
    """supervisord's state name (RUNNING, SHUTDOWN, ...) or None when nothing answers on the socket."""
    if not paths.socket.exists():
        return None
    try:
        state = rpc(paths).supervisor.getState()
    except (OSError, xmlrpc.client.Error):
        return None
    return str(state["statename"]) if isinstance(state, dict) else None


def process_infos(paths: FleetPaths) -> list[dict[str, Any]] | None:
    """supervisor.getAllProcessInfo() (name, group, statename, pid, description, ...) in start
    order, or None when the fleet is not running."""
    if not paths.socket.exists():
        return None
    try:
        infos = rpc(paths).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error):
        return None
    if not isinstance(infos, list):
        return None
    return sorted(infos, key=lambda info: start_order(str(info.get("name", ""))))


def read_pid(paths: FleetPaths) -> int | None:
    """supervisord's pid from the pidfile, if that process is alive and is a supervisord."""
    try:
        pid = int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_supervisord(pid) else None


def is_supervisord(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pidfile
    return b"supervisord" in cmdline


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_supervisord(paths: FleetPaths, process: subprocess.Popen | None, timeout: float) -> None:
    """Until supervisord answers RUNNING on the socket; FleetError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisord_state(paths) == "RUNNING":
            return
        if process is not None and process.poll() is not None:
            raise FleetError(f"supervisord exited with {process.returncode}; see {paths.supervisord_log}:\n"
                             + log_tail(paths.supervisord_log))
        time.sleep(0.1)
    raise FleetError(f"supervisord did not answer on {paths.socket} within {timeout:.0f}s; see "
                     f"{paths.supervisord_log}:\n" + log_tail(paths.supervisord_log))


def wait_started(paths: FleetPaths, expected: Iterable[str], timeout: float = START_TIMEOUT,
                 process: subprocess.Popen | None = None) -> list[dict[str, Any]]:
    """Until none of the ``expected`` processes is STARTING/BACKOFF (or timeout): their infos."""
    expected = set(expected)
    deadline = time.monotonic() + timeout
    infos: list[dict[str, Any]] = []
    while True:
        infos = [i for i in (process_infos(paths) or []) if i["name"] in expected]
        settled = len(infos) == len(expected) and not any(i["statename"] in PENDING_STATES for i in infos)
        if settled or time.monotonic() > deadline:
            return infos
        if process is not None and process.poll() is not None:
            return infos
        time.sleep(0.2)
