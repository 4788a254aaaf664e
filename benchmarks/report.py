"""The results as a text table (stdout), docs/benchmarks.md and two PNG plots (matplotlib, Agg)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import platform
from pathlib import Path
from typing import Any

from benchmarks.common import Dist, fmt_ms
from benchmarks.goals import EFFICIENCY_TARGET, P50_FLOOR_FACTOR, P99_FLOOR_FACTOR, TARGET_RATE, Target, floor_ms

# --------------------------------------------------------------------------- facts

def machine_info(r: Any) -> dict[str, Any]:
    info = r.info("server")
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "memory": mem, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "redis": info.get("redis_version", "?"),
            "os": f"{platform.system()} {platform.release()}",
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- targets

def targets(results: dict[str, Any]) -> list[Target]:
    """Issue 15's goals, judged on this run's own numbers (benchmarks/goals.py)."""
    from benchmarks import goals

    return goals.targets(results)


def _mark(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


# --------------------------------------------------------------------------- tables (markdown, also printed)

def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def floor_table(results: dict[str, Any]) -> list[str]:
    floor = results.get("floor")
    if not floor:
        return ["(not run)"]
    rows = [[name, str(d.n), fmt_ms(d.p50, 3), fmt_ms(d.p99, 3)] for name, d in (
        ("PING round trip", floor.ping), ("XADD + XREADGROUP + XACK, one client (3 RTT)", floor.loop),
        ("stream hop: XADD -> blocked XREADGROUP in another process", floor.hop))]
    if floor.reads_sequential and floor.reads_pipelined:
        rows += [[name, str(d.n), fmt_ms(d.p50, 3), fmt_ms(d.p99, 3)] for name, d in (
            ("the worker's pre-trade reads, one round trip each", floor.reads_sequential),
            ("the same reads in one pipeline", floor.reads_pipelined))]
    if floor.lua:
        rows.append(["one ledger reservation (Lua, through bot.ledger)", str(floor.lua.n), fmt_ms(floor.lua.p50, 3),
                     fmt_ms(floor.lua.p99, 3)])
        rows.append(["**the pipeline's floor**: 2 hops + pipelined read + Lua (p50s)", "", fmt_ms(floor_ms(results), 3),
                     ""])
    return _table(["what", "n", "p50 ms", "p99 ms"], rows)


def pipeline_table(results: dict[str, Any]) -> list[str]:
    pipe = results.get("pipeline")
    if not pipe:
        return ["(not run)"]
    budget = floor_ms(results)
    rows = []
    for x in pipe.rates:
        o = x.stages["overhead"]
        ratio = f"{o.p50 / budget:.1f}x" if budget == budget else "n/a"
        skipped = sum(v for k, v in x.outcomes.items() if k not in ("filled", "partially_filled"))
        rows.append([f"{x.rate:g}", f"{x.achieved_rate:.1f}", str(o.n), fmt_ms(o.p50), fmt_ms(o.p95), fmt_ms(o.p99),
                     ratio, fmt_ms(x.stages["router_hop"].p50), fmt_ms(x.stages["worker_hop"].p50),
                     fmt_ms(x.stages["pre_trade"].p50), fmt_ms(x.stages["end_to_end"].p50),
                     fmt_ms(x.stages["end_to_end"].p99), str(skipped)])
    return _table(["signals/s", "sent/s", "orders", "p50 ms", "p95 ms", "p99 ms", "p50 / floor",
                   "router hop p50", "worker hop p50", "pre-trade p50", "to final p50", "to final p99",
                   "not filled"], rows)


def pipeline_cpu_table(results: dict[str, Any]) -> list[str]:
    pipe = results.get("pipeline")
    if not pipe:
        return []
    roles = sorted({k for x in pipe.rates for k in x.cpu_ms_per_signal})
    rows = [[f"{x.rate:g}", *(f"{x.cpu_ms_per_signal.get(k, 0):.2f}" for k in roles),
             f"{sum(x.cpu_ms_per_signal.values()):.2f}"] for x in pipe.rates]
    return _table(["signals/s", *roles, "total"], rows)


def scaling_table(results: dict[str, Any]) -> list[str]:
    points = results.get("scaling") or []
    tq = results.get("taskqueue")
    dq = {p.workers: p for p in (tq.scaling if tq else [])}
    if not points and not dq:
        return ["(not run)"]
    rows = []
    for n in sorted({p.workers for p in points} | set(dq)):
        p = next((x for x in points if x.workers == n), None)
        d = dq.get(n)
        cpu = sum(p.cpu_ms_per_order.values()) if p else math.nan
        rows.append([str(n),
                     f"{p.throughput:.1f}" if p else "n/a", f"{p.efficiency:.2f}" if p else "n/a",
                     fmt_ms(p.end_to_end.p50, 0) if p and p.end_to_end else "n/a",
                     f"{cpu:.1f}" if p else "n/a", f"{100 * p.cpu_busy:.0f}%" if p else "n/a",
                     f"{d.throughput:.1f}" if d else "n/a", f"{d.efficiency:.2f}" if d else "n/a",
                     f"{100 * d.cpu_busy:.0f}%" if d else "n/a"])
    return _table(["workers", "tradebot orders/s", "efficiency", "backlog e2e p50 ms", "CPU ms/order", "CPU busy",
                   "dramatiq tasks/s", "efficiency", "CPU busy"], rows)


def scaling_cpu_table(results: dict[str, Any]) -> list[str]:
    points = results.get("scaling") or []
    if not points:
        return []
    roles = sorted({k for p in points for k in p.cpu_ms_per_order})
    rows = [[str(p.workers), *(f"{p.cpu_ms_per_order.get(k, 0):.2f}" for k in roles),
             f"{sum(p.cpu_ms_per_order.values()):.2f}"] for p in points]
    return _table(["workers", *roles, "total"], rows)


def scaling_stage_table(results: dict[str, Any]) -> list[str]:
    points = [p for p in (results.get("scaling") or []) if p.stages]
    if not points:
        return []
    names = (("pre_trade", "claimed -> submitted"), ("broker", "submitted -> final"),
             ("post", "final -> journaled"), ("read_gap", "journaled -> next claim"),
             ("service", "claimed -> journaled"))
    rows = [[str(p.workers), *(f"{fmt_ms(p.stages[k].p50, 1)} / {fmt_ms(p.stages[k].p99, 1)}" for k, _ in names)]
            for p in points]
    return _table(["workers", *(f"{label} p50/p99 ms" for _, label in names)], rows)


def latency_table(results: dict[str, Any]) -> list[str]:
    pipe, tq = results.get("pipeline"), results.get("taskqueue")
    if not pipe or not tq or not tq.latency:
        return ["(not run)"]
    rows = []
    for rate, dq in sorted(tq.latency.items()):
        ours = pipe.at(rate)
        if not ours:
            continue
        a, b = ours.stages["end_to_end"], dq["end_to_end"]
        s1, s2 = ours.stages["overhead"], dq["to_submit"]
        rows.append([f"{rate}", fmt_ms(a.p50), fmt_ms(a.p99), fmt_ms(b.p50), fmt_ms(b.p99), fmt_ms(s1.p50),
                     fmt_ms(s2.p50)])
    return _table(["signals/s", "tradebot p50 ms", "tradebot p99 ms", "dramatiq p50 ms", "dramatiq p99 ms",
                   "tradebot to submit p50", "dramatiq to submit p50"], rows)


def peers_table(results: dict[str, Any]) -> list[str]:
    from benchmarks import peers

    systems = peers.systems(results)
    if not results.get("peers") or not systems:
        return ["(not run)"]
    rates = sorted({rate for s in systems for rate in s.to_submit})
    counts = sorted({n for s in systems for n in s.throughput})
    top = max(counts, default=0)
    rows = []
    for s in systems:
        if s.error:
            why = " ".join(s.error.replace("|", "/").split())[:160]  # one table cell
            rows.append([s.name, f"failed: {why}", *([""] * (len(rates) + 3))])
            continue
        rows.append([s.name, *(f"{fmt_ms(s.to_submit[r].p50)} / {fmt_ms(s.to_submit[r].p99)}" if r in s.to_submit
                               else "n/a" for r in rates),
                     " / ".join(f"{s.throughput[n]:.1f}" if n in s.throughput else "n/a" for n in counts),
                     fmt_ms(s.own_cpu_ms), fmt_ms(s.redis_cpu_ms), fmt_ms(s.per_core, 0)])
    met, text = peers.goal(systems)
    table = _table(["system", *(f"{r:g}/s send -> broker call p50 / p99 ms" for r in rates),
                    f"tasks/s at N={' / '.join(map(str, counts))}", f"own CPU ms/task (N={top})",
                    f"Redis CPU ms/task (N={top})", f"tasks per CPU-second (N={top})"], rows)
    return [*table, "", "Goal: tradebot ahead of each on latency, within 10% of the best on throughput per core: "
                        f"{_mark(met)} ({text})"]


def peers_section(results: dict[str, Any]) -> list[str]:
    from benchmarks import peers

    shown = [s for s in peers.systems(results) if not s.error]
    plot = ["![peers side by side](bench/peers.png)", ""] if len(shown) > 1 else []
    return ["## 4b. Peers: Dramatiq, taskiq, Celery", "", peers.ABOUT, "", *peers_table(results), "", *plot]


def _peers_plot(results: dict[str, Any], out_dir: Path, plt: Any) -> Path | None:
    """Throughput by worker processes and send -> broker call (p50, p99) by rate, every system."""
    from benchmarks import peers

    shown = [s for s in peers.systems(results) if not s.error]
    if len(shown) < 2:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n, system in enumerate(shown):
        style = ("o-", "s-", "^-", "v-", "D-")[n % 5]
        counts = sorted(system.throughput)
        left.plot(counts, [system.throughput[c] for c in counts], style, label=system.name)
        rates = sorted(system.to_submit)
        line = right.plot(rates, [system.to_submit[r].p50 for r in rates], style, label=f"{system.name} p50")
        right.plot(rates, [system.to_submit[r].p99 for r in rates], ":", color=line[0].get_color(),
                   label=f"{system.name} p99")
    left.set_xscale("log", base=2)
    left.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
    left.set_xlabel("worker processes")
    left.set_ylabel("tasks / s (50 ms broker)")
    left.set_title("Throughput")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("tasks / s sent (2 workers)")
    right.set_ylabel("send -> broker call (ms)")
    right.set_title("Latency to the broker call")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "peers.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def memory_table(results: dict[str, Any]) -> list[str]:
    points = results.get("scaling") or []
    tq = results.get("taskqueue")
    dq = {p.workers: p for p in (tq.scaling if tq else [])}
    if not points:
        return ["(not run)"]
    rows = []
    for p in points:
        i, l = p.memory_idle, p.memory_load or p.memory_idle
        d = dq.get(p.workers)
        dl = (d.memory_load or d.memory_idle) if d else None
        rows.append([str(p.workers), f"{i.worker_mean:.1f}", f"{l.worker_max:.1f}", f"{i.fleet_total:.0f}",
                     f"{l.fleet_total:.0f}", f"{dl.worker_max:.1f}" if dl else "n/a",
                     f"{dl.fleet_total:.0f}" if dl else "n/a"])
    lines = _table(["workers", "worker RSS idle (mean) MB", "worker RSS load (max) MB", "fleet idle MB",
                    "fleet load MB", "dramatiq worker load (max) MB", "dramatiq fleet load MB"], rows)
    last = points[-1].memory_load or points[-1].memory_idle
    if last and last.by_role:
        lines += ["", f"Per process at N={points[-1].workers} under load (max RSS, MB): " +
                  ", ".join(f"{k} {v:.1f}" for k, v in sorted(last.by_role.items()))]
    return lines


def poller_table(results: dict[str, Any]) -> list[str]:
    poller = results.get("poller")
    points = results.get("scaling") or []
    if not poller:
        return ["(not run)"]
    rows = [["idle fleet (poller only)", f"{poller.ticks}", f"{poller.data_requests_per_tick:.2f}",
             f"{poller.requests_per_tick:.2f}", fmt_ms(poller.price_age.p50, 0), fmt_ms(poller.price_age.p99, 0)]]
    pipe = results.get("pipeline")
    poller_routes = ("GET /v2/stocks/snapshots", "GET /v2/account", "GET /v2/positions", "GET /v2/clock")
    for x in (pipe.rates if pipe else []):
        per_signal = x.broker_requests_per_signal
        if not per_signal:
            continue
        per_second = {k: v * x.achieved_rate for k, v in per_signal.items() if k in poller_routes}
        rows.append([f"under load, {x.rate:g} signals/s (2 workers)", "",
                     f"{per_second.get('GET /v2/stocks/snapshots', 0) * poller.interval:.2f}",
                     f"{sum(per_second.values()) * poller.interval:.1f}", "", ""])
    for p in points:
        if p.price_age and p.price_age.n:
            per_order = {k: v for k, v in p.broker_requests_per_order.items() if k in poller_routes}
            snaps = per_order.get("GET /v2/stocks/snapshots", 0) * p.throughput * poller.interval
            every = sum(per_order.values()) * p.throughput * poller.interval
            rows.append([f"under load, {p.workers} workers, 50 ms broker", "",
                         f"{snaps:.2f}" if per_order else "", f"{every:.1f}" if per_order else "",
                         fmt_ms(p.price_age.p50, 0), fmt_ms(p.price_age.p99, 0)])
    lines = _table(["when", "ticks", "data requests/tick", "all requests/tick", "price age p50 ms",
                    "price age p99 ms"], rows)
    lines += ["", "Requests by route over the idle window: " +
              ", ".join(f"{k} {v}" for k, v in sorted(poller.by_route.items()))]
    if pipe and any(x.broker_requests_per_signal for x in pipe.rates):
        lines += ["", "Under load the poller's requests per tick are its account/positions refreshes: a worker asks "
                      "for one after every fill and the poller serves each ask at once. Broker requests per signal: " +
                  "; ".join(f"{x.rate:g}/s: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(
                      x.broker_requests_per_signal.items())) for x in pipe.rates)]
    return lines


def requests_table(results: dict[str, Any]) -> list[str]:
    points = results.get("requests")
    if not points:
        return ["(not run)"]
    delays = sorted({p.fill_delay for p in points})
    by = {(p.mode, p.fill_delay): p for p in points}
    rows = []
    for mode, label in (("events", "by events (listener)"), ("poll", "by polling")):
        for delay in delays:
            p = by.get((mode, delay))
            if p is None:
                continue
            routes = ", ".join(f"{k} {v}" for k, v in sorted(p.by_route.items()))
            rows.append([label, f"{delay:g} s", str(p.signals), f"{p.per_signal:.2f}", f"{p.signals_per_minute:.0f}",
                         routes])
    return _table(["following", "fill delay", "signals", "order-route requests / signal",
                   "signals / min at 200 req/min", "requests by route"], rows)


def retention_table(results: dict[str, Any]) -> list[str]:
    res = results.get("retention")
    if not res:
        return ["(not run)"]
    rows = [["before the first signal", "", f"{res.baseline_mb:.2f}", str(res.baseline_keys)]]
    rows += [[f"after {p.signals:,} signals", f"{p.peak_mb:.2f} MB, {p.peak_keys:,} keys", f"{p.used_mb:.2f}",
              str(p.keys)] for p in res.points]
    lines = _table(["when", "at the last signal (before trimming)", "Redis used_memory MB once retained", "keys"],
                   rows)
    return lines + ["", f"Growth from {res.points[0].signals:,} to {res.points[-1].signals:,} signals: "
                        f"{res.growth_mb:+.2f} MB; ledger fields left: {res.ledger_fields}."]


def targets_table(results: dict[str, Any]) -> list[str]:
    return _table(["target", "goal", "measured", "status"],
                  [[t.name, t.goal, t.value, _mark(t.met)] for t in targets(results)])


def profile_lines(results: dict[str, Any]) -> list[str]:
    pipe = results.get("pipeline")
    lines: list[str] = []
    for x in (pipe.rates if pipe else []):
        for prof in x.profiles:
            lines += ["", f"**{prof.name}** at {x.rate:g} signals/s: {prof.samples} samples, "
                          f"{prof.idle_pct:.0f}% waiting (socket/select/sleep).", "",
                      "| self time % | function |", "|---|---|"]
            lines += [f"| {pct:.1f} | `{func}` |" for func, pct in prof.self_top[:10]]
    return lines


def render_table(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    parts = [f"tradebot benchmarks ({'quick' if results.get('quick') else 'full'}) on {m.get('cores')} cores, "
             f"Python {m.get('python')}, Redis {m.get('redis')}, {m.get('date')}",
             "", "1. Floor", *floor_table(results),
             "", "2. Pipeline overhead: source XADD -> order submitted (2 workers, zero-latency broker)",
             *pipeline_table(results), "", "   CPU ms per signal by process", *pipeline_cpu_table(results),
             "", "3. Scaling (20 symbols, 50 ms per broker request) and 4. Dramatiq side by side",
             *scaling_table(results), "", "   CPU ms per order by process", *scaling_cpu_table(results),
             "", "   Where a worker's time per order goes", *scaling_stage_table(results),
             "", "4. End-to-end latency: source XADD / enqueue -> order final (2 workers, zero-latency broker)",
             *latency_table(results),
             "", "4b. Peers: send -> broker call (2 workers), throughput, throughput per core", *peers_table(results),
             "", "5. Memory (RSS)", *memory_table(results),
             "", "6. Price poller (20 symbols, 1 s interval)", *poller_table(results),
             "", "7. Request economy: order-route requests per signal by fill delay", *requests_table(results),
             "", "8. Bounded memory: Redis after 10,000 and 100,000 signals once retention applied",
             *retention_table(results),
             "", "Targets", *targets_table(results)]
    for name, error in results.get("errors", {}).items():
        parts += ["", f"SECTION {name} FAILED: {error}"]
    return "\n".join(parts)


# --------------------------------------------------------------------------- plots

def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    points = results.get("scaling") or []
    tq = results.get("taskqueue")
    if points or (tq and tq.scaling):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for name, pts, style in (("tradebot workers", points, "o-"),
                                 ("Dramatiq (RedisBroker), 1 thread/process", tq.scaling if tq else [], "s--")):
            if pts:
                left.plot([p.workers for p in pts], [p.throughput for p in pts], style, label=name)
                right.plot([p.workers for p in pts], [p.efficiency for p in pts], style, label=name)
        if points:
            base = points[0].throughput / points[0].workers
            ns = [p.workers for p in points]
            left.plot(ns, [base * n for n in ns], ":", color="gray", label="ideal (N x 1 worker)")
        right.axhline(EFFICIENCY_TARGET, color="red", linestyle=":", label=f"target {EFFICIENCY_TARGET}")
        for ax in (left, right):
            ax.set_xscale("log", base=2)
            ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
            ax.set_xlabel("worker processes")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        left.set_ylabel("orders / s (steady state)")
        left.set_title("Throughput, 50 ms per broker request, 20 symbols")
        right.set_ylabel("efficiency = thr(N) / (N x thr(1))")
        right.set_ylim(0, 1.15)
        right.set_title(f"Scaling efficiency ({results.get('machine', {}).get('cores')} cores)")
        fig.tight_layout()
        path = out_dir / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    pipe = results.get("pipeline")
    if pipe:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        samples = [v for x in pipe.rates for v in x.raw["overhead"]]
        low = max(0.05, min(samples) if samples else 0.1)
        high = max(samples) if samples else 100
        bins = [low * (high / low) ** (i / 60) for i in range(61)]
        for x in pipe.rates:
            left.hist(x.raw["overhead"], bins=bins, histtype="step", linewidth=1.5,
                      label=f"{x.rate:g}/s (p50 {x.stages['overhead'].p50:.2f}, p99 {x.stages['overhead'].p99:.2f} ms)")
        budget = floor_ms(results)
        if budget == budget:
            left.axvline(P50_FLOOR_FACTOR * budget, color="red", linestyle=":",
                         label=f"p50 goal ({P50_FLOOR_FACTOR:g} x floor)")
            left.axvline(P99_FLOOR_FACTOR * budget, color="black", linestyle=":",
                         label=f"p99 goal ({P99_FLOOR_FACTOR:g} x floor)")
        left.set_xscale("log")
        left.set_xlabel("source XADD -> order submitted (ms)")
        left.set_ylabel("signals")
        left.set_title("Pipeline overhead (2 workers, zero-latency broker)")
        left.legend(fontsize=8)
        if tq and tq.latency_raw:
            rate = TARGET_RATE if TARGET_RATE in tq.latency_raw else max(tq.latency_raw)
            ours = pipe.at(rate)
            data = [("tradebot", ours.raw["end_to_end"] if ours else []), ("Dramatiq", tq.latency_raw[rate])]
            allv = [v for _, d in data for v in d]
            lo, hi = max(0.1, min(allv)), max(allv)
            bins2 = [lo * (hi / lo) ** (i / 60) for i in range(61)]
            for name, d in data:
                if d:
                    right.hist(d, bins=bins2, histtype="step", linewidth=1.5,
                               label=f"{name} (p50 {Dist.of(d).p50:.1f}, p99 {Dist.of(d).p99:.1f} ms)")
            right.set_xscale("log")
            right.set_xlabel("enqueue -> order final (ms)")
            right.set_title(f"End to end at {rate}/s, 2 workers")
            right.legend(fontsize=8)
        else:
            right.axis("off")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        fig.tight_layout()
        path = out_dir / "latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    peers_png = _peers_plot(results, out_dir, plt)
    return written + ([peers_png] if peers_png else [])


# --------------------------------------------------------------------------- docs/benchmarks.md

def write_docs(results: dict[str, Any], out: Path, command: str) -> Path:
    from benchmarks import findings

    out.mkdir(parents=True, exist_ok=True)
    plots = plot(results, out / "bench")
    names = {p.name for p in plots}
    m = results.get("machine", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks.run`; `--quick` for a smoke run, `--profile` to add "
        "py-spy profiles). Performance goals live here, never in timed tests.",
        "",
        f"- command: `{command}`{' (quick mode: few samples, numbers indicative only)' if results.get('quick') else ''}",
        f"- machine: {m.get('cores')} cores ({m.get('cpu') or 'unknown CPU'}), {m.get('memory')} RAM, {m.get('os')}",
        f"- Python {m.get('python')} ({m.get('implementation')}), Redis {m.get('redis')} "
        f"(embedded redis-server, AOF everysec, loopback), redis-py with hiredis",
        f"- date: {m.get('date')}; run time {results.get('elapsed', 0):.0f} s; signal directions: "
        f"{results.get('sides')}",
        "",
        "Every number comes from real processes on this one machine: `tradebot paper-broker --always-open`, "
        "`tradebot poller`, `tradebot router`, `tradebot worker` x N (fixed strategy, 1 share per order), and "
        "the benchmark harness itself feeding the source stream. They all share the two cores.",
        "",
        "## Targets",
        "",
        *targets_table(results),
        "",
        *findings.analysis(results),
        "",
        "## 1. Floor: Redis from Python",
        "",
        *floor_table(results),
        "",
        "## 2. Pipeline overhead: source XADD -> order submitted",
        "",
        "2 workers, zero-latency paper broker, 4 symbols, signals XADDed at a fixed rate by the harness. "
        "Start = our clock right before XADD was sent (the router is often woken, and stamps `routed_at`, before "
        "the XADD reply is back in the harness, so an after-XADD stamp made the first hop negative; the "
        "journal's `source_at` is only the entry id's whole milliseconds); stages from the journal: router hop = -> `routed_at`, "
        "worker hop = `routed_at` -> `claimed_at`, pre-trade = `claimed_at` -> `submitted_at` (risk checks, "
        "sizing, ledger reservation, rate limiter), to final = -> `final_at`. \"p50 / floor\" divides the p50 by "
        "the pipeline's floor of section 1 (two bare stream hops + one pipelined read + one Lua reservation).",
        "",
        *pipeline_table(results),
        "",
        "CPU milliseconds per signal, by process (psutil, user+system):",
        "",
        *pipeline_cpu_table(results),
        "",
        "## 3. Scaling over worker processes (and 4. Dramatiq)",
        "",
        "20 symbols, paper broker latency 50 ms per request, workers added to one running fleet; the paper broker "
        "is reset (and positions re-seeded) before each N, since its per-request cost grows with every order it "
        "holds (see Why). At each N a backlog of about 7 s of work is XADDed at once; throughput = orders finished between the 10th and 90th "
        "percentile completion time / that span. Efficiency = thr(N) / (N x thr(1)).",
        "",
        *scaling_table(results),
        "",
        "CPU milliseconds per order, by process:",
        "",
        *scaling_cpu_table(results),
        "",
        "Where a worker's time per order goes (from the journal's stage times; \"journaled\" is the journal "
        "entry id's millisecond):",
        "",
        *scaling_stage_table(results),
        "",
        *(["![throughput vs workers](bench/throughput.png)", ""] if "throughput.png" in names else []),
        "## 4. Side by side: end-to-end latency against Dramatiq",
        "",
        "The same order task (read the cached price, submit 1 share to the paper broker, follow it to final) as a "
        "Dramatiq actor (`benchmarks/dq_tasks.py`, RedisBroker on the same Redis, default settings, 2 processes x "
        "1 thread), enqueued at the same rates. tradebot: XADD to the source stream -> `final_at`; Dramatiq: "
        "`send` -> final. Note that the tradebot path does more per order (routing and validation, done "
        "markers, ledger reservation, fleet-wide rate limiter, an atomic journal + XACK).",
        "",
        *latency_table(results),
        "",
        *(["![latency histograms](bench/latency.png)", ""] if "latency.png" in names else []),
        *peers_section(results),
        "## 5. Memory",
        "",
        "RSS (psutil) per worker process and of the whole fleet (redis-server, paper broker, poller, router, "
        "workers, harness), at idle (before each backlog) and the maximum sampled every 0.5 s under load.",
        "",
        *memory_table(results),
        "",
        "## 6. Price poller",
        "",
        "20 symbols, 1 s interval. Requests counted by the paper broker per route; price age = now - `polled_at` "
        "of a random symbol's cache hash, sampled every ~100 ms.",
        "",
        *poller_table(results),
        "",
        "## 7. Request economy",
        "",
        "Order-route REST requests (POST /v2/orders, GET /v2/orders/{id}, the lookup by client_order_id, "
        "DELETE) per signal, counted by the paper broker from a burst of buy signals until every one is "
        "journaled; one worker, the paper broker filling each order `fill delay` after it is accepted. "
        "*By events*: `tradebot listener` holds the trade_updates stream and the worker waits for its "
        "order's events (`--follow events`, the default); *by polling*: no listener, `--follow poll`. "
        "Alpaca allows 200 requests a minute per account.",
        "",
        *requests_table(results),
        "",
        "## 8. Bounded memory",
        "",
        "Redis `used_memory` and DBSIZE after 10,000 and after 100,000 signals, read once retention has "
        "applied (the harness waits until the streams and the journal are trimmed and the markers "
        "expired). Retention set to seconds for the run (`TRADEBOT_STREAM_RETENTION=5`, journal and DLQ "
        "15 s; the defaults are 1 h and 30 days, the same code). 2 workers; the first 500 signals are "
        "real orders, the rest skips under the kill switch (same stream, marker and journal footprint).",
        "",
        *retention_table(results),
        "",
    ]
    prof = profile_lines(results)
    if prof:
        lines += ["## Profiles (py-spy, `--profile`)", *prof, ""]
    for name, error in results.get("errors", {}).items():
        lines += [f"**Section {name} failed:** `{error[:2000]}`", ""]
    path = out / "benchmarks.md"
    path.write_text("\n".join(lines))
    return path
