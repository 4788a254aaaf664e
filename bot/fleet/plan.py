"""`tradebot up`'s decisions: what to start, on which ports, with which environment.

supervisord.conf (repo root) has no conditionals, so `plan_fleet` computes the environment it
needs: which programs autostart (embedded Redis only without REDIS_URL, paper broker only
without Alpaca credentials, the generator only in demo mode), the ports, the var folder, and the
REDIS_URL/ALPACA_* every program inherits from supervisord.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.config import ALPACA_PAPER_URL, Settings
from bot.embedded_redis import RedisServerNotFound, find_redis_server, free_port
from bot.fleet.errors import FleetError
from bot.fleet.flags import check_flags, split_flags
from bot.fleet.paths import FleetPaths
from bot.fleet.ports import choose_redis_port, port_is_free
from bot.fleet.programs import ONLY_CHOICES, PROGRAM_EXTRA_FLAGS, PROGRAM_FLAGS
from bot.logs import redact_url

WEB_PORT = 8770  # the dashboard's documented port (DESIGN.md), used when free
DEMO_PROBABILITY = 0.05  # a signal every ~20 s per ticker, so the demo shows something soon
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to ~108 bytes


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
    web_port: int | None
    workers: int
    programs: tuple[str, ...]  # the programs that autostart
    demo: bool

    @property
    def redis_url_shown(self) -> str:
        return redact_url(self.settings.redis_url)

    @property
    def broker_url(self) -> str:
        return self.settings.alpaca_base_url

    @property
    def web_url(self) -> str | None:
        return f"http://127.0.0.1:{self.web_port}/" if self.web_port and "web" in self.programs else None

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
            "config_file": str(self.config_file),  # for `tradebot ctl`
            "supervisord_pid": supervisord_pid,
            "started_at": time.time(),
            # the embedded Redis has no password, so its URL is safe to store and lets
            # `tradebot status` find it; an external URL is stored redacted, for display only
            "redis_url": self.settings.redis_url if self.embedded_redis else None,
            "redis_url_shown": self.redis_url_shown,
            "embedded_redis": self.embedded_redis,
            "broker_url": self.broker_url,
            "paper_broker": self.paper_broker,
            "alpaca_credentials": "demo pair" if self.paper_broker else "set",
            "web_url": self.web_url,
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
    return Path(explicit) if explicit else Path(__file__).resolve().parents[2] / "supervisord.conf"


def _truthy(flag: bool) -> str:
    return "true" if flag else "false"


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
    web_port: int | None = None,
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
        _check_memory(workers, child_env)
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
        needs_broker = bool({"worker", "poller", "listener"} & set(only))  # the router and generator only use Redis
        if needs_broker and not key:
            base = child_env.get("ALPACA_BASE_URL", "")
            if not base or "alpaca.markets" in base:
                raise FleetError("--only without ALPACA_API_KEY/ALPACA_SECRET_KEY: set them, or set ALPACA_BASE_URL "
                                 "to the fleet's paper broker (the demo key pair is then used)")
            _use_demo_keys(child_env)
    else:
        paper = not key
        notify = bool(child_env.get("TRADEBOT_NOTIFY"))  # alerts only where a channel is configured
        programs = tuple(p for p in PROGRAM_FLAGS
                         if (p != "redis" or embedded) and (p != "paper-broker" or paper)
                         and (p != "generator" or demo) and (p != "notify" or notify))

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

    chosen_web_port = None
    if "web" in programs:
        chosen_web_port = web_port or _web_port(child_env)
    settings = Settings.from_env(child_env)  # ConfigError for a bad TRADEBOT_* value, before anything starts
    flags = {program: split_flags(child_env.get(variable, ""), variable)
             for program, (variable, _command) in PROGRAM_EXTRA_FLAGS.items()}
    if demo:
        flags["paper-broker"] = ["--always-open", *flags["paper-broker"]]
        flags["generator"] = ["--always-open", "--first-buy", "--wait-for-router", *flags["generator"]]
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
        "TRADEBOT_WEB_PORT": str(chosen_web_port or 0),
        "PYTHONUNBUFFERED": "1",
    })
    for program, flag in PROGRAM_FLAGS.items():
        child_env[flag] = _truthy(program in programs)
    check_flags(flags, programs)
    return FleetPlan(paths=paths, config_file=config, env=child_env, settings=settings,
                     embedded_redis=embedded, redis_port=chosen_redis_port, paper_broker=paper,
                     paper_port=chosen_paper_port, web_port=chosen_web_port, workers=settings.workers,
                     programs=programs, demo=demo)


WORKER_MB = 64  # a worker's resident memory under load is ~45 MB (docs/benchmarks.md); with headroom


def _available_mb() -> int | None:
    """MemAvailable of /proc/meminfo in MB (None where there is no such file)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        return None
    return None


def _env_int(env: Mapping[str, str], name: str, what: str, low: int | None = None,
             high: int | None = None) -> int | None:
    """The whole number in ``env[name]`` (None when unset), or FleetError naming it."""
    given = env.get(name)
    if not given:
        return None
    try:
        value = int(given)
    except ValueError:
        raise FleetError(f"{name}={given!r} is not {what}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise FleetError(f"{name}={given!r} is not {what}")
    return value


def _check_memory(workers: int, env: Mapping[str, str]) -> None:
    """Refuse a worker count this machine's free memory cannot hold (TRADEBOT_MAX_WORKERS overrides)."""
    limit = _env_int(env, "TRADEBOT_MAX_WORKERS", "a whole number")
    if limit is not None:
        source = f"TRADEBOT_MAX_WORKERS={limit}"
    else:
        available = _available_mb()
        if available is None:
            return
        limit = max(1, available // WORKER_MB)
        source = f"{available} MB available, about {WORKER_MB} MB a worker"
    if workers > limit:
        raise FleetError(f"--workers {workers}: at most {limit} fit ({source}); "
                         "set TRADEBOT_MAX_WORKERS to override")


def _web_port(env: Mapping[str, str]) -> int:
    """TRADEBOT_WEB_PORT, else 8770 (the documented port) when free on 127.0.0.1, else a free port."""
    port = _env_int(env, "TRADEBOT_WEB_PORT", "a port number", low=1, high=65535)
    if port is not None:
        return port
    return WEB_PORT if port_is_free(WEB_PORT) else free_port()


def _use_demo_keys(env: dict[str, str]) -> None:
    from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY

    env["ALPACA_API_KEY"] = DEMO_API_KEY
    env["ALPACA_SECRET_KEY"] = DEMO_SECRET_KEY
