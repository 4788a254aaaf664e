"""Heartbeats: each process says in Redis that it lives, how long ago its loop last made progress,
and the last problem it logged, so `tradebot status` (and later /healthz and alerts) can tell a
crash-looping, hung or failing process from a healthy one without reading its log.

A daemon thread writes ``tradebot:heartbeat:{process}`` every ``every`` seconds (expiring after
``ttl``, so a dead process's entry vanishes); the loop only calls ``progress()`` (no Redis call on
the hot path). The last WARNING/ERROR record of the process, scrubbed of secrets, is its last error.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from bot.codec import text
from bot.keys import Keys
from bot.logs import SecretFilter, secrets_from_env

log = logging.getLogger(__name__)

BEAT_EVERY = 2.0
BEAT_TTL = 30.0
STALE_AFTER = 15.0  # a heartbeat older than this: the process is gone or frozen
MAX_ERROR = 300  # characters of the last error kept


class LastError(logging.Handler):
    """Remembers the newest WARNING-or-worse record of this process, secrets scrubbed."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(level=logging.WARNING)
        self.addFilter(SecretFilter([*secrets, *secrets_from_env()]))
        self.message: str | None = None
        self.at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(__name__):
            return  # the heartbeat's own trouble (Redis away) is not the process's error
        self.message = f"{record.levelname}: {record.getMessage()}"[:MAX_ERROR]
        self.at = record.created


class Heartbeat:
    def __init__(self, r: redis.Redis, keys: Keys, process: str, *, every: float = BEAT_EVERY,
                 ttl: float = BEAT_TTL, secrets: Iterable[str] = (),
                 extra: Callable[[], Mapping[str, str]] | None = None) -> None:
        self.r, self.key, self.process = r, keys.heartbeat(process), process
        self.every, self.ttl = every, ttl
        self.started_at = time.time()
        self._progress = self.started_at
        self.errors = LastError(secrets)
        self.extra = extra  # more fields to beat (e.g. the broker requests the process sent, by route)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def progress(self) -> None:
        """The loop went round (called by the loop; no I/O)."""
        self._progress = time.time()

    def beat(self) -> None:
        now = time.time()
        fields: dict[str, Any] = {"beat": repr(now), "pid": os.getpid(), "host": socket.gethostname(),
                                  "started_at": repr(self.started_at), "progress_at": repr(self._progress)}
        if self.errors.message is not None:
            fields.update(last_error=self.errors.message, last_error_at=repr(self.errors.at))
        if self.extra is not None:
            fields.update(self.extra())
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key, mapping={k: str(v) for k, v in fields.items()})
        pipe.pexpire(self.key, int(self.ttl * 1000))
        pipe.execute()

    def start(self) -> Heartbeat:
        logging.getLogger().addHandler(self.errors)
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.process}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        logging.getLogger().removeHandler(self.errors)
        with contextlib.suppress(redis.RedisError):
            self.r.delete(self.key)  # stopped on purpose: not stale, gone

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:  # Redis away: the next beat tries again
                log.debug("heartbeat %s: %s", self.process, exc)
            except Exception:  # a bug in an extra field must not end the heartbeats
                log.debug("heartbeat %s: beat failed", self.process, exc_info=True)
            self._stop.wait(self.every)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class HeartbeatInfo:
    process: str
    age: float  # seconds since its last beat
    progress_age: float | None  # seconds since its loop last went round
    pid: str
    host: str
    last_error: str
    last_error_age: float | None

    @property
    def stale(self) -> bool:
        return self.age > STALE_AFTER


def broker_requests_extra(client: Any) -> Callable[[], Mapping[str, str]]:
    """A heartbeat's ``extra``: the requests ``client`` (an AlpacaClient) sent, by route and answer."""
    return lambda: {"broker_requests": json.dumps(client.requests_by_route(), separators=(",", ":"))}


def read_heartbeats(r: redis.Redis, keys: Keys, now: float | None = None) -> list[HeartbeatInfo]:
    now = time.time() if now is None else now
    found = []
    for key in sorted(_scan(r, keys.heartbeat("*"))):
        raw = {text(k): text(v) for k, v in (r.hgetall(key) or {}).items()}
        if not raw:
            continue
        found.append(HeartbeatInfo(
            process=key[len(keys.heartbeat("")):], age=round(now - _num(raw.get("beat"), now), 1),
            progress_age=_age(raw.get("progress_at"), now), pid=raw.get("pid", ""), host=raw.get("host", ""),
            last_error=raw.get("last_error", ""), last_error_age=_age(raw.get("last_error_at"), now)))
    return found


def _scan(r: redis.Redis, pattern: str) -> Iterator[str]:
    for key in r.scan_iter(match=pattern, count=200):
        yield text(key)


def _age(value: str | None, now: float) -> float | None:
    if not value:
        return None
    return round(now - _num(value, now), 1)


def _num(value: str | None, default: float) -> float:
    try:
        return float(value) if value else default
    except ValueError:
        return default

