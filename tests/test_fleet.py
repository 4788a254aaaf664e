"""The fleet: what `tradebot up` plans (fast), and the real thing under supervisord (slow)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import redis

from bot import fleet
from bot.embedded_redis import EmbeddedRedis, free_port
from bot.keys import Keys
from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY

KEYS = Keys("tradebot")
TRADEBOT = [sys.executable, "-m", "bot.cli"]


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without any fleet/broker/Redis setting that could leak in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRADEBOT_", "ALPACA_", "SUPERVISOR_")) and k != "REDIS_URL"}
    env["TRADEBOT_WEB_PORT"] = str(free_port())  # never the documented 8770: something else may listen there
    env.update(extra)
    return env


# ----------------------------------------------------------------------------- the plan (fast)

def test_plan_without_redis_or_credentials_runs_both_locally(tmp_path: Path) -> None:
    plan = fleet.plan_fleet(var_dir=tmp_path / "var", workers=3, redis_port=7001, paper_port=7002, env=base_env())
    assert plan.programs == ("redis", "paper-broker", "poller", "listener", "router", "worker", "web")
    assert plan.process_names() == ["redis", "paper-broker", "poller", "listener", "router", "worker-00", "worker-01", "worker-02", "web"]
    env = plan.env
    assert env["REDIS_URL"] == "redis://127.0.0.1:7001/0"
    assert env["ALPACA_BASE_URL"] == env["ALPACA_DATA_URL"] == "http://127.0.0.1:7002"
    assert (env["ALPACA_API_KEY"], env["ALPACA_SECRET_KEY"]) == (DEMO_API_KEY, DEMO_SECRET_KEY)
    assert env["TRADEBOT_WORKERS"] == "3" and env["TRADEBOT_VAR"] == str((tmp_path / "var").resolve())
    assert env["TRADEBOT_PYTHON"] == sys.executable
    assert [env[f] for f in fleet.PROGRAM_FLAGS.values()] == ["true"] * 7 + ["false", "false"]
    assert env["TRADEBOT_PAPER_FLAGS"] == "" and env["TRADEBOT_GENERATOR_FLAGS"] == ""


def test_plan_with_redis_url_and_alpaca_credentials_starts_neither(tmp_path: Path) -> None:
    env = base_env(REDIS_URL="redis://:sekretpw@redis.example:6380/2", ALPACA_API_KEY="AKREALKEY123",
                   ALPACA_SECRET_KEY="real-secret-value")
    plan = fleet.plan_fleet(var_dir=tmp_path, env=env)
    assert plan.programs == ("poller", "listener", "router", "worker", "web")
    assert not plan.embedded_redis and not plan.paper_broker
    assert plan.env["REDIS_URL"] == "redis://:sekretpw@redis.example:6380/2"
    assert plan.env["ALPACA_BASE_URL"] == "https://paper-api.alpaca.markets"
    assert plan.env["TRADEBOT_START_REDIS"] == plan.env["TRADEBOT_START_PAPER_BROKER"] == "false"
    shown = json.dumps(fleet.public_env(plan)) + json.dumps(plan.description())
    for secret in ("sekretpw", "AKREALKEY123", "real-secret-value"):
        assert secret not in shown
    assert "redis://:***@redis.example:6380/2" in shown
    lines = "\n".join(fleet.summary_lines(plan, 1, [], detach=True))
    assert "sekretpw" not in lines and "Alpaca" in lines


def test_plan_demo_turns_the_generator_on_and_the_clock_open(tmp_path: Path) -> None:
    plan = fleet.plan_fleet(var_dir=tmp_path, demo=True, symbols="NVDA,AAPL", env=base_env())
    assert plan.programs[-1] == "generator"
    assert plan.env["TRADEBOT_PAPER_FLAGS"] == "--always-open"
    assert plan.env["TRADEBOT_GENERATOR_FLAGS"] == f"--always-open --first-buy --wait-for-router --probability {fleet.DEMO_PROBABILITY!r}"
    assert plan.env["TRADEBOT_SYMBOLS"] == "NVDA,AAPL" and plan.settings.symbols == ("NVDA", "AAPL")


def test_plan_extra_flags_are_checked_by_the_programs_own_parsers(tmp_path: Path) -> None:
    plan = fleet.plan_fleet(var_dir=tmp_path, env=base_env(),
                            extra_flags={"worker": "--strategy fixed --fixed-qty 1", "paper-broker": "--latency 0.01"})
    assert plan.env["TRADEBOT_WORKER_FLAGS"] == "--strategy fixed --fixed-qty 1"
    with pytest.raises(fleet.FleetError, match="unknown strategy 'sometimes': choose one of"):
        fleet.plan_fleet(var_dir=tmp_path, env=base_env(), extra_flags={"worker": "--strategy sometimes"})
    with pytest.raises(fleet.FleetError, match="No closing quotation"):
        fleet.plan_fleet(var_dir=tmp_path, env=base_env(TRADEBOT_ROUTER_FLAGS="--block-ms '5"))


@pytest.mark.parametrize("kwargs, env, message", [
    ({"only": ("worker",)}, {}, "--only needs the shared Redis"),
    ({"only": ("worker",)}, {"REDIS_URL": "redis://h:1/0"}, "set ALPACA_BASE_URL to the fleet's paper broker"),
    ({"workers": 0}, {}, "at least 1 worker"),
    ({}, {"ALPACA_API_KEY": "only-the-key"}, "set both ALPACA_API_KEY and ALPACA_SECRET_KEY"),
    ({"probability": 2.0}, {}, "must be in (0, 1]"),
])
def test_plan_refuses_what_cannot_work(tmp_path: Path, kwargs: dict, env: dict, message: str) -> None:
    with pytest.raises(fleet.FleetError) as err:
        fleet.plan_fleet(var_dir=tmp_path, env=base_env(**env), **kwargs)
    assert message in str(err.value)


def test_plan_bad_settings_are_config_errors(tmp_path: Path) -> None:
    from bot.config import ConfigError

    with pytest.raises(ConfigError):
        fleet.plan_fleet(var_dir=tmp_path, env=base_env(TRADEBOT_SYMBOLS="NOT A TICKER"))


def test_plan_only_workers_on_another_host(tmp_path: Path) -> None:
    env = base_env(REDIS_URL="redis://10.0.0.5:6379/0", ALPACA_BASE_URL="http://10.0.0.5:8800")
    plan = fleet.plan_fleet(var_dir=tmp_path, only=("worker",), workers=4, env=env)
    assert plan.programs == ("worker",) and plan.process_names() == [f"worker-0{n}" for n in range(4)]
    assert plan.env["ALPACA_API_KEY"] == DEMO_API_KEY  # the fleet's paper broker takes the demo pair
    assert plan.env["TRADEBOT_START_REDIS"] == "false" and plan.env["TRADEBOT_START_ROUTER"] == "false"
    router_only = fleet.plan_fleet(var_dir=tmp_path, only=("router",), env=base_env(REDIS_URL="redis://h:1/0"))
    assert router_only.programs == ("router",)  # the router needs no broker


def test_supervisord_conf_as_supervisord_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.options import ServerOptions

    plan = fleet.plan_fleet(var_dir=tmp_path / "var", workers=3, demo=True, redis_port=7001, paper_port=7002,
                            env=base_env())
    for folder in (plan.paths.var_dir, plan.paths.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for name, value in plan.env.items():
        monkeypatch.setenv(name, value)
    options = ServerOptions()
    options.configfile = str(plan.config_file)
    options.process_config(do_usage=False)

    section = options.configroot.supervisord
    [server] = section.server_configs  # the unix socket only: no inet_http_server
    assert server["family"] == socket.AF_UNIX and server["chmod"] == 0o700
    assert server["file"] == str(plan.paths.socket)
    assert section.pidfile == str(plan.paths.pidfile)
    assert section.logfile == str(plan.paths.supervisord_log)
    groups = {g.name: g for g in options.process_group_configs}
    assert set(groups) == {"redis", "paper-broker", "tradebot"}
    # shutdown goes group by group (reverse priority): the bot first, then the paper broker, Redis last
    assert groups["redis"].priority < groups["paper-broker"].priority < groups["tradebot"].priority
    procs = {p.name: p for g in options.process_group_configs for p in g.process_configs}
    assert sorted(procs, key=lambda n: procs[n].priority) == [
        "redis", "paper-broker", "poller", "listener", "router", "worker-00", "worker-01", "worker-02", "web", "notify", "generator"]
    for name, proc in procs.items():
        # every program of this plan autostarts; the notifier only with TRADEBOT_NOTIFY set
        assert proc.autostart == (name != "notify") and proc.stopasgroup and proc.killasgroup
        assert proc.stopsignal == signal.SIGTERM
        assert proc.stdout_logfile == str(plan.paths.log_dir / f"{name}.log")
        assert proc.startretries >= 10
    for n in range(3):
        worker = procs[f"worker-0{n}"]
        assert worker.stopwaitsecs >= 30  # longer than the worker's order timeout
        assert f"worker --consumer worker-0{n}@" in worker.command
    assert procs["redis"].command.endswith(f"embedded-redis --port 7001 --dir {plan.paths.var_dir}/redis")
    assert "--always-open" in procs["paper-broker"].command and "--port 7002" in procs["paper-broker"].command
    assert "[inet_http_server]" not in plan.config_file.read_text()


def test_down_without_a_fleet_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run([*TRADEBOT, "down", "--var-dir", str(tmp_path)], env=base_env(), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert f"no fleet is running in {tmp_path}" in result.stderr


# ----------------------------------------------------------------------------- the real fleet (slow)

def wait_for(what: str, condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_everything(var_dir: Path) -> None:
    """Failure path: SIGKILL supervisord and every process it started."""
    pid = fleet.read_pid(fleet.FleetPaths.of(var_dir))
    if pid is None:
        return
    for target in [*descendants(pid), pid]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tradebot(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    # generous: `up` alone may take supervisord's start plus START_TIMEOUT (45 s) before it answers
    return subprocess.run([*TRADEBOT, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def fleet_env(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    var_dir = tmp_path / "var"
    # the account's 200 requests/min budget (our limiter, and the paper broker's X-RateLimit headers,
    # see --rate-limit below) would stretch 100 orders over a minute: lift it for this test
    env = base_env(TRADEBOT_RATE_LIMIT="100000", TRADEBOT_SYMBOLS="NVDA", TRADEBOT_SOURCE_STREAMS="nvda")
    try:
        yield var_dir, env
    finally:
        kill_everything(var_dir)


@pytest.mark.slow
def test_the_fleet_end_to_end(fleet_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    var_dir, env = fleet_env
    redis_port, paper_port = free_port(), free_port()
    up = tradebot("up", "--detach", "--var-dir", str(var_dir), "--workers", "3", "--redis-port", str(redis_port),
                  "--paper-port", str(paper_port), "--paper-flags", "--always-open --rate-limit 100000",
                  "--worker-flags", "--strategy fixed --fixed-qty 1", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "tradebot fleet is up" in up.stdout and "WARNING" not in up.stdout
    assert f"redis://127.0.0.1:{redis_port}/0" in up.stdout and f"http://127.0.0.1:{paper_port}" in up.stdout
    supervisord_pid = fleet.read_pid(fleet.FleetPaths.of(var_dir))
    assert supervisord_pid
    # a second fleet in the same folder is refused
    again = tradebot("up", "--detach", "--var-dir", str(var_dir), env=env)
    assert again.returncode == 1 and "already running" in again.stderr

    described = json.loads((var_dir / "fleet.json").read_text())
    redis_url, broker_url = described["redis_url"], described["broker_url"]
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    late_worker: subprocess.Popen | None = None
    try:
        wait_for("the poller's first prices", lambda: r.hget(KEYS.prices("NVDA"), "ask"))

        # another worker, started by hand against the same Redis, joins the group
        late_log = tmp_path / "late-worker.log"
        late_env = {**env, "REDIS_URL": redis_url, "ALPACA_BASE_URL": broker_url, "ALPACA_DATA_URL": broker_url}
        with late_log.open("wb") as out:
            late_worker = subprocess.Popen([*TRADEBOT, "worker", "--consumer", "late-worker", "--strategy", "fixed",
                                            "--fixed-qty", "1"], env=late_env, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for("the late worker to be ready", lambda: "worker late-worker ready" in late_log.read_text())

        generated = tradebot("generate", "--count", "100", "--rate", "50", "--always-open", "--seed", "11",
                             env={**env, "REDIS_URL": redis_url})
        assert generated.returncode == 0, generated.stderr
        source_ids = {entry_id for entry_id, _ in r.xrange("nvda")}
        assert len(source_ids) == 100
        wait_for("100 journal entries", lambda: r.xlen(KEYS.orders) >= 100, timeout=40)

        journal = [fields for _, fields in r.xrange(KEYS.orders)]
        assert len(journal) == 100 and {j["source_id"] for j in journal} == source_ids
        assert r.xlen(KEYS.dlq) == 0
        consumers = {j["consumer"] for j in journal}
        assert "late-worker" in consumers, consumers  # the late worker took work
        assert any(c.startswith("worker-0") for c in consumers), consumers

        # every order the journal names is at the broker, and the broker has no other order
        response = httpx.get(f"{broker_url}/v2/orders", params={"status": "all", "limit": 500},
                             headers={"APCA-API-KEY-ID": DEMO_API_KEY, "APCA-API-SECRET-KEY": DEMO_SECRET_KEY})
        response.raise_for_status()
        broker_orders = {o["id"]: o for o in response.json()}
        journaled = {j["order_id"]: j for j in journal if j.get("order_id")}
        assert journaled and set(journaled) == set(broker_orders)
        for order_id, entry in journaled.items():
            assert broker_orders[order_id]["client_order_id"] == entry["client_order_id"]
            assert broker_orders[order_id]["status"] == entry["status"]

        status_run = tradebot("status", "--json", "--var-dir", str(var_dir), env=env)
        assert status_run.returncode == 0, status_run.stderr
        status = json.loads(status_run.stdout)
        processes = {p["name"]: p for p in status["fleet"]["processes"]}
        assert set(processes) == {"redis", "paper-broker", "poller", "listener", "router", "worker-00", "worker-01", "worker-02", "web"}
        assert {p["state"] for p in processes.values()} == {"RUNNING"}
        assert status["fleet"]["supervisord_pid"] == supervisord_pid
        assert status["redis"]["url"] == redis_url  # found through var/fleet.json: REDIS_URL is not set
        streams = {s["name"]: s for s in status["streams"]}
        assert streams["nvda"]["length"] == 100 and streams[KEYS.orders]["length"] == 100
        assert streams[KEYS.signals]["groups"][0]["pending"] == 0 and status["dlq"] == 0
        child_pids = [p["pid"] for p in processes.values()]

        # the trading controls on the real processes: reduce-only holds a buy back and lets a sell
        # through; a flatten sells what is left while halted, a control signal journaled once
        def signal_entry(direction: str) -> dict[str, str]:
            added = tradebot("signal", "NVDA", direction, "--var-dir", str(var_dir), env=env)
            assert added.returncode == 0, added.stderr
            source_id = added.stdout.split()[1]
            return wait_for(f"the journal entry of {source_id}", lambda: next(
                (f for _, f in r.xrange(KEYS.orders) if f["source_id"] == source_id), None))

        assert signal_entry("b")["outcome"] == "filled"
        assert tradebot("halt", "--reduce-only", "--reason", "drill", "--var-dir", str(var_dir), env=env).returncode == 0
        held_back = signal_entry("b")
        assert (held_back["outcome"], held_back["reason"]) == ("skipped", "reduce-only: drill: a buy would add exposure")
        assert signal_entry("s")["outcome"] == "filled"
        assert tradebot("halt", "--reason", "drill", "--var-dir", str(var_dir), env=env).returncode == 0
        flattened = tradebot("flatten", "--all", "--var-dir", str(var_dir), env=env)
        assert flattened.returncode == 0 and "NVDA: sold" in flattened.stdout and "flat" in flattened.stdout, \
            flattened.stdout + flattened.stderr
        assert tradebot("resume", "--var-dir", str(var_dir), env=env).returncode == 0
        journaled_in_all = r.xlen(KEYS.orders)

        late_worker.send_signal(signal.SIGTERM)
        assert late_worker.wait(30) == 0
    finally:
        if late_worker is not None and late_worker.poll() is None:
            late_worker.kill()
            late_worker.wait()
        r.close()

    # SIGTERM to supervisord: every process stops gracefully, nothing is left pending
    os.kill(supervisord_pid, signal.SIGTERM)
    wait_for("supervisord to exit", lambda: not alive(supervisord_pid), timeout=60)
    assert not [pid for pid in child_pids if alive(pid)]
    with EmbeddedRedis(data_dir=var_dir / "redis", port=free_port()) as restarted:  # the fleet's own AOF
        check = redis.Redis.from_url(restarted.url, decode_responses=True)
        assert check.xlen(KEYS.orders) == journaled_in_all
        assert check.xpending("nvda", KEYS.router_group)["pending"] == 0
        assert check.xpending(KEYS.signals, KEYS.workers_group)["pending"] == 0
        check.close()


@pytest.mark.slow
def test_up_only_and_down(redis_url: str, r: redis.Redis, fleet_env: tuple[Path, dict[str, str]]) -> None:
    """`--only router` against a shared Redis (as on a second host), then `tradebot down`."""
    var_dir, env = fleet_env
    up = tradebot("up", "--detach", "--only", "router", "--var-dir", str(var_dir), env={**env, "REDIS_URL": redis_url})
    assert up.returncode == 0, up.stdout + up.stderr
    assert "processes  router RUNNING" in up.stdout
    pid = fleet.read_pid(fleet.FleetPaths.of(var_dir))
    assert pid and alive(pid)
    status = json.loads(tradebot("status", "--json", "--var-dir", str(var_dir), env={**env, "REDIS_URL": redis_url}).stdout)
    assert [(p["name"], p["state"]) for p in status["fleet"]["processes"]] == [("router", "RUNNING")]
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    wait_for("the router to route the signal", lambda: r.xlen(KEYS.signals) == 1)

    down = tradebot("down", "--var-dir", str(var_dir), env=env)
    assert down.returncode == 0, down.stderr
    assert "tradebot fleet stopped" in down.stdout
    assert not alive(pid) and not (var_dir / "supervisor.sock").exists()
    assert not (var_dir / "fleet.json").exists()
    status = json.loads(tradebot("status", "--json", "--var-dir", str(var_dir), env={**env, "REDIS_URL": redis_url}).stdout)
    assert status["fleet"]["running"] is False


@pytest.mark.slow
def test_up_in_the_foreground_stops_everything_on_ctrl_c(redis_url: str, r: redis.Redis,
                                                         fleet_env: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    var_dir, env = fleet_env
    output = tmp_path / "up.out"
    with output.open("wb") as out:
        # its own session, like a terminal's foreground job: Ctrl-C = SIGINT to the whole process group
        up = subprocess.Popen([*TRADEBOT, "up", "--only", "router", "--var-dir", str(var_dir)],
                              env={**env, "REDIS_URL": redis_url}, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        # `up` echoes its summary line by line (each flushed): wait for the LAST line, "stop ...", or a
        # read between two lines misses the rest. The deadline is longer than `up`'s own bounds
        # (supervisord answering, every program leaving STARTING): a fleet that cannot come up says why
        wait_for("the fleet to be up", lambda: "stop       Ctrl-C" in output.read_text() or up.poll() is not None,
                 timeout=90)
        assert up.poll() is None, output.read_text()
        text = output.read_text()
        assert "tradebot fleet is up" in text and "processes  router RUNNING" in text
        supervisord_pid = fleet.read_pid(fleet.FleetPaths.of(var_dir))
        assert supervisord_pid
        router_pid = next(i["pid"] for i in fleet.process_infos(fleet.FleetPaths.of(var_dir)) or [] if i["name"] == "router")
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(60) == 0
        assert not alive(supervisord_pid) and not alive(router_pid)
        assert "tradebot fleet stopped (supervisord exit code 0)" in output.read_text()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_dry_run_view_masks_secrets_given_in_extra_flags(tmp_path: Path) -> None:
    env = base_env(TRADEBOT_WORKER_FLAGS="--alpaca-secret-key flagsecret1 --redis-url redis://:flagpw99@h:1/0",
                   TRADEBOT_POLLER_FLAGS="--alpaca-api-key=flagkey777")
    shown = json.dumps(fleet.public_env(fleet.plan_fleet(var_dir=tmp_path, env=env)))
    for secret in ("flagsecret1", "flagpw99", "flagkey777"):
        assert secret not in shown
    assert "--alpaca-secret-key '***'" in shown or "--alpaca-secret-key ***" in shown


def test_demo_keeps_a_probability_given_with_an_equals_sign(tmp_path: Path) -> None:
    env = base_env(TRADEBOT_GENERATOR_FLAGS="--probability=0.2")
    plan = fleet.plan_fleet(var_dir=tmp_path, demo=True, env=env)
    assert plan.env["TRADEBOT_GENERATOR_FLAGS"] == "--always-open --first-buy --wait-for-router --probability=0.2"
