"""The programs of supervisord.conf: the env flags that switch each on, its extra-flags variable, start order."""
from __future__ import annotations

GROUP = "tradebot"  # the bot's processes; redis and paper-broker are groups of their own (see supervisord.conf)
# program name -> the env flag that switches its autostart on
PROGRAM_FLAGS: dict[str, str] = {
    "redis": "TRADEBOT_START_REDIS",
    "paper-broker": "TRADEBOT_START_PAPER_BROKER",
    "poller": "TRADEBOT_START_POLLER",
    "listener": "TRADEBOT_START_LISTENER",
    "router": "TRADEBOT_START_ROUTER",
    "worker": "TRADEBOT_START_WORKERS",
    "web": "TRADEBOT_START_WEB",
    "notify": "TRADEBOT_START_NOTIFY",
    "generator": "TRADEBOT_START_GENERATOR",
}
ONLY_CHOICES = ("worker", "router", "poller", "listener", "web", "notify", "generator")
# program name -> (the env variable with its extra command-line flags, its `tradebot` command)
PROGRAM_EXTRA_FLAGS: dict[str, tuple[str, str]] = {
    "paper-broker": ("TRADEBOT_PAPER_FLAGS", "paper-broker"),
    "poller": ("TRADEBOT_POLLER_FLAGS", "poller"),
    "listener": ("TRADEBOT_LISTENER_FLAGS", "listener"),
    "router": ("TRADEBOT_ROUTER_FLAGS", "router"),
    "worker": ("TRADEBOT_WORKER_FLAGS", "worker"),
    "web": ("TRADEBOT_WEB_FLAGS", "web"),
    "notify": ("TRADEBOT_NOTIFY_FLAGS", "notify"),
    "generator": ("TRADEBOT_GENERATOR_FLAGS", "generate"),
}


def start_order(name: str) -> tuple[int, str]:
    """Sort key of a process name: the fleet's start order (redis ... worker-NN ... generator)."""
    program = "worker" if name.startswith("worker-") else name
    order = list(PROGRAM_FLAGS)
    return (order.index(program) if program in order else len(order), name)
