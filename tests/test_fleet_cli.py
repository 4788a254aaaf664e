"""The fleet's operator commands around supervisord: one `tradebot up` at a time (var/up.lock),
`tradebot ctl` (supervisorctl against the fleet), `tradebot logs` (var/log)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result
from test_fleet import TRADEBOT, base_env, kill_everything, tradebot
from waiting import wait_for

from bot import fleet
from bot.cli import cli
from bot.embedded_redis import free_port
from bot.fleet.fleet_file import remove_fleet_file
from bot.fleet.lock import UpLock
from bot.fleet.logs import LogFollower, log_files, tail_lines

NO_FLEET = "no fleet is running in {var}; start one with `make run` or `tradebot up`"


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def started_in(var: Path) -> list[int]:
    """Every process whose environment names ``var`` as TRADEBOT_VAR: a supervisord started for it
    and its programs, even one whose pidfile another supervisord overwrote."""
    marker = f"TRADEBOT_VAR={var.resolve()}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


@pytest.fixture
def var_dir(tmp_path: Path) -> Iterator[Path]:
    """A var folder whose fleet, if a test started one, is stopped afterwards whatever happened:
    `tradebot down` (graceful), then SIGKILL for whatever is left."""
    folder = tmp_path / "var"
    try:
        yield folder
    finally:
        try:
            if (folder / "supervisord.pid").exists():
                tradebot("down", "--var-dir", str(folder), env=base_env())
        finally:
            kill_everything(folder)
            for pid in started_in(folder):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- one `up` at a time

def test_up_while_another_up_holds_the_lock_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    var = tmp_path / "var"
    plan = fleet.plan_fleet(var_dir=var, only=("router",), env=base_env(REDIS_URL="redis://127.0.0.1:1/0"))
    var.mkdir()
    # what a starting fleet has already written (it holds the lock until its programs are up)
    files = {var / "fleet.json": '{"supervisord_pid": 4242}\n', var / "supervisord.pid": "4242\n",
             var / "supervisor.sock": ""}
    for path, text in files.items():
        path.write_text(text)
    with UpLock(fleet.FleetPaths.of(var)):
        with pytest.raises(fleet.FleetError) as refused:
            fleet.up(plan, detach=True, echo=lambda line: pytest.fail(f"printed {line!r}"))
        message = str(refused.value)
        assert message == (f"a fleet is already running in {var.resolve()} (`tradebot up` pid {os.getpid()} is "
                           f"starting or running it); stop it with `tradebot down --var-dir {var.resolve()}`")
        # the command line: one line, FleetError's exit code
        result = tradebot("up", "--detach", "--only", "router", "--var-dir", str(var), "--redis-url",
                          "redis://127.0.0.1:1/0", env=base_env())
        assert result.returncode == 1
        assert error_lines(result.stderr) == [f"Error: {message}"] and result.stdout == ""
    assert {path: path.read_text() for path in files} == files  # nothing removed, nothing rewritten
    assert not (var / "log").exists()


def test_the_lock_goes_with_its_holder(tmp_path: Path) -> None:
    paths = fleet.FleetPaths.of(tmp_path)
    first = UpLock(paths)
    first.acquire()
    with pytest.raises(fleet.FleetError, match="already running"):
        UpLock(paths).acquire()
    first.release()
    with UpLock(paths) as second:  # free again; the file itself stays (deleting it would race)
        assert second.held
    assert paths.up_lock.exists()


def test_up_removes_only_a_fleet_file_of_its_own(tmp_path: Path) -> None:
    paths = fleet.FleetPaths.of(tmp_path)
    paths.fleet_file.write_text(json.dumps({"supervisord_pid": 111}))
    remove_fleet_file(paths, supervisord_pid=222)  # another fleet's: kept
    assert paths.fleet_file.exists()
    remove_fleet_file(paths, supervisord_pid=111)
    assert not paths.fleet_file.exists()


@pytest.mark.slow
def test_two_detached_ups_at_the_same_instant(var_dir: Path, tmp_path: Path) -> None:
    env = base_env()
    # both get the same ports, as two `up`s choosing the defaults at once would
    args = [*TRADEBOT, "up", "--detach", "--var-dir", str(var_dir), "--workers", "1",
            "--redis-port", str(free_port()), "--paper-port", str(free_port())]
    outputs = [(tmp_path / f"up{n}.out", tmp_path / f"up{n}.err") for n in range(2)]
    ups: list[subprocess.Popen] = []
    try:
        for out, err in outputs:
            with out.open("wb") as stdout, err.open("wb") as stderr:
                ups.append(subprocess.Popen(args, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL))
        codes = [up.wait(timeout=120) for up in ups]
    finally:
        for up in ups:
            if up.poll() is None:
                up.kill()
                up.wait()
    texts = [(out.read_text(), err.read_text()) for out, err in outputs]
    assert sorted(codes) == [0, 1], texts
    (won_out, _), (lost_out, lost_err) = texts[codes.index(0)], texts[codes.index(1)]
    assert "tradebot fleet is up" in won_out and "WARNING" not in won_out
    assert lost_out == ""
    [line] = error_lines(lost_err)
    assert line.startswith(f"Error: a fleet is already running in {var_dir}")
    assert line.endswith(f"; stop it with `tradebot down --var-dir {var_dir}`")

    # the winner's files are all there and name its supervisord
    paths = fleet.FleetPaths.of(var_dir)
    pid = fleet.read_pid(paths)
    assert pid and paths.socket.exists()
    assert json.loads(paths.fleet_file.read_text())["supervisord_pid"] == pid
    status = tradebot("status", "--json", "--var-dir", str(var_dir), env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["fleet"]["supervisord_pid"] == pid
    assert {p["state"] for p in report["fleet"]["processes"]} == {"RUNNING"}

    # and a third `up`, now that the first has released the lock, is refused by the running fleet
    again = tradebot("up", "--detach", "--var-dir", str(var_dir), env=env)
    assert again.returncode == 1
    assert error_lines(again.stderr) == [f"Error: a fleet is already running in {var_dir} (supervisord pid {pid}); "
                                         f"stop it with `tradebot down --var-dir {var_dir}`"]
    assert json.loads(paths.fleet_file.read_text())["supervisord_pid"] == pid


# ----------------------------------------------------------------------------- tradebot ctl

def test_ctl_without_a_fleet_says_how_to_start_one(tmp_path: Path) -> None:
    var = tmp_path / "var"
    by_flag = tradebot("ctl", "--var-dir", str(var), "status", env=base_env())
    by_env = tradebot("ctl", "status", env=base_env(TRADEBOT_VAR=str(var)))
    for result in (by_flag, by_env):
        assert result.returncode == 1
        assert error_lines(result.stderr) == ["Error: " + NO_FLEET.format(var=var)]
        assert result.stdout == ""


def test_ctl_environment_expands_supervisord_conf(tmp_path: Path) -> None:
    from supervisor.options import ClientOptions

    from bot.fleet.ctl import ctl_env

    paths = fleet.FleetPaths.of(tmp_path)
    config = fleet.default_config_file()
    env = ctl_env(paths, config, base={"PATH": "/usr/bin"})
    assert env["TRADEBOT_VAR"] == str(paths.var_dir) and env["PATH"] == "/usr/bin"
    assert {"TRADEBOT_PYTHON", "TRADEBOT_WORKERS", "TRADEBOT_START_REDIS", "TRADEBOT_WORKER_FLAGS"} <= set(env)
    options = ClientOptions()
    options.environ_expansions = {f"ENV_{name}": value for name, value in env.items()}
    assert options.read_config(str(config)).serverurl == paths.serverurl


@pytest.mark.slow
def test_ctl_against_a_running_fleet(var_dir: Path, redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    env = base_env(REDIS_URL=redis_url, TRADEBOT_SYMBOLS="NVDA", TRADEBOT_SOURCE_STREAMS="nvda")
    up = tradebot("up", "--detach", "--only", "router", "--var-dir", str(var_dir), env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"(or: tradebot ctl --var-dir {var_dir} status)" in up.stdout and "supervisorctl" not in up.stdout

    # supervisorctl is not on this PATH and the shell has no TRADEBOT_* variable: ctl brings both
    bare = base_env(PATH="/usr/bin:/bin")
    status = tradebot("ctl", "--var-dir", str(var_dir), "status", "tradebot:router", env=bare)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.split()[:2] == ["tradebot:router", "RUNNING"]
    # every program: those this fleet does not run are STOPPED, so supervisorctl exits 3 (LSB status)
    everything = tradebot("ctl", "status", env={**bare, "TRADEBOT_VAR": str(var_dir)})
    assert everything.returncode == 3, everything.stdout + everything.stderr
    states = dict(line.split()[:2] for line in everything.stdout.splitlines())
    assert states["tradebot:router"] == "RUNNING" and states["tradebot:worker-00"] == "STOPPED"

    paths = fleet.FleetPaths.of(var_dir)

    def router_pid() -> int | None:
        return next((i["pid"] for i in fleet.process_infos(paths) or [] if i["name"] == "router"), None)

    before = router_pid()
    restart = tradebot("ctl", "--var-dir", str(var_dir), "restart", "tradebot:router", env=bare)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "tradebot:router: started" in restart.stdout
    assert router_pid() not in (None, before)
    unknown = tradebot("ctl", "--var-dir", str(var_dir), "status", "tradebot:nosuch", env=bare)
    assert unknown.returncode == 4 and "no such process" in unknown.stdout


# ----------------------------------------------------------------------------- tradebot logs

PROGRAMS = ["supervisord", "redis", "paper-broker", "poller", "listener", "router", "worker-00", "worker-01",
            "generator"]


def write_logs(var: Path, lines: int = 3, names: list[str] = PROGRAMS) -> None:
    log_dir = var / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    for name in reversed(names):  # created in the reverse order: the output must not depend on it
        (log_dir / f"{name}.log").write_text("".join(f"{name} line {n}\n" for n in range(1, lines + 1)))
    (log_dir / "worker-00.log.1").write_text("rotated away\n")


def logs(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["logs", *args])
    assert "Traceback" not in result.output
    return result


def test_logs_of_one_program(tmp_path: Path) -> None:
    write_logs(tmp_path, lines=60)
    result = logs("--var-dir", str(tmp_path), "worker-00")
    assert result.exit_code == 0
    assert result.output.splitlines() == [f"worker-00 line {n}" for n in range(11, 61)]  # the last 50
    assert logs("--var-dir", str(tmp_path), "-n", "2", "tradebot:worker-00").output == \
        "worker-00 line 59\nworker-00 line 60\n"  # supervisorctl's name works too
    assert logs("--var-dir", str(tmp_path), "-n", "0", "redis").output == ""


def test_logs_of_every_program_in_start_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_logs(tmp_path)
    monkeypatch.setenv("TRADEBOT_VAR", str(tmp_path))
    result = logs("-n", "2")
    assert result.exit_code == 0
    width = len("paper-broker")
    assert result.output.splitlines() == [f"{name:<{width}} | {name} line {n}" for name in PROGRAMS for n in (2, 3)]


def test_logs_of_an_unknown_program_lists_the_logs(tmp_path: Path) -> None:
    write_logs(tmp_path, names=["supervisord", "router", "worker-00"])
    result = logs("--var-dir", str(tmp_path), "worker-07")
    assert result.exit_code == 2
    assert error_lines(result.output) == [
        f"Error: no log for 'worker-07' in {tmp_path}/log; available: supervisord, router, worker-00"]


def test_logs_without_any_log(tmp_path: Path) -> None:
    result = logs("--var-dir", str(tmp_path / "var"))
    assert result.exit_code == 1
    assert error_lines(result.output) == [
        f"Error: no logs in {tmp_path}/var/log; start a fleet with `make run` or `tradebot up`"]
    assert logs("--var-dir", str(tmp_path / "var"), "router").exit_code == 2


def test_tail_reads_from_the_end_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_bytes(b"".join(b"%06d %s\n" % (n, b"x" * 90) for n in range(5000)) + b"bad \xff byte\nno newline")
    assert path.stat().st_size > 4 * 64 * 1024
    last = tail_lines(path, 3)
    assert last == ["004999 " + "x" * 90, "bad \ufffd byte", "no newline"]
    assert len(tail_lines(path, 2000)) == 2000 and tail_lines(path, 2000)[0].startswith("003002 ")
    assert len(tail_lines(path, 10**6)) == 5002


def test_the_follower_sees_appends_rotation_and_new_logs(tmp_path: Path) -> None:
    write_logs(tmp_path, names=["router", "worker-00"], lines=2)
    paths = fleet.FleetPaths.of(tmp_path)
    router, worker = paths.log_dir / "router.log", paths.log_dir / "worker-00.log"
    follower = LogFollower(paths, log_files(paths), discover=True)
    assert follower.poll() == []  # it starts at the end
    with router.open("a") as out:
        out.write("routed\nhalf a li")
    assert follower.poll() == [("router", "routed")]
    with router.open("a") as out:
        out.write("ne\n")
    assert follower.poll() == [("router", "half a line")]
    worker.rename(worker.with_suffix(".log.1"))  # supervisord's rotation: a new file of the same name
    worker.write_text("after rotation\n")
    (paths.log_dir / "generator.log").write_text("generator started\n")  # a program started later
    assert sorted(follower.poll()) == [("generator", "generator started"), ("worker-00", "after rotation")]
    router.write_text("truncated\n")
    assert follower.poll() == [("router", "truncated")]


def test_logs_follow_prints_what_is_appended(tmp_path: Path) -> None:
    write_logs(tmp_path, names=["worker-00"], lines=3)
    log = tmp_path / "log" / "worker-00.log"
    output = tmp_path / "logs.out"
    with output.open("wb") as out:
        follower = subprocess.Popen([*TRADEBOT, "logs", "-f", "-n", "1", "--var-dir", str(tmp_path), "worker-00"],
                                    env=base_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: output.read_text() == "worker-00 line 3\n" or follower.poll() is not None,
                 what="the last line")
        assert follower.poll() is None, output.read_text()
        with log.open("a") as out:
            out.write("an order\nanother order\n")
        wait_for(lambda: output.read_text().endswith("another order\n"), what="the appended lines")
        assert output.read_text() == "worker-00 line 3\nan order\nanother order\n"
    finally:
        follower.terminate()
        try:
            follower.wait(10)
        except subprocess.TimeoutExpired:
            follower.kill()
            follower.wait()
