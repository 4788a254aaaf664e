"""var/up.lock: one `tradebot up` at a time per var folder.

`tradebot up` holds an exclusive ``flock`` on it while it starts the fleet: a foreground `up` for
its whole life, a detached one until every program has started (from then on the pidfile and the
socket say that a fleet runs). A second `up` that cannot take the lock stops at once and touches
nothing of the first one's: no socket, pidfile or fleet.json is removed. The lock goes with the
process that holds it (even when it is killed), so a stale lock file is harmless and is never
deleted: deleting it would let two processes lock two different files.
"""
from __future__ import annotations

import contextlib
import fcntl
import os

from bot.fleet.errors import FleetError
from bot.fleet.paths import FleetPaths


class UpLock:
    """The exclusive lock of `tradebot up` on var/up.lock (non-blocking)."""

    def __init__(self, paths: FleetPaths, stop_hint: str = "tradebot down") -> None:
        self.paths = paths
        self.stop_hint = stop_hint
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or FleetError "a fleet is already running ..." when another `up` holds it.
        The var folder must exist."""
        fd = os.open(self.paths.up_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FleetError(f"a fleet is already running in {self.paths.var_dir} (`tradebot up` pid {holder or '?'} "
                             f"is starting or running it); stop it with `{self.stop_hint}`") from None
        except BaseException:
            os.close(fd)
            raise
        # who holds it, for the message of the next one (the content is informative only)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> UpLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
