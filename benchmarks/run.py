"""`make bench`: run every benchmark section against one real Redis and the real processes, print
the table, write docs/benchmarks.md and docs/bench/*.png.

    python -m benchmarks.run                # the full run (~14 min on 2 cores, ~4 of them the peers)
    python -m benchmarks.run --quick        # a smoke run (~5 min); report goes to a temp folder
    python -m benchmarks.run --sections floor,pipeline --keep   # some sections, keep logs

Benchmark-only packages (matplotlib, dramatiq[redis], taskiq, taskiq-redis, celery[redis], psutil;
py-spy with --profile) are installed into this interpreter's environment at start, not declared in
setup.cfg.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("floor", "pipeline", "roundtrips", "scaling", "taskqueue", "peers", "poller", "requests", "retention")
# import name -> pip requirement
BENCH_DEPS = {"matplotlib": "matplotlib>=3.7", "dramatiq": "dramatiq[redis]>=1.15", "psutil": "psutil>=5.9",
              "taskiq": "taskiq>=0.11", "taskiq_redis": "taskiq-redis>=1.0", "celery": "celery[redis]>=5.3"}
PROFILE_DEPS = {"py-spy": "py-spy>=0.3.14"}

log = logging.getLogger("benchmarks")


def ensure_deps(profile: bool = False) -> None:
    """pip install the benchmark-only packages this environment lacks (quietly)."""
    missing = [req for name, req in BENCH_DEPS.items() if importlib.util.find_spec(name) is None]
    if profile and shutil.which("py-spy", path=str(Path(sys.executable).parent)) is None:
        missing += list(PROFILE_DEPS.values())
    if not missing:
        return
    print(f"installing benchmark packages: {' '.join(missing)}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *missing],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.exit(f"pip install {' '.join(missing)} failed:\n{done.stdout[-3000:]}")
    importlib.invalidate_caches()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (fewer samples, shorter windows)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for benchmarks.md and bench/*.png (default: docs/ for a full run of every "
                             "section, a temp folder otherwise)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON here")
    parser.add_argument("--sides", choices=("alternate", "buy"), default="alternate",
                        help="signal directions: per ticker b,s,b,s (default) or buys only")
    parser.add_argument("--workers", default=None,
                        help="worker counts for scaling, taskqueue and peers, e.g. 1,16 (default 1,2,4,8,16)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy a worker, the router and the paper broker during the 200/s pipeline run")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (process logs, Redis data)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.workers = tuple(int(n) for n in args.workers.split(",")) if args.workers else None
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds through the finally blocks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s bench %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    ensure_deps(profile=args.profile)
    signal.signal(signal.SIGTERM, _terminate)

    from benchmarks import report
    from benchmarks.common import BenchError, Procs
    from bot.embedded_redis import EmbeddedRedis
    from bot.redisconn import connect

    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="tradebot-bench-"))
    results: dict[str, Any] = {"quick": args.quick, "sides": args.sides, "errors": {}}
    procs = Procs(tmp / "logs")
    server = EmbeddedRedis(tmp / "redis", appendonly=True)  # AOF everysec, like the fleet
    try:
        server.start()
        r = connect(server.url, socket_timeout=60)
        results["machine"] = report.machine_info(r)
        extra = {"redis": server.process.pid, "harness": __import__("os").getpid()}
        runners: dict[str, Callable[[], Any]] = _runners(r, server.url, procs, tmp, args, extra)
        for name in args.sections:
            r.flushall()
            log.info("section %s ...", name)
            t0 = time.time()
            try:
                results[name] = runners[name]()
            except BenchError as exc:
                log.error("section %s failed: %s", name, exc)
                results["errors"][name] = str(exc)
            finally:
                procs.stop_all()  # nothing of a section outlives it
            log.info("section %s done in %.0fs", name, time.time() - t0)
        r.close()
    finally:
        procs.stop_all()
        server.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["elapsed"] = time.time() - started

    out = args.out
    if out is None:
        full = not args.quick and list(args.sections) == list(SECTIONS)
        out = ROOT / "docs" if full else Path(tempfile.mkdtemp(prefix="tradebot-bench-report-"))
    text = report.render_table(results)
    print(text)
    doc = report.write_docs(results, out, command=_command(argv))
    print(f"\nwrote {doc} and {out / 'bench'}/*.png ({results['elapsed']:.0f}s)")
    if args.json:
        args.json.write_text(json.dumps(report.jsonable(results), indent=2, default=str))
    return 1 if results["errors"] else 0


def _command(argv: list[str] | None) -> str:
    extra = " ".join(argv if argv is not None else sys.argv[1:])
    return "make bench" if not extra else f"python -m benchmarks.run {extra}"


def _runners(r: Any, url: str, procs: Any, tmp: Path, args: argparse.Namespace,
             extra: dict[str, int]) -> dict[str, Callable[[], Any]]:
    from benchmarks import floor, peers, pipeline, pollerbench, requests, retention, roundtrips, scaling, taskqueue

    return {
        "floor": lambda: floor.run(r, url, procs, tmp, args.quick),
        "pipeline": lambda: pipeline.run(r, url, procs, tmp, args.quick, sides=args.sides, extra_pids=extra,
                                         profile=args.profile),
        "roundtrips": lambda: roundtrips.run(r, url, procs, tmp, args.quick),
        "scaling": lambda: scaling.run(r, url, procs, tmp, args.quick, sides=args.sides, extra_pids=extra,
                                       **({"counts": args.workers} if args.workers else {})),
        "taskqueue": lambda: taskqueue.run(r, url, procs, tmp, args.quick, extra_pids=extra,
                                           **({"counts": args.workers} if args.workers else {})),
        "peers": lambda: peers.run(r, url, procs, tmp, args.quick, extra_pids=extra,
                                   **({"counts": args.workers} if args.workers else {})),
        "poller": lambda: pollerbench.run(r, url, procs, tmp, args.quick),
        "requests": lambda: requests.run(r, url, procs, tmp, args.quick),
        "retention": lambda: retention.run(r, url, procs, tmp, args.quick),
    }


if __name__ == "__main__":
    sys.exit(main())
