"""The "why" part of docs/benchmarks.md: explanations computed from this run's numbers, plus what
profiling found (kept here as text, since the doc is regenerated on every run)."""
from __future__ import annotations

import math
import os
from typing import Any

from benchmarks.common import fmt_ms

# What py-spy / pyinstrument showed when these benchmarks were written (see the report of the
# "Benchmarks" issue); numbers in the generated sections are from the current run.
PROFILE_NOTES: list[str] = []


def analysis(results: dict[str, Any]) -> list[str]:
    lines = ["## Why (computed from this run)", ""]
    lines += _pipeline(results) + _scaling(results) + _versus(results) + _memory(results)
    if PROFILE_NOTES:
        lines += ["### What profiling showed", "", *PROFILE_NOTES, ""]
    return lines


def _pipeline(results: dict[str, Any]) -> list[str]:
    pipe, floor = results.get("pipeline"), results.get("floor")
    if not pipe or not floor:
        return []
    x = pipe.at(50) or pipe.rates[-1]
    s = x.stages
    rtt = floor.round_trip_ms
    total = s["overhead"].p50
    parts = [("router hop", s["router_hop"].p50), ("worker hop", s["worker_hop"].p50),
             ("pre-trade", s["pre_trade"].p50)]
    biggest = max(parts, key=lambda kv: kv[1])
    cpu = x.cpu_ms_per_signal
    worker_cpu = cpu.get("worker", math.nan)
    lines = [
        f"**Pipeline.** At {x.rate:g} signals/s the p50 of {fmt_ms(total)} ms splits into "
        + ", ".join(f"{name} {fmt_ms(v)} ms" for name, v in parts)
        + f" (medians of each stage; they need not add up exactly). A PING round trip is {fmt_ms(rtt, 3)} ms and "
        f"one bare stream hop to a blocked reader in another process {fmt_ms(floor.hop.p50, 3)} ms, so two hops "
        f"alone cost ~{fmt_ms(2 * floor.hop.p50)} ms: the 2 x 4 RTT = {fmt_ms(8 * rtt, 3)} ms goal is below what "
        f"two hops between Python processes cost on this machine. The largest stage is the {biggest[0]}. "
        f"CPU per signal: worker {fmt_ms(worker_cpu)} ms, router {fmt_ms(cpu.get('router', math.nan))} ms, "
        f"paper broker {fmt_ms(cpu.get('paper-broker', math.nan))} ms, redis {fmt_ms(cpu.get('redis', math.nan))} ms.",
        "",
    ]
    return lines


def _scaling(results: dict[str, Any]) -> list[str]:
    points = results.get("scaling") or []
    if len(points) < 2:
        return []
    cores = results.get("machine", {}).get("cores") or os.cpu_count() or 1
    one, last = points[0], points[-1]
    cpu_last = sum(last.cpu_ms_per_order.values())
    ceiling = cores * 1000 / cpu_last if cpu_last else math.nan
    ideal = last.workers * one.throughput
    top = sorted(last.cpu_ms_per_order.items(), key=lambda kv: -kv[1])[:4]
    knee = next((p for p in points if p.efficiency < 0.9), None)
    lines = [
        f"**Scaling.** One worker does {one.throughput:.1f} orders/s (50 ms broker + its own work per order). "
        f"Ideal at N={last.workers} is {ideal:.0f}/s; measured {last.throughput:.1f}/s (efficiency "
        f"{last.efficiency:.2f}). Each order costs {cpu_last:.1f} ms of CPU across the fleet at N={last.workers} ("
        + ", ".join(f"{k} {v:.1f}" for k, v in top)
        + f"), so {cores} cores cap the fleet near {ceiling:.0f} orders/s whatever N is; the machine was "
        f"{100 * last.cpu_busy:.0f}% busy during that backlog."
        + (f" Efficiency first drops below 0.9 at N={knee.workers} ({knee.efficiency:.2f}, "
           f"{100 * knee.cpu_busy:.0f}% CPU busy)." if knee else " Efficiency stays >= 0.9 throughout."),
        "",
    ]
    return lines


def _versus(results: dict[str, Any]) -> list[str]:
    pipe, tq = results.get("pipeline"), results.get("taskqueue")
    if not pipe or not tq or not tq.latency:
        return []
    lines = []
    for rate, dq in sorted(tq.latency.items()):
        ours = pipe.at(rate)
        if not ours:
            continue
        lines.append(f"at {rate}/s tradebot reaches the broker after {fmt_ms(ours.stages['overhead'].p50)} ms "
                     f"(p50) vs Dramatiq {fmt_ms(dq['to_submit'].p50)} ms; Dramatiq's worker picks a task up "
                     f"{fmt_ms(dq['to_start'].p50)} ms (p50, p99 {fmt_ms(dq['to_start'].p99)}) after `send`")
    if not lines:
        return []
    return ["**Versus Dramatiq.** " + "; ".join(lines) + ". Dramatiq's Redis consumers do not block: an idle "
            "consumer polls with an exponential backoff (5 ms doubling up to `dramatiq_worker_timeout`, 1 s), so a "
            "task that arrives while its worker sleeps waits for the next poll; tradebot's workers sit in a "
            "blocking XREADGROUP and are woken by the XADD itself.", ""]


def _memory(results: dict[str, Any]) -> list[str]:
    points = results.get("scaling") or []
    if not points:
        return []
    worst = max((p.memory_load or p.memory_idle).worker_max for p in points)
    return [f"**Memory.** The largest worker RSS seen was {worst:.1f} MB; a worker is one Python interpreter with "
            "redis-py, httpx and the bot modules imported (no web stack: the paper broker's Starlette/uvicorn are "
            "imported only by `tradebot paper-broker`).", ""]
