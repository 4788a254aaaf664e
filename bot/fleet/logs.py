"""`tradebot logs [PROGRAM] [-f] [-n N]`: the fleet's logs in var/log, one file per process.

supervisord writes ``var/log/<process>.log`` (``worker-00.log``, ``poller.log``, ...) and its own
``supervisord.log``; it rotates a file at 10 MB by renaming it to ``<name>.log.1`` and starting a
new one, which the follower notices and reads from the start.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import InputError
from bot.fleet.errors import FleetError
from bot.fleet.paths import FleetPaths
from bot.fleet.programs import GROUP, start_order

DEFAULT_LINES = 50
FOLLOW_INTERVAL = 0.25  # seconds between two looks at the files while following
_BLOCK = 64 * 1024


def log_files(paths: FleetPaths) -> dict[str, Path]:
    """Program name -> its log, in start order: supervisord first, then redis, paper-broker, poller,
    listener, router, worker-NN, generator (then any other log in the folder)."""
    try:
        found = [p for p in paths.log_dir.iterdir() if p.suffix == ".log" and p.is_file()]
    except OSError:
        return {}

    def order(path: Path) -> tuple[int, tuple[int, str]]:
        return (0 if path.stem == "supervisord" else 1, start_order(path.stem))

    return {p.stem: p for p in sorted(found, key=order)}


def select_logs(paths: FleetPaths, program: str | None) -> dict[str, Path]:
    """The logs to show: every log, or PROGRAM's (``tradebot:worker-00`` is ``worker-00``).
    InputError for a program without a log; FleetError when there is no log at all."""
    available = log_files(paths)
    if program is None:
        if not available:
            raise FleetError(f"no logs in {paths.log_dir}; start a fleet with `make run` or `tradebot up`")
        return available
    name = program.removeprefix(f"{GROUP}:")
    if name not in available:
        listed = ", ".join(available) or "none"
        raise InputError(f"no log for {program!r} in {paths.log_dir}; available: {listed}")
    return {name: available[name]}


def tail_lines(path: Path, count: int, end: int | None = None) -> list[str]:
    """The last ``count`` lines of ``path`` up to byte ``end`` (default: its end), read backwards
    from there: logs grow to 10 MB."""
    if count <= 0:
        return []
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        position = size if end is None else min(end, size)
        data = b""
        while position > 0 and data.count(b"\n") <= count:
            step = min(_BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    return [_decode(line) for line in data.splitlines()[-count:]]


def show_logs(paths: FleetPaths, program: str | None, *, lines: int = DEFAULT_LINES, follow: bool = False,
              echo: Callable[[str], None] = print, interval: float = FOLLOW_INTERVAL,
              sleep: Callable[[float], None] = time.sleep) -> None:
    """`tradebot logs`: the last ``lines`` lines of PROGRAM's log, or of every log (each line
    prefixed with its program) in start order; with ``follow``, then what is appended, until
    interrupted (Ctrl-C)."""
    logs = select_logs(paths, program)
    show = _prefixer(list(logs)) if program is None else _as_is
    # the follower takes each file's size first: the tail ends there and the follow starts there,
    # so no line is shown twice or missed in between
    follower = LogFollower(paths, logs, discover=program is None)
    for name, path in logs.items():
        try:
            tail = tail_lines(path, lines, end=follower.offset(name))
        except OSError:
            continue  # removed in between
        for line in tail:
            echo(show(name, line))
    while follow:
        sleep(interval)
        for name, line in follower.poll():
            echo(show(name, line))


def _prefixer(names: list[str]) -> Callable[[str, str], str]:
    width = max((len(n) for n in names), default=0)
    return lambda name, line: f"{name:<{width}} | {line}"


def _as_is(_name: str, line: str) -> str:
    return line


@dataclass
class _Followed:
    path: Path
    inode: int
    offset: int
    partial: bytes = b""


@dataclass
class LogFollower:
    """What was appended to the logs since the last look, like ``tail -f``. Started at the current
    end of each file; a file that is rotated (new inode) or truncated is read again from the start.
    With ``discover``, logs that appear later (a program started after the follow began) are
    followed too, from their start."""

    paths: FleetPaths
    logs: dict[str, Path]
    discover: bool = False
    _state: dict[str, _Followed] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for name, path in self.logs.items():
            try:
                stat = path.stat()
            except OSError:
                continue
            self._state[name] = _Followed(path, stat.st_ino, stat.st_size)

    def offset(self, name: str) -> int | None:
        """Where following ``name`` starts (its size when the follower was made)."""
        followed = self._state.get(name)
        return followed.offset if followed else None

    def poll(self) -> list[tuple[str, str]]:
        """Complete new lines as (program, line); a line without its newline waits for the next poll."""
        if self.discover:
            for name, path in log_files(self.paths).items():
                self._state.setdefault(name, _Followed(path, _inode(path), 0))
        found: list[tuple[str, str]] = []
        for name, followed in self._state.items():
            found += [(name, line) for line in self._read(followed)]
        return found

    def _read(self, followed: _Followed) -> list[str]:
        try:
            stat = followed.path.stat()
        except OSError:
            return []  # rotated away and not yet recreated
        if stat.st_ino != followed.inode or stat.st_size < followed.offset:
            followed.inode, followed.offset, followed.partial = stat.st_ino, 0, b""
        if stat.st_size == followed.offset:
            return []
        try:
            with followed.path.open("rb") as handle:
                handle.seek(followed.offset)
                data = handle.read()
        except OSError:
            return []
        followed.offset += len(data)
        *complete, followed.partial = (followed.partial + data).split(b"\n")
        return [_decode(line) for line in complete]


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except OSError:
        return -1


def _decode(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", errors="replace")
