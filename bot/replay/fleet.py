"""The replay's own fleet: embedded Redis in a temp folder, the paper broker in replay mode, poller,
listener, router and workers, each the unchanged `tradebot` command in a child process."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import redis

from bot.config import DEMO_API_KEY, DEMO_SECRET_KEY
from bot.embedded_redis import EmbeddedRedis, free_port
from bot.errors import TradebotError
from bot.keys import Keys

# The poller's cadences in a replay: the driver waits, before each signal, for a poll sent after it
# moved market time, so these bound the wait per signal (prices and clock ~100 requests/s to the
# replay's broker; account and positions when the driver asks, at the next tick).
POLLER_FLAGS = ("--interval", "0.02", "--account-interval", "1", "--clock-interval", "0.02",
                "--refresh-min-interval", "0")
# The replay's broker is its own, polled far more often than a live one (above): its request budget
# must not slow the fleet. Orders per market minute are reported against Alpaca's 200 instead.
REPLAY_RATE_LIMIT = "1000000"
# Environment a live fleet may have that must not reach the replay's processes: they would talk to
# the live Redis or the real broker.
FOREIGN = ("REDIS_URL", "ALPACA_BASE_URL", "ALPACA_DATA_URL", "ALPACA_API_KEY", "ALPACA_SECRET_KEY",
           "TRADEBOT_PREFIX", "TRADEBOT_SOURCE_STREAMS", "TRADEBOT_SYMBOLS", "TRADEBOT_VAR")


class ReplayError(TradebotError, RuntimeError):
    """The replay's fleet could not start or stopped answering (the message says which process)."""


@dataclass(frozen=True)
class FleetSpec:
    recording: Path
    symbols: Sequence[str]
    source_streams: Sequence[str]
    workers: int = 1
    cash: str = "100000"
    seed: int = 1
    always_open: bool = False
    settings: Mapping[str, str] = field(default_factory=dict)  # TRADEBOT_* for every process


@dataclass
class ReplayFleet:
    spec: FleetSpec
    folder: Path
    server: EmbeddedRedis | None = None  # the replay's own Redis
    broker_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)
    keys: Keys = field(default_factory=Keys)

    def start(self, timeout: float = 30.0) -> ReplayFleet:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        self.server = EmbeddedRedis(self.folder / "redis", appendonly=False).start()
        port = free_port()
        self.broker_url = f"http://127.0.0.1:{port}"
        broker = ["paper-broker", "--port", str(port), "--replay", str(self.spec.recording), "--cash",
                  self.spec.cash, "--seed", str(self.spec.seed), "--symbols", ",".join(self.spec.symbols),
                  "--rate-limit", REPLAY_RATE_LIMIT]
        self._spawn("paper-broker", [*broker, *(["--always-open"] if self.spec.always_open else [])])
        self._await_broker(timeout)
        self._spawn("poller", ["poller", *POLLER_FLAGS])
        self._spawn("listener", ["listener"])
        self._spawn("router", ["router"])
        for n in range(self.spec.workers):
            self._spawn(f"worker-{n:02d}", ["worker", "--consumer", f"replay-{n:02d}"])
        self._await_fleet(timeout)

    def env(self) -> dict[str, str]:
        assert self.server is not None
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
        env.update({
            "REDIS_URL": self.server.url, "ALPACA_BASE_URL": self.broker_url, "ALPACA_DATA_URL": self.broker_url,
            "ALPACA_API_KEY": DEMO_API_KEY, "ALPACA_SECRET_KEY": DEMO_SECRET_KEY,
            "TRADEBOT_SYMBOLS": ",".join(self.spec.symbols),
            "TRADEBOT_SOURCE_STREAMS": ",".join(self.spec.source_streams),
            "TRADEBOT_LOG_LEVEL": env.get("TRADEBOT_LOG_LEVEL", "WARNING"), "PYTHONUNBUFFERED": "1",
            "TRADEBOT_RATE_LIMIT": REPLAY_RATE_LIMIT, "TRADEBOT_DATA_RATE_LIMIT": REPLAY_RATE_LIMIT,
        })
        env.update(self.spec.settings)
        return env

    def _spawn(self, name: str, args: Sequence[str]) -> None:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 (closed by stop())
        self._logs.append(log)
        command = [sys.executable, "-m", "bot.cli", *args]
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.env())

    def _await_broker(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                httpx.get(f"{self.broker_url}/_paper/replay", timeout=1.0).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise ReplayError(f"the paper broker did not answer within {timeout:.0f}s; see {self.folder}/paper-broker.log")

    def _await_fleet(self, timeout: float) -> None:
        """Every process has written its heartbeat and the workers' group exists."""
        r = self.client()
        try:
            deadline = time.monotonic() + timeout
            wanted = len(self.processes) - 1  # the broker writes none
            while time.monotonic() < deadline:
                self.check_alive()
                beats = len(list(r.scan_iter(match=self.keys.heartbeat("*"), count=100)))
                if beats >= wanted and self._workers_group(r):
                    return
                time.sleep(0.05)
        finally:
            r.close()
        raise ReplayError(f"the replay's fleet did not come up within {timeout:.0f}s; logs in {self.folder}")

    def _workers_group(self, r: redis.Redis) -> bool:
        try:
            return any(str(g["name"]) == self.keys.workers_group for g in r.xinfo_groups(self.keys.signals))
        except redis.ResponseError:  # no stream yet
            return False

    def client(self) -> redis.Redis:
        assert self.server is not None
        return redis.Redis.from_url(self.server.url, decode_responses=True)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.folder / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise ReplayError(f"{name} exited with {process.returncode}: {' | '.join(tail)}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.processes.clear()
        if self.server is not None:
            self.server.stop()
        for log in self._logs:
            log.close()
        self._logs.clear()
