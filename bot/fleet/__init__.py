"""The fleet under supervisord: `tradebot up`, `tradebot down`, `tradebot embedded-redis`.

supervisord.conf (repo root) has no conditionals, so `plan_fleet` computes the environment it
needs: which programs autostart (embedded Redis only without REDIS_URL, paper broker only
without Alpaca credentials, the generator only in demo mode), the ports, the var folder, and the
REDIS_URL/ALPACA_* every program inherits from supervisord.  Control goes through supervisord's
XML-RPC interface on the unix socket in the var folder (no TCP listener).

A package with one concept per module: ``commands`` (the command table the CLI and supervisord
share), ``programs`` (supervisord.conf's programs and their env flags), ``paths`` (the var folder),
``ports``, ``flags`` (each program's extra flags), ``plan`` (``plan_fleet``: what `tradebot up`
starts), ``display`` (what it prints), ``supervisord`` (its command line, socket, pidfile, waiting),
``fleet_file`` (var/fleet.json), ``lock`` (var/up.lock: one `up` at a time), ``lifecycle`` (``up``,
``down``), ``ctl`` (`tradebot ctl`: supervisorctl), ``logs`` (`tradebot logs`), ``redis_server``
(`tradebot embedded-redis`) and ``errors``.
"""
from bot.config import ConfigError
from bot.fleet.commands import COMMANDS, load_command
from bot.fleet.ctl import run_ctl
from bot.fleet.display import public_env, summary_lines
from bot.fleet.errors import FleetError
from bot.fleet.fleet_file import read_fleet_file
from bot.fleet.lifecycle import STOP_TIMEOUT, down, up
from bot.fleet.logs import DEFAULT_LINES as DEFAULT_LOG_LINES
from bot.fleet.logs import show_logs
from bot.fleet.paths import FleetPaths
from bot.fleet.plan import DEMO_PROBABILITY, MAX_SOCKET_PATH, FleetPlan, default_config_file, plan_fleet
from bot.fleet.ports import PREFERRED_REDIS_PORTS, choose_redis_port, port_is_free
from bot.fleet.programs import GROUP, ONLY_CHOICES, PROGRAM_EXTRA_FLAGS, PROGRAM_FLAGS, start_order
from bot.fleet.redis_server import exec_embedded_redis
from bot.fleet.supervisord import (
    PENDING_STATES,
    START_TIMEOUT,
    process_infos,
    read_pid,
    rpc,
    supervisord_command,
    supervisord_state,
    wait_started,
)

__all__ = [
    "COMMANDS",
    "DEFAULT_LOG_LINES",
    "DEMO_PROBABILITY",
    "GROUP",
    "MAX_SOCKET_PATH",
    "ONLY_CHOICES",
    "PENDING_STATES",
    "PREFERRED_REDIS_PORTS",
    "PROGRAM_EXTRA_FLAGS",
    "PROGRAM_FLAGS",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "ConfigError",
    "FleetError",
    "FleetPaths",
    "FleetPlan",
    "choose_redis_port",
    "default_config_file",
    "down",
    "exec_embedded_redis",
    "load_command",
    "plan_fleet",
    "port_is_free",
    "process_infos",
    "public_env",
    "read_fleet_file",
    "read_pid",
    "rpc",
    "run_ctl",
    "show_logs",
    "start_order",
    "summary_lines",
    "supervisord_command",
    "supervisord_state",
    "up",
    "wait_started",
]
