"""Soak versions of the fault scenarios (`make soak` = `pytest -m soak`; `make test` skips them).

Same runners and invariants as tests/test_faults.py (tests/faults/harness.py), longer and harder:
1,000 signals under worker (and router) kill -9s, four Redis restarts, broker faults over 300
signals with more hung orders and a longer 429 storm, and 10,000 bad-input entries.
Takes about 5 minutes on 2 cores. The figures printed (pytest -s) go into docs/reliability.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from faults.harness import run_bad_input, run_broker_faults, run_redis_restarts, run_worker_crashes

pytestmark = pytest.mark.soak


def report(name: str, figures: dict) -> None:
    print(f"\nFIGURES soak {name}: {json.dumps(figures, sort_keys=True, default=str)}")


def test_soak_worker_and_router_kill9(tmp_path: Path) -> None:
    figures = run_worker_crashes(tmp_path, signals=1000, rate=25, workers=3, kill_every=2.0, min_kills=15,
                                 router_every=6, drain_timeout=240)
    report("worker_crashes", figures)
    assert figures["kills"] >= 15 and figures["router_kills"] >= 2


def test_soak_redis_restarts(tmp_path: Path) -> None:
    figures = run_redis_restarts(tmp_path, signals=1000, rate=25, restarts=4, down_for=3.0, workers=3,
                                 drain_timeout=240)
    report("redis_restarts", figures)
    assert figures["redis_restarts"] == 4


def test_soak_broker_faults(tmp_path: Path) -> None:
    figures = run_broker_faults(tmp_path, signals=300, rate=5, fault_500=0.08, fault_429=0.08, fault_hang=0.04,
                                hang_seconds=16.0, storm_window=6.0, hung_posts=4, workers=3, drain_timeout=300)
    report("broker_faults", figures)
    assert figures["faults_injected"].get("hang", 0) >= 4
    # liveness: 20% faults slow the fleet down, they must not stop it. Fails while finding 1 of
    # docs/reliability.md is open (a 500 makes the poller sleep until X-RateLimit-Reset, up to 30 s:
    # 2-26 of 153 buys filled, prices 30-50 s old); with it fixed: 127 of 153, at most 8.8 s old
    assert figures["max_price_age_s"] <= 20 and figures["buys_filled"] * 3 >= figures["buy_signals"], (
        f"the market cache went {figures['max_price_age_s']}s stale and {figures['buys_filled']} of "
        f"{figures['buy_signals']} buys filled; not filled because: {figures['not_filled_because']}")


def test_soak_bad_input(tmp_path: Path) -> None:
    figures = run_bad_input(tmp_path, entries=10_000, good_every=5, workers=3, drain_timeout=300)
    report("bad_input", figures)
    assert figures["dead_lettered"] == figures["bad"] + figures["junk_on_signals_stream"]
