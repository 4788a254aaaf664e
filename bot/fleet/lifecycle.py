"""The fleet's life: `tradebot up` (foreground or detached) and `tradebot down`."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import xmlrpc.client
from collections.abc import Callable

from bot.fleet.display import summary_lines, var_flag
from bot.fleet.errors import FleetError
from bot.fleet.fleet_file import remove_fleet_file, write_fleet_file
from bot.fleet.lock import UpLock
from bot.fleet.paths import FleetPaths
from bot.fleet.plan import FleetPlan
from bot.fleet.preflight import preflight, unhealthy
from bot.fleet.supervisord import (
    is_supervisord,
    read_pid,
    rpc,
    supervisord_command,
    supervisord_state,
    wait_started,
    wait_supervisord,
)

log = logging.getLogger(__name__)

STOP_TIMEOUT = 90.0  # workers may take stopwaitsecs (30 s) to finish the order in hand


def up(plan: FleetPlan, *, detach: bool, echo: Callable[[str], None] = print) -> int:
    """Start supervisord with the plan's environment. Foreground: returns when the fleet stopped
    (Ctrl-C / SIGTERM stop it gracefully). Detach: returns once every program has started.

    One `up` at a time per var folder: it holds var/up.lock while it starts the fleet (foreground:
    while it runs), so a second `up` at the same moment is refused before it touches anything."""
    paths = plan.paths
    stop_hint = f"tradebot down{var_flag(paths)}"
    paths.var_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = UpLock(paths, stop_hint=stop_hint)
    lock.acquire()  # FleetError "already running" while another `up` starts or runs a fleet here
    try:
        running = read_pid(paths)
        if running or supervisord_state(paths) is not None:
            raise FleetError(f"a fleet is already running in {paths.var_dir} (supervisord pid {running or '?'}); "
                             f"stop it with `{stop_hint}`")
        preflight(plan)  # an external Redis or a real broker that refuses: one line, nothing started
        _prepare_dirs(paths)
        if paths.socket.exists():
            paths.socket.unlink()  # stale: nothing answered on it, and no other `up` holds the lock
        command = supervisord_command(plan, detach=detach)
        log.debug("starting %s", command)
        if detach:
            return _up_detached(plan, command, echo)
        return _up_foreground(plan, command, echo)
    finally:
        lock.release()


def _up_detached(plan: FleetPlan, command: list[str], echo: Callable[[str], None]) -> int:
    paths = plan.paths
    launcher = subprocess.run(command, env=plan.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=30)
    if launcher.returncode != 0:
        raise FleetError(f"supervisord failed to start ({launcher.returncode}): "
                         f"{(launcher.stderr or launcher.stdout).strip()}")
    wait_supervisord(paths, None, timeout=15.0)
    pid = read_pid(paths)
    write_fleet_file(plan, pid)
    infos = wait_started(paths, plan.process_names())
    problems = unhealthy(plan, infos)
    for line in summary_lines(plan, pid, infos, detach=True, problems=problems):
        echo(line)
    return 1 if problems else 0


def _up_foreground(plan: FleetPlan, command: list[str], echo: Callable[[str], None]) -> int:
    paths = plan.paths
    # supervisord gets its own session: only what this process forwards reaches it, so a closed
    # terminal (SIGHUP to the whole group) stops the fleet instead of making supervisord reload it.
    process = subprocess.Popen(command, env=plan.env, stdin=subprocess.DEVNULL, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        # A repeated signal is harmless: supervisord is already shutting down.
        if process.poll() is None:
            process.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    wrote_fleet_file = False
    try:
        wait_supervisord(paths, process, timeout=15.0)
        write_fleet_file(plan, process.pid)
        wrote_fleet_file = True
        infos = wait_started(paths, plan.process_names(), process=process)
        if process.poll() is None:
            problems = unhealthy(plan, infos)
            for line in summary_lines(plan, process.pid, infos, detach=False, problems=problems):
                echo(line)
        code = process.wait()
    except BaseException:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if wrote_fleet_file:
            remove_fleet_file(paths, supervisord_pid=process.pid)  # ours only, never another fleet's
    echo(f"tradebot fleet stopped (supervisord exit code {code})")
    return code


def down(paths: FleetPaths, *, timeout: float = STOP_TIMEOUT, echo: Callable[[str], None] = print) -> int:
    """Stop a fleet started with --detach: supervisor.shutdown over the socket (SIGTERM to the
    pidfile's pid if the socket does not answer), then wait until supervisord has exited."""
    pid = read_pid(paths)
    answered = False
    if supervisord_state(paths) is not None:
        try:
            rpc(paths).supervisor.shutdown()
            answered = True
        except (OSError, xmlrpc.client.Error) as exc:
            log.debug("shutdown over the socket failed: %s", exc)
    if not answered:
        if pid is None:
            remove_fleet_file(paths)
            raise FleetError(f"no fleet is running in {paths.var_dir}")
        os.kill(pid, signal.SIGTERM)
    echo(f"stopping the fleet in {paths.var_dir} (supervisord pid {pid or '?'}) ...")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (pid is None or not is_supervisord(pid)) and supervisord_state(paths) is None:
            remove_fleet_file(paths)
            echo("tradebot fleet stopped")
            return 0
        time.sleep(0.2)
    raise FleetError(f"supervisord (pid {pid}) is still running after {timeout:.0f}s; see {paths.supervisord_log}")


def _prepare_dirs(paths: FleetPaths) -> None:
    for folder in (paths.var_dir, paths.log_dir, paths.redis_dir):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
