"""The embedded Redis's port: the first free one of a stable range, so REDIS_URL stays the same across runs."""
from __future__ import annotations

import socket
from collections.abc import Iterable

from bot.embedded_redis import free_port

PREFERRED_REDIS_PORTS = range(6390, 6400)


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
