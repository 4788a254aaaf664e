"""`tradebot embedded-redis`: this process becomes the fleet's redis-server."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from bot.embedded_redis import RedisServerNotFound, check_data_dir, find_redis_server, server_args
from bot.fleet.errors import FleetError


def exec_embedded_redis(port: int, data_dir: Path) -> None:
    """Replace this process with redis-server (loopback, AOF everysec, data in ``data_dir``), so
    supervisord supervises and signals the real server."""
    if not 0 < port < 65536:
        raise FleetError(f"--port {port}: not a TCP port")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        binary = find_redis_server()
        check_data_dir(binary, data_dir)
    except RedisServerNotFound as exc:
        raise FleetError(str(exc)) from None
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(binary, [binary, *server_args(port, data_dir.resolve())])
