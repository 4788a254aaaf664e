"""The fleet under supervisord: `tradebot up`, `tradebot down`, `tradebot embedded-redis`.

supervisord.conf (repo root) has no conditionals, so `plan_fleet` computes the environment it
needs: which programs autostart (embedded Redis only without REDIS_URL, paper broker only
without Alpaca credentials, the generator only in demo mode), the ports, the var folder, and the
REDIS_URL/ALPACA_* every program inherits from supervisord.  Control goes through supervisord's
XML-RPC interface on the unix socket in the var folder (no TCP listener).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from bot.config import ALPACA_PAPER_URL, ConfigError, Settings
from bot.embedded_redis import RedisServerNotFound, find_redis_server, free_port, server_args
from bot.errors import TradebotError
from bot.logs import redact_url

log = logging.getLogger(__name__)

# `tradebot` command name -> "module:attribute" of its click command: the programs supervisord runs.
# The cli lists them as lazy subcommands (so `tradebot worker` does not pay for importing the paper
# broker's web stack) and `plan_fleet` parses each program's extra flags with its own command.
COMMANDS: dict[str, str] = {
    "paper-broker": "processes.paper_broker:main",
    "poller": "processes.price_poller:main",
    "router": "processes.signal_router:main",
    "worker": "processes.worker:main",
    "generate": "processes.signal_generator:main",
}

GROUP = "tradebot"  # the bot's processes; redis and paper-broker are groups of their own (see supervisord.conf)
# program name -> the env flag that switches its autostart on
PROGRAM_FLAGS: dict[str, str] = {
    "redis": "TRADEBOT_START_REDIS",
    "paper-broker": "TRADEBOT_START_PAPER_BROKER",
    "poller": "TRADEBOT_START_POLLER",
    "router": "TRADEBOT_START_ROUTER",
    "worker": "TRADEBOT_START_WORKERS",
    "generator": "TRADEBOT_START_GENERATOR",
}
ONLY_CHOICES = ("worker", "router", "poller", "generator")
# program name -> (the env variable with its extra command-line flags, its `tradebot` command)
PROGRAM_EXTRA_FLAGS: dict[str, tuple[str, str]] = {
    "paper-broker": ("TRADEBOT_PAPER_FLAGS", "paper-broker"),
    "poller": ("TRADEBOT_POLLER_FLAGS", "poller"),
    "router": ("TRADEBOT_ROUTER_FLAGS", "router"),
    "worker": ("TRADEBOT_WORKER_FLAGS", "worker"),
    "generator": ("TRADEBOT_GENERATOR_FLAGS", "generate"),
}
PREFERRED_REDIS_PORTS = range(6390, 6400)
DEMO_PROBABILITY = 0.05  # a signal every ~20 s per ticker, so the demo shows something soon
START_TIMEOUT = 30.0  # seconds for every program to leave STARTING (startsecs is 5)
STOP_TIMEOUT = 90.0  # workers may take stopwaitsecs (30 s) to finish the order in hand
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to ~108 bytes

# supervisord process states (supervisor.states.ProcessStates names)
PENDING_STATES = frozenset({"STARTING", "BACKOFF"})


class FleetError(TradebotError):
    """The fleet cannot be started/stopped/queried; the message says why and what to do."""


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
    def fleet_file(self) -> Path:
        """What `tradebot up` started (no secrets): read by `tradebot status` and the other commands."""
        return self.var_dir / "fleet.json"


@dataclass
class FleetPlan:
    """Everything `tradebot up` decided, and the environment supervisord starts with."""

    paths: FleetPaths
    config_file: Path
    env: dict[str, str] = field(repr=False)
    settings: Settings
    embedded_redis: bool
    redis_port: int | None
    paper_broker: bool
    paper_port: int | None
    workers: int
    programs: tuple[str, ...]  # the programs that autostart
    demo: bool

    @property
    def redis_url_shown(self) -> str:
        return redact_url(self.settings.redis_url)

    @property
    def broker_url(self) -> str:
        return self.settings.alpaca_base_url

    def process_names(self) -> list[str]:
        """supervisord names of the processes that autostart, in start order."""
        names: list[str] = []
        for program in PROGRAM_FLAGS:
            if program not in self.programs:
                continue
            if program == "worker":
                names += [f"worker-{n:02d}" for n in range(self.workers)]
            else:
                names.append(program)
        return names

    def description(self, supervisord_pid: int | None = None) -> dict[str, Any]:
        """The fleet file's content: fit to write to disk (passwords redacted, no keys)."""
        return {
            "var_dir": str(self.paths.var_dir),
            "supervisord_pid": supervisord_pid,
            "started_at": time.time(),
            # the embedded Redis has no password, so its URL is safe to store and lets
            # `tradebot status` find it; an external URL is stored redacted, for display only
            "redis_url": self.settings.redis_url if self.embedded_redis else None,
            "redis_url_shown": self.redis_url_shown,
            "embedded_redis": self.embedded_redis,
            "broker_url": self.broker_url,
            "paper_broker": self.paper_broker,
            "workers": self.workers,
            "programs": list(self.programs),
            "processes": self.process_names(),
            "demo": self.demo,
            "symbols": list(self.settings.symbols),
            "source_streams": list(self.settings.source_streams),
            "prefix": self.settings.prefix,
        }


