"""Sampling profiles of running processes with py-spy (``run.py --profile``): where a worker, the
router and the paper broker spend their time under load. Summaries: the functions with the most
self time (leaf frames) and the project functions with the most inclusive time."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import Proc, Procs


@dataclass
class Profile:
    name: str
    samples: int
    self_top: list[tuple[str, float]] = field(default_factory=list)  # (function, % of samples)
    inclusive_top: list[tuple[str, float]] = field(default_factory=list)
    idle_pct: float = 0.0  # on-CPU samples whose leaf is a socket/select call (mostly syscall time)

    def to_dict(self) -> dict:
        return {"name": self.name, "samples": self.samples, "self_top": self.self_top,
                "inclusive_top": self.inclusive_top, "idle_pct": self.idle_pct}


def py_spy() -> str | None:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


def start(procs: Procs, targets: list[Proc], seconds: float, out_dir: Path) -> list[tuple[Proc, Proc, Path]]:
    """Start one py-spy recorder per target (raw collapsed stacks of on-CPU samples only)."""
    exe = py_spy()
    if exe is None:
        return []
    running = []
    for target in targets:
        out = out_dir / f"profile-{target.name}.txt"
        rec = procs.start(f"py-spy-{target.name}", [exe, "record", "-p", str(target.pid), "-d", str(int(seconds) + 1),
                                                    "-r", "250", "-f", "raw", "--nonblocking", "-o", str(out)],
                          env={"PATH": "/usr/bin:/bin"})
        running.append((target, rec, out))
    return running


def finish(procs: Procs, running: list[tuple[Proc, Proc, Path]], timeout: float = 30.0) -> list[Profile]:
    profiles = []
    for target, rec, out in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            rec.popen.wait(timeout)
        procs.stop([rec])
        if out.exists():
            profiles.append(summarise(target.name, out.read_text()))
    return profiles


IDLE_LEAVES = ("select (", "poll (", "epoll_wait", "recv (", "recv_into (", "_recv (", "read (", "accept (",
               "wait (", "sleep", "readinto (", "_read_from_socket", "run_once (asyncio")


def summarise(name: str, raw: str, top: int = 12) -> Profile:
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        if any(marker in leaf for marker in IDLE_LEAVES):
            idle += count
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for frame in set(frames):
            if "(bot/" in frame or "/bot/" in frame or "processes/" in frame:
                incl_counts[frame] = incl_counts.get(frame, 0) + count
    pct = (lambda c: 100.0 * c / total) if total else (lambda c: 0.0)
    return Profile(name, total,
                   [(f, pct(c)) for f, c in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]],
                   [(f, pct(c)) for f, c in sorted(incl_counts.items(), key=lambda kv: -kv[1])[:top]],
                   pct(idle))
