"""Fault tests against the real fleet (short versions; tests/test_soak.py runs the long ones).

Every scenario runs real processes (redis-server with AOF, the paper broker, poller, router,
workers, generator: see tests/faults/harness.py), breaks something, waits for the fleet to drain
and checks the three invariants: each signal is exactly one journal or DLQ entry, the broker holds
at most one order per signal, broker positions equal the journaled fills.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faults.harness import (
    Fleet,
    FleetOptions,
    add_entries,
    assert_alive,
    bad_payloads,
    check_invariants,
    run_bad_input,
    run_broker_faults,
    run_redis_restarts,
    run_worker_crashes,
    start_core,
    wait_drained,
    wait_for,
)

pytestmark = pytest.mark.slow


def report(name: str, figures: dict) -> None:
    """Figures go to stdout (``pytest -s`` shows them; docs/reliability.md records them)."""
    print(f"\nFIGURES {name}: {json.dumps(figures, sort_keys=True, default=str)}")


def test_worker_kill9_loses_and_doubles_nothing(tmp_path: Path) -> None:
    figures = run_worker_crashes(tmp_path, signals=200, rate=20, workers=3, kill_every=2.0, min_kills=5)
    report("worker_crashes", figures)
    assert figures["kills"] >= 5


def test_redis_restart_mid_flow_every_process_reconnects(tmp_path: Path) -> None:
    figures = run_redis_restarts(tmp_path, signals=150, rate=25, restarts=2, down_for=2.0, workers=2)
    report("redis_restarts", figures)
    assert figures["redis_restarts"] == 2


@pytest.fixture(scope="module")
def broker_fault_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run of the broker-fault scenario, shared by the tests below."""
    figures = run_broker_faults(tmp_path_factory.mktemp("broker_faults"), signals=60, rate=6, fault_500=0.08,
                                fault_429=0.08, fault_hang=0.04, hang_seconds=16.0, storm_window=3.0, hung_posts=2,
                                workers=3)
    report("broker_faults", figures)
    return figures


def test_broker_500_429_hang_no_duplicate_orders(broker_fault_run: dict) -> None:
    # the invariants, the 429 storm and the reasons are checked inside the run; here: it did inject
    injected = broker_fault_run["faults_injected"]
    assert injected.get("hang", 0) >= 2 and injected.get("429", 0) > 0, injected


@pytest.mark.xfail(reason="bot/alpaca/client.py AlpacaClient._call waits for X-RateLimit-Reset (up to 30 s) after "
                          "a 500: one 500 freezes the poller's tick and the market cache goes stale, so most "
                          "signals are skipped; see docs/reliability.md, finding 1", strict=False)
def test_broker_faults_signals_still_trade(broker_fault_run: dict) -> None:
    """20% faults slow the fleet down; they must not stop it: most buy signals still fill."""
    figures = broker_fault_run
    assert figures["buys_filled"] * 2 >= figures["buy_signals"], (
        f"only {figures['buys_filled']} of {figures['buy_signals']} buys filled; why the rest did not: "
        f"{figures['not_filled_because']}")


def test_bad_input_goes_to_dlq_with_reason_and_good_signals_trade(tmp_path: Path) -> None:
    figures = run_bad_input(tmp_path, entries=1000, good_every=5, workers=2)
    report("bad_input", figures)
    assert figures["dead_lettered"] == figures["bad"] + figures["junk_on_signals_stream"]


# --------------------------------------------------------------------------- secrets and auth

# Recognisable canaries: a leak of any of them, whole or in part, contains "leakcanary".
API_KEY = "PKLEAKCANARY7Q2W9E4R"
SECRET_KEY = "leakcanary-secret-X8v2Lm4Nq9"
REDIS_PASSWORD = "leakcanary-redis-pw-T5r8Yz"
WRONG_SECRET = "leakcanary-wrong-secret-Jh3"
CANARY = "leakcanary"


def _tradebot(fleet: Fleet, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env or fleet.env(), capture_output=True,
                          text=True, errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)


def _leaks(text: str) -> list[str]:
    lowered = text.lower()
    found = []
    start = 0
    while (at := lowered.find(CANARY, start)) >= 0:
        found.append(text[max(0, at - 60):at + 40].replace("\n", " "))
        start = at + 1
    return found