def default_config_file() -> Path:
    """TRADEBOT_SUPERVISOR_CONF, else supervisord.conf at the repo root (next to bot/)."""
    explicit = os.environ.get("TRADEBOT_SUPERVISOR_CONF")
    return Path(explicit) if explicit else Path(__file__).resolve().parent.parent / "supervisord.conf"


def _truthy(flag: bool) -> str:
    return "true" if flag else "false"


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_redis_port(preferred: Iterable[int] = PREFERRED_REDIS_PORTS) -> int:
    """The first free port of 6390..6399 (a stable REDIS_URL across runs), else any free port."""
    for port in preferred:
        if port_is_free(port):
            return port
    return free_port()


def plan_fleet(
    *,
    var_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    demo: bool = False,
    symbols: str | None = None,
    redis_url: str | None = None,
    only: Iterable[str] = (),
    redis_port: int | None = None,
    paper_port: int | None = None,
    probability: float | None = None,
    extra_flags: Mapping[str, str | None] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> FleetPlan:
    """Decide what to start and build supervisord's environment. Raises FleetError/ConfigError.

    ``extra_flags``: program name -> extra command-line flags (else TRADEBOT_<X>_FLAGS from env).
    """
    child_env = dict(os.environ if env is None else env)
    for program, extra in (extra_flags or {}).items():
        if program not in PROGRAM_EXTRA_FLAGS:
            raise FleetError(f"no program {program!r} takes extra flags")
        if extra is not None:
            child_env[PROGRAM_EXTRA_FLAGS[program][0]] = extra
    only = tuple(dict.fromkeys(only))
    unknown = [name for name in only if name not in ONLY_CHOICES]
    if unknown:
        raise FleetError(f"--only {unknown[0]}: choose from {', '.join(ONLY_CHOICES)}")
    if redis_url:
        child_env["REDIS_URL"] = redis_url
    if symbols:
        child_env["TRADEBOT_SYMBOLS"] = symbols
    if workers is not None:
        if workers < 1:
            raise FleetError(f"--workers {workers}: at least 1 worker is needed")
        child_env["TRADEBOT_WORKERS"] = str(workers)
    if probability is not None and not 0 < probability <= 1:
        raise FleetError(f"--probability {probability}: must be in (0, 1]")

    key, secret = child_env.get("ALPACA_API_KEY", ""), child_env.get("ALPACA_SECRET_KEY", "")
    if bool(key) != bool(secret):
        raise FleetError("set both ALPACA_API_KEY and ALPACA_SECRET_KEY, or neither (then the paper broker runs)")

    paths = FleetPaths.of(var_dir)
    if len(str(paths.socket)) > MAX_SOCKET_PATH:
        raise FleetError(f"--var-dir {paths.var_dir} is too deep for a unix socket path; choose a shorter one")
    config = Path(config_file) if config_file else default_config_file()
    if not config.is_file():
        raise FleetError(f"supervisord config {config} not found (set TRADEBOT_SUPERVISOR_CONF)")

    embedded = not child_env.get("REDIS_URL")
    if only:
        if embedded:
            raise FleetError("--only needs the shared Redis of the fleet: set REDIS_URL (or --redis-url)")
        programs = only
        paper = False
        needs_broker = bool({"worker", "poller"} & set(only))  # the router and generator only use Redis
        if needs_broker and not key:
            base = child_env.get("ALPACA_BASE_URL", "")
            if not base or "alpaca.markets" in base:
                raise FleetError("--only without ALPACA_API_KEY/ALPACA_SECRET_KEY: set them, or set ALPACA_BASE_URL "
                                 "to the fleet's paper broker (the demo key pair is then used)")
            _use_demo_keys(child_env)
    else:
        paper = not key
        programs = tuple(p for p in PROGRAM_FLAGS
                         if (p != "redis" or embedded) and (p != "paper-broker" or paper)
                         and (p != "generator" or demo))

    chosen_redis_port = None
    if embedded:
        try:
            find_redis_server()
        except RedisServerNotFound as exc:
            raise FleetError(str(exc)) from None
        chosen_redis_port = redis_port or choose_redis_port()
        child_env["REDIS_URL"] = f"redis://127.0.0.1:{chosen_redis_port}/0"
    chosen_paper_port = None
    if paper:
        chosen_paper_port = paper_port or free_port()
        broker = f"http://127.0.0.1:{chosen_paper_port}"
        child_env["ALPACA_BASE_URL"] = broker
        child_env["ALPACA_DATA_URL"] = broker
        _use_demo_keys(child_env)
    elif not child_env.get("ALPACA_BASE_URL"):
        child_env["ALPACA_BASE_URL"] = ALPACA_PAPER_URL

    settings = Settings.from_env(child_env)  # ConfigError for a bad TRADEBOT_* value, before anything starts
    flags = {program: _split_flags(child_env.get(variable, ""), variable)
             for program, (variable, _command) in PROGRAM_EXTRA_FLAGS.items()}
    if demo:
        flags["paper-broker"] = ["--always-open", *flags["paper-broker"]]
        flags["generator"] = ["--always-open", *flags["generator"]]
        if probability is None and not any(f == "--probability" or f.startswith("--probability=")
                                            for f in flags["generator"]):
            probability = DEMO_PROBABILITY
    if probability is not None:
        flags["generator"] += ["--probability", repr(probability)]
    for program, (variable, _command) in PROGRAM_EXTRA_FLAGS.items():
        child_env[variable] = shlex.join(flags[program])
    child_env.update({
        "TRADEBOT_VAR": str(paths.var_dir),
        "TRADEBOT_PYTHON": sys.executable,
        "TRADEBOT_WORKERS": str(settings.workers),
        "TRADEBOT_REDIS_PORT": str(chosen_redis_port or 0),
        "TRADEBOT_PAPER_PORT": str(chosen_paper_port or 0),
        "PYTHONUNBUFFERED": "1",
    })
    for program, flag in PROGRAM_FLAGS.items():
        child_env[flag] = _truthy(program in programs)
    _check_flags(flags, programs)
    return FleetPlan(paths=paths, config_file=config, env=child_env, settings=settings,
                     embedded_redis=embedded, redis_port=chosen_redis_port, paper_broker=paper,
                     paper_port=chosen_paper_port, workers=settings.workers, programs=programs, demo=demo)


def _split_flags(text: str, variable: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise FleetError(f"{variable}={text!r}: {exc}") from None


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


def _check_flags(flags: Mapping[str, list[str]], programs: Iterable[str]) -> None:
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


def _use_demo_keys(env: dict[str, str]) -> None:
    from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY

    env["ALPACA_API_KEY"] = DEMO_API_KEY
    env["ALPACA_SECRET_KEY"] = DEMO_SECRET_KEY


def supervisord_command(plan: FleetPlan, *, detach: bool) -> list[str]:
    """supervisord of the same venv; -n keeps it in the foreground (Ctrl-C stops the fleet)."""
    command = [sys.executable, "-m", "supervisor.supervisord", "-c", str(plan.config_file)]
    return command if detach else [*command, "-n"]


_SECRET_FLAGS = ("--alpaca-api-key", "--alpaca-secret-key")


def _redact_flags(text: str) -> str:
    """Extra flags fit to print: URL passwords and the values of key flags masked."""
    words, hide_next = [], False
    for word in shlex.split(text) if text else []:
        name, eq, _value = word.partition("=")
        if hide_next:
            word, hide_next = "***", False
        elif name in _SECRET_FLAGS:
            word, hide_next = (f"{name}=***", False) if eq else (word, True)
        words.append(redact_url(word))
    return shlex.join(words)


def public_env(plan: FleetPlan) -> dict[str, str]:
    """The variables `tradebot up` sets for supervisord, fit to print (no keys, no passwords)."""
    shown = {k: _redact_flags(v) if k.endswith("_FLAGS") else v
             for k, v in plan.env.items() if k.startswith("TRADEBOT_") or k in ("PYTHONUNBUFFERED",)}
    shown["REDIS_URL"] = redact_url(plan.env.get("REDIS_URL", ""))
    for name in ("ALPACA_BASE_URL", "ALPACA_DATA_URL"):
        if plan.env.get(name):
            shown[name] = plan.env[name]
    for name in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY"):
        if plan.env.get(name):
            shown[name] = "(demo pair)" if plan.paper_broker or plan.env[name].startswith("PKDEMO") else "(set)"
    return dict(sorted(shown.items()))


# --------------------------------------------------------------------------- supervisord control

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


def start_order(name: str) -> tuple[int, str]:
    """Sort key of a process name: the fleet's start order (redis ... worker-NN ... generator)."""
    program = "worker" if name.startswith("worker-") else name
    order = list(PROGRAM_FLAGS)
    return (order.index(program) if program in order else len(order), name)


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
    return pid if _is_supervisord(pid) else None


def _is_supervisord(pid: int) -> bool:
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


def read_fleet_file(var_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    try:
        return json.loads(FleetPaths.of(var_dir).fleet_file.read_text())
    except (OSError, ValueError):
        return None


def _write_fleet_file(plan: FleetPlan, pid: int | None) -> None:
    target = plan.paths.fleet_file
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan.description(pid), indent=2) + "\n")
    tmp.replace(target)


def _remove_fleet_file(paths: FleetPaths) -> None:
    with contextlib.suppress(FileNotFoundError):
        paths.fleet_file.unlink()


def _prepare_dirs(paths: FleetPaths) -> None:
    for folder in (paths.var_dir, paths.log_dir, paths.redis_dir):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_supervisord(paths: FleetPaths, process: subprocess.Popen | None, timeout: float) -> None:
    """Until supervisord answers RUNNING on the socket; FleetError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if supervisord_state(paths) == "RUNNING":
            return
        if process is not None and process.poll() is not None:
            raise FleetError(f"supervisord exited with {process.returncode}; see {paths.supervisord_log}:\n"
                             + _log_tail(paths.supervisord_log))
        time.sleep(0.1)
    raise FleetError(f"supervisord did not answer on {paths.socket} within {timeout:.0f}s; see "
                     f"{paths.supervisord_log}:\n" + _log_tail(paths.supervisord_log))


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


def summary_lines(plan: FleetPlan, pid: int | None, infos: list[dict[str, Any]], *, detach: bool) -> list[str]:
    """What `tradebot up` prints once the fleet is up: where everything is, no secrets."""
    redis_note = (f"embedded redis-server, data in {plan.paths.redis_dir}" if plan.embedded_redis
                  else "external")
    if plan.paper_broker:
        broker_note = "paper broker, demo key pair" + (", market always open" if plan.demo else "")
    else:
        broker_note = "Alpaca, keys from ALPACA_API_KEY/ALPACA_SECRET_KEY"
    states = ", ".join(f"{i['name']} {i['statename']}" for i in infos) or "(none)"
    stop = "tradebot down" + _var_flag(plan.paths) if detach else "Ctrl-C (stops every process gracefully)"
    lines = [
        f"tradebot fleet is up (supervisord pid {pid if pid else '?'})",
        f"  redis      {plan.redis_url_shown}  ({redis_note})",
        f"  broker     {plan.broker_url}  ({broker_note})",
        f"  workers    {plan.workers if 'worker' in plan.programs else 0}",
        f"  symbols    {','.join(plan.settings.symbols)}  (source streams: {','.join(plan.settings.source_streams)})",
        f"  processes  {states}",
        f"  logs       {plan.paths.log_dir}",
        f"  status     tradebot status{_var_flag(plan.paths)}"
        f"   (or: supervisorctl -s {plan.paths.serverurl} status)",
        f"  stop       {stop}",
    ]
    if plan.demo:
        lines.append("  demo       generator on: random signals now; inject your own with `tradebot signal NVDA b`")
    not_running = [i["name"] for i in infos if i["statename"] != "RUNNING"]
    if not_running:
        lines.append(f"  WARNING    not running: {', '.join(not_running)}; see their logs in {plan.paths.log_dir}")
    return lines


def _var_flag(paths: FleetPaths) -> str:
    default = FleetPaths.of(None)
    return "" if paths == default else f" --var-dir {paths.var_dir}"


def up(plan: FleetPlan, *, detach: bool, echo: Callable[[str], None] = print) -> int:
    """Start supervisord with the plan's environment. Foreground: returns when the fleet stopped
    (Ctrl-C / SIGTERM stop it gracefully). Detach: returns once every program has started."""
    paths = plan.paths
    running = read_pid(paths)
    if running or supervisord_state(paths) is not None:
        raise FleetError(f"a fleet is already running in {paths.var_dir} (supervisord pid {running or '?'}); "
                         f"stop it with `tradebot down{_var_flag(paths)}`")
    _prepare_dirs(paths)
    if paths.socket.exists():
        paths.socket.unlink()  # stale: nothing answered on it
    command = supervisord_command(plan, detach=detach)
    log.debug("starting %s", command)
    if detach:
        return _up_detached(plan, command, echo)
    return _up_foreground(plan, command, echo)


def _up_detached(plan: FleetPlan, command: list[str], echo: Callable[[str], None]) -> int:
    paths = plan.paths
    launcher = subprocess.run(command, env=plan.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=30)
    if launcher.returncode != 0:
        raise FleetError(f"supervisord failed to start ({launcher.returncode}): "
                         f"{(launcher.stderr or launcher.stdout).strip()}")
    _wait_supervisord(paths, None, timeout=15.0)
    pid = read_pid(paths)
    _write_fleet_file(plan, pid)
    infos = wait_started(paths, plan.process_names())
    for line in summary_lines(plan, pid, infos, detach=True):
        echo(line)
    return 0


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
    try:
        _wait_supervisord(paths, process, timeout=15.0)
        _write_fleet_file(plan, process.pid)
        infos = wait_started(paths, plan.process_names(), process=process)
        if process.poll() is None:
            for line in summary_lines(plan, process.pid, infos, detach=False):
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
        _remove_fleet_file(paths)
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
            _remove_fleet_file(paths)
            raise FleetError(f"no fleet is running in {paths.var_dir}")
        os.kill(pid, signal.SIGTERM)
    echo(f"stopping the fleet in {paths.var_dir} (supervisord pid {pid or '?'}) ...")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (pid is None or not _is_supervisord(pid)) and supervisord_state(paths) is None:
            _remove_fleet_file(paths)
            echo("tradebot fleet stopped")
            return 0
        time.sleep(0.2)
    raise FleetError(f"supervisord (pid {pid}) is still running after {timeout:.0f}s; see {paths.supervisord_log}")


# --------------------------------------------------------------------------- embedded Redis

def exec_embedded_redis(port: int, data_dir: Path) -> None:
    """Replace this process with redis-server (loopback, AOF everysec, data in ``data_dir``), so
    supervisord supervises and signals the real server."""
    if not 0 < port < 65536:
        raise FleetError(f"--port {port}: not a TCP port")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        binary = find_redis_server()
    except RedisServerNotFound as exc:
        raise FleetError(str(exc)) from None
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(binary, [binary, *server_args(port, data_dir.resolve())])


__all__ = [
    "COMMANDS", "ConfigError", "FleetError", "FleetPaths", "FleetPlan", "choose_redis_port", "default_config_file",
    "down", "exec_embedded_redis", "load_command", "plan_fleet", "process_infos", "public_env", "read_fleet_file",
    "read_pid", "rpc", "summary_lines", "supervisord_command", "supervisord_state", "up", "wait_started",
]