def test_secrets_never_reach_logs_journal_dlq_or_status(tmp_path: Path) -> None:
    """Keys and the Redis password on every path that logs: normal trading, broker faults, a killed
    worker, bad input, a poller with a wrong secret, operator commands."""
    options = FleetOptions(api_key=API_KEY, secret_key=SECRET_KEY, redis_password=REDIS_PASSWORD, seed=15)
    with Fleet(tmp_path, options) as fleet:
        names = start_core(fleet, 2, broker_flags=("--fault-500", "0.05", "--fault-429", "0.03"))
        assert REDIS_PASSWORD in fleet.redis_url  # the URL carries the password: auth works end to end
        # a second poller with a wrong secret: its 401s are logged, the secret must not be
        fleet.add("poller-wrong-secret", "poller", "--interval", "1", env=fleet.env(ALPACA_SECRET_KEY=WRONG_SECRET))
        generator = fleet.start_generator(40, 20, seed=15)
        add_entries(fleet.client(decode=False), "nvda", bad_payloads(40, 15, options.symbols, good_every=4))
        wait_for(lambda: not generator.alive, 60, "the generator", diagnose=fleet.tails)
        fleet.procs["w0"].crash()
        fleet.restart("w0")
        wait_drained(fleet, 60, expected_sources=80)
        outcome = check_invariants(fleet)
        assert outcome.by_outcome["filled"] > 0, "nothing traded: auth did not work end to end"
        assert_alive(fleet, ["paper-broker", "poller", "router", *names])

        var_dir = str(tmp_path / "var")
        outputs: dict[str, str] = {}
        for args in (("status", "--json"), ("status",), ("orders", "--json", "--last", "500"),
                     ("dlq", "list", "--json")):
            done = _tradebot(fleet, *args, "--var-dir", var_dir)
            if done.returncode == 2 and "No such command" in done.stderr:
                pytest.skip(f"`tradebot {args[0]}` does not exist yet")
            assert done.returncode == 0, f"tradebot {' '.join(args)} failed: {done.stderr[-2000:]}"
            outputs[f"tradebot {' '.join(args)}"] = done.stdout + done.stderr
        assert json.loads(outputs["tradebot status --json"])  # it is JSON and says something

        leaks: dict[str, list[str]] = {}
        for name, text in {**fleet.log_texts(), **outputs}.items():
            if _leaks(text):
                leaks[name] = _leaks(text)[:3]
        # every value in Redis: journal, DLQ, market cache, ledger, markers...
        rb = fleet.client(decode=False)
        for key in rb.scan_iter(count=1000):
            kind = rb.type(key).decode()
            value = {"string": lambda: rb.get(key), "hash": lambda: rb.hgetall(key),
                     "stream": lambda: rb.xrange(key), "list": lambda: rb.lrange(key, 0, -1),
                     "set": lambda: rb.smembers(key), "zset": lambda: rb.zrange(key, 0, -1)}.get(kind, lambda: b"")()
            text = repr(key) + repr(value)
            if _leaks(text):
                leaks[f"redis key {key!r}"] = _leaks(text)[:3]
        # and every file the fleet wrote (logs, the redis-server log)
        for path in tmp_path.rglob("*.log"):
            if _leaks(path.read_text(errors="replace")):
                leaks[str(path)] = _leaks(path.read_text(errors="replace"))[:3]
        assert not leaks, f"secrets leaked: {json.dumps(leaks, indent=1)}"
        wrong = fleet.procs["poller-wrong-secret"].log_text()
        assert "401" in wrong or "not authorized" in wrong.lower() or "Unauthorized" in wrong, (
            f"the wrong-secret poller logged no auth failure:\n{wrong[-2000:]}")
        report("secrets", {"log_files": len(fleet.procs), "redis_keys_scanned": sum(1 for _ in rb.scan_iter()),
                           "commands_checked": list(outputs), "leaks": 0, **outcome.figures()})


WRONG_PASSWORD = "leakcanary-not-the-password"


@pytest.mark.parametrize("url_kind", ["wrong password", "no password"])
def test_wrong_redis_password_fails_fast_with_a_clear_message(tmp_path: Path, url_kind: str) -> None:
    options = FleetOptions(redis_password=REDIS_PASSWORD)
    with Fleet(tmp_path, options) as fleet:
        fleet.start_redis()
        fleet.start_broker()
        bad_url = (fleet.redis_url.replace(REDIS_PASSWORD, WRONG_PASSWORD) if url_kind == "wrong password"
                   else fleet.redis_url.replace(f":{REDIS_PASSWORD}@", ""))
        env = fleet.env(REDIS_URL=bad_url)
        commands = {"poller": ("poller",), "router": ("router",), "worker": ("worker", *Fleet.worker_args("w0")),
                    "generator": ("generate", "--always-open", "--rate", "5", "--count", "5")}
        for name, args in commands.items():
            fleet.add(name, args[0], *args[1:], env=env)
        # check() says "refused the credentials"; the rest are Redis's own words (no password given: redis-py's
        # HELLO is refused with "... must be called with the client already authenticated")
        clear = ("refused the credentials", "invalid username-password", "NOAUTH", "Authentication required",
                 "WRONGPASS", "already authenticated")

        def settled(name: str) -> bool:
            proc = fleet.procs[name]
            said = any(marker in proc.log_text() for marker in clear)
            return said and (not proc.alive or proc.log_text().count("\n") > 3)

        wait_for(lambda: all(settled(n) for n in commands), 30, "every process to report the refused credentials",
                 diagnose=fleet.tails)
        behaviour = {}
        for name in commands:
            proc = fleet.procs[name]
            text = proc.log_text()
            assert CANARY not in text.lower(), f"{name} showed the password:\n{text[-1500:]}"
            assert "Traceback" not in text, f"{name} crashed with a traceback instead of a message:\n{text[-3000:]}"
            behaviour[name] = f"exit {proc.returncode}" if not proc.alive else "running, logging the auth error"
            if not proc.alive:
                assert proc.returncode != 0, f"{name} exited 0 although it cannot use Redis"
        status = _tradebot(fleet, "status", "--json", "--var-dir", str(tmp_path / "var"), env=env)
        assert status.returncode != 0, "tradebot status exited 0 with refused credentials"
        assert CANARY not in (status.stdout + status.stderr).lower()
        behaviour["status"] = f"exit {status.returncode}"
        report(f"auth {url_kind}", behaviour)
