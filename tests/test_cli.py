"""Operator commands on a prepared real Redis: signal, halt/resume, dlq, orders, status, errors."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis
from click.testing import CliRunner, Result

from bot.cli import cli
from bot.embedded_redis import EmbeddedRedis, free_port
from bot.keys import Keys
from bot.streams import dead_letter, ensure_group

KEYS = Keys("tradebot")


@pytest.fixture
def env(redis_url: str, r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """REDIS_URL of the test Redis, two symbols, one source stream, an empty var folder."""
    for name in ("ALPACA_API_KEY", "ALPACA_SECRET_KEY", "TRADEBOT_PREFIX", "TRADEBOT_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("TRADEBOT_SYMBOLS", "NVDA,AAPL")
    monkeypatch.setenv("TRADEBOT_SOURCE_STREAMS", "nvda,alerts")
    monkeypatch.setenv("TRADEBOT_VAR", str(tmp_path / "var"))
    return tmp_path


def run(*args: str, input: str | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), input=input)
    assert "Traceback" not in result.output
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# ----------------------------------------------------------------------------- signal

def test_signal_adds_a_source_entry(env: Path, r: redis.Redis) -> None:
    result = run("signal", "nvda", "b", "--qty", "10")
    assert result.exit_code == 0, result.output
    [(entry_id, fields)] = r.xrange("nvda")
    assert fields == {"ticker": "NVDA", "direction": "b", "qty": "10"}
    assert f"added {entry_id} to nvda" in result.output


def test_signal_accepts_words_and_other_source_streams(env: Path, r: redis.Redis) -> None:
    assert run("signal", "AAPL", "SELL", "--stream", "alerts").exit_code == 0
    assert [f for _, f in r.xrange("alerts")] == [{"ticker": "AAPL", "direction": "s"}]


@pytest.mark.parametrize("args, message", [
    (["TSLA", "b"], "unknown ticker 'TSLA'"),
    (["NVDA", "x"], "direction 'x' is not b/s/buy/sell"),
    (["NVDA", "b", "--qty", "-1"], "must be a positive number"),
    (["NVDA", "b", "--qty", "0"], "must be a positive number"),
    (["NVDA", "b", "--qty", "abc"], "must be a positive number"),
    (["NVDA", "b", "--qty", "1e3"], "must be a positive number"),
    (["NVDA", "b", "--qty", "99999999"], "exceeds the maximum"),
    (["NVDA", "b", "--stream", "elsewhere"], "not a source stream"),
])
def test_signal_bad_input_exits_2_and_adds_nothing(env: Path, r: redis.Redis, args: list[str], message: str) -> None:
    result = run("signal", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert r.xlen("nvda") == 0 and r.xlen("alerts") == 0


def test_signal_while_halted_says_so(env: Path, r: redis.Redis) -> None:
    r.set(KEYS.halt, "maintenance")
    result = run("signal", "NVDA", "s")
    assert result.exit_code == 0
    assert "trading is halted: maintenance" in result.output


# ----------------------------------------------------------------------------- halt / resume

def test_halt_and_resume(env: Path, r: redis.Redis) -> None:
    result = run("halt", "--reason", "broker incident")
    assert result.exit_code == 0 and "HALTED: broker incident" in result.output
    assert r.get(KEYS.halt) == "broker incident"
    status = json.loads(run("status", "--json").output)
    assert status["halt"] == {"on": True, "reason": "broker incident", "state": "halted"}
    assert status["trading_state"] == "halted"

    result = run("resume")
    assert result.exit_code == 0 and "was halted: broker incident" in result.output
    assert r.get(KEYS.halt) is None
    assert "was active" in run("resume").output


def test_reduce_only_and_back(env: Path, r: redis.Redis) -> None:
    run("halt", "--reason", "news")
    result = run("halt", "--reduce-only", "--reason", "drawdown 5%")
    assert result.exit_code == 0 and "REDUCE-ONLY: drawdown 5%" in result.output
    assert r.get(KEYS.reduce_only) == "drawdown 5%" and r.get(KEYS.halt) is None  # one state at a time
    status = json.loads(run("status", "--json").output)
    assert status["trading_state"] == "reduce-only" and status["halt"]["reason"] == "drawdown 5%"
    assert "REDUCE-ONLY: drawdown 5% (sells and exits only)" in run("status").output
    assert "was reduce-only: drawdown 5%" in run("resume").output
    assert json.loads(run("status", "--json").output)["trading_state"] == "active"


def test_halt_without_reason_records_who_and_when(env: Path, r: redis.Redis) -> None:
    assert run("halt").exit_code == 0
    assert r.get(KEYS.halt).startswith("halted by ")


def test_halt_with_an_empty_reason_is_refused(env: Path, r: redis.Redis) -> None:
    result = run("halt", "--reason", "  ")
    assert result.exit_code == 2 and "--reason must not be empty" in result.output
    assert r.get(KEYS.halt) is None


# ----------------------------------------------------------------------------- DLQ

def _dead_letter_from_router(r: redis.Redis, fields: dict, reason: str) -> str:
    """A DLQ entry exactly as the router makes one: a source entry read through its group."""
    ensure_group(r, "nvda", KEYS.router_group, "0")
    source_id = r.xadd("nvda", fields)
    r.xreadgroup(KEYS.router_group, "router-1", {"nvda": ">"})
    dead_letter(r, KEYS, ack_stream="nvda", group=KEYS.router_group, entry_id=source_id, source_stream="nvda",
                source_id=source_id, reason=reason, deliveries=1, raw_fields=fields, consumer="router-1")
    return r.xrevrange(KEYS.dlq, count=1)[0][0]


def test_dlq_list_shows_reason_and_original_fields(env: Path, r: redis.Redis, rb: redis.Redis) -> None:
    first = _dead_letter_from_router(r, {"ticker": "TSLA", "direction": "b"}, "unknown ticker 'TSLA'")
    # a payload that is not UTF-8 is kept as one JSON field by the DLQ format
    ensure_group(rb, "nvda", KEYS.router_group, "0")
    bad_id = rb.xadd("nvda", {b"ticker": b"\xff\xfe", b"direction": b"b"}).decode()
    rb.xreadgroup(KEYS.router_group, "router-1", {"nvda": ">"})
    dead_letter(rb, KEYS, ack_stream="nvda", group=KEYS.router_group, entry_id=bad_id, source_stream="nvda",
                source_id=bad_id, reason="field 'ticker' is not UTF-8", deliveries=1,
                raw_fields={b"ticker": b"\xff\xfe", b"direction": b"b"})

    result = run("dlq", "list")
    assert result.exit_code == 0
    assert first in result.output and "unknown ticker 'TSLA'" in result.output and "ticker='TSLA'" in result.output
    assert "not UTF-8" in result.output

    entries = json.loads(run("dlq", "list", "--json").output)
    assert [e["id"] for e in entries][0] == first
    assert entries[0]["original"] == {"ticker": "TSLA", "direction": "b"}
    assert entries[0]["source_stream"] == "nvda" and entries[0]["reason"] == "unknown ticker 'TSLA'"
    assert entries[1]["original"]["ticker"] == "\\xff\\xfe"
    assert len(json.loads(run("dlq", "list", "--json", "--limit", "1").output)) == 1


def test_dlq_list_empty(env: Path) -> None:
    assert run("dlq", "list").output.strip() == "DLQ is empty"
    assert json.loads(run("dlq", "list", "--json").output) == []


def test_dlq_replay_puts_the_original_fields_back_and_deletes_the_entry(env: Path, r: redis.Redis) -> None:
    dlq_id = _dead_letter_from_router(r, {"ticker": "NVDA", "direction": "b", "qty": "5"}, "stale price")
    before = r.xlen("nvda")
    result = run("dlq", "replay", dlq_id)
    assert result.exit_code == 0, result.output
    new_id, fields = r.xrevrange("nvda", count=1)[0]
    assert f"replayed {dlq_id} as {new_id} on nvda" in result.output
    assert fields == {"ticker": "NVDA", "direction": "b", "qty": "5", "replay_of": dlq_id}
    assert r.xlen("nvda") == before + 1 and r.xlen(KEYS.dlq) == 0
    # a second replay of the same entry finds nothing: no double replay
    again = run("dlq", "replay", dlq_id)
    assert again.exit_code == 1 and f"no DLQ entry {dlq_id}" in again.output
    assert r.xlen("nvda") == before + 1


def test_dlq_replay_of_a_non_utf8_entry_restores_the_bytes(env: Path, rb: redis.Redis) -> None:
    raw = {b"ticker": b"NV\xffDA", b"direction": b"b"}
    ensure_group(rb, "nvda", KEYS.router_group, "0")
    source_id = rb.xadd("nvda", raw).decode()
    rb.xreadgroup(KEYS.router_group, "router-1", {"nvda": ">"})
    dead_letter(rb, KEYS, ack_stream="nvda", group=KEYS.router_group, entry_id=source_id, source_stream="nvda",
                source_id=source_id, reason="not UTF-8", deliveries=1, raw_fields=raw)
    dlq_id = rb.xrange(KEYS.dlq)[0][0].decode()
    assert run("dlq", "replay", dlq_id).exit_code == 0
    _, fields = rb.xrevrange("nvda", count=1)[0]
    assert fields[b"ticker"] == b"NV\xffDA" and fields[b"direction"] == b"b"


def test_dlq_replay_of_a_worker_entry_turns_the_routed_signal_back_into_source_fields(env: Path, r: redis.Redis) -> None:
    signal_fields = {"ticker": "NVDA", "side": "sell", "qty": "3", "source_stream": "alerts",
                     "source_id": "1700000000000-0", "routed_at": "1700000000.5"}
    ensure_group(r, KEYS.signals, KEYS.workers_group, "0")
    entry_id = r.xadd(KEYS.signals, signal_fields)
    r.xreadgroup(KEYS.workers_group, "worker-00@h", {KEYS.signals: ">"})
    dead_letter(r, KEYS, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id=entry_id,
                source_stream="alerts", source_id="1700000000000-0", reason="delivered 6 times", deliveries=6,
                raw_fields=signal_fields)
    dlq_id = r.xrange(KEYS.dlq)[0][0]
    result = run("dlq", "replay", dlq_id)
    assert result.exit_code == 0, result.output
    [(_, fields)] = r.xrange("alerts")
    # the original's order id goes with it: an order of it that may exist is found, not placed twice
    assert fields == {"ticker": "NVDA", "direction": "s", "qty": "3", "replay_of": dlq_id,
                      "client_order_id": "tb-alerts-1700000000000-0"}


def _worker_dead_letter(r: redis.Redis, signal_fields: dict[str, str]) -> str:
    ensure_group(r, KEYS.signals, KEYS.workers_group, "0")
    entry_id = r.xadd(KEYS.signals, signal_fields)
    r.xreadgroup(KEYS.workers_group, "worker-00@h", {KEYS.signals: ">"})
    dead_letter(r, KEYS, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id=entry_id,
                source_stream=signal_fields["source_stream"], source_id=signal_fields["source_id"],
                reason="delivered 6 times", deliveries=6, raw_fields=signal_fields)
    return r.xrevrange(KEYS.dlq, count=1)[0][0]


def test_dlq_replay_keeps_a_signals_order_fields_and_a_control_stays_a_control(env: Path, r: redis.Redis) -> None:
    buy = _worker_dead_letter(r, {"ticker": "NVDA", "side": "buy", "notional": "100", "limit_price": "99.5",
                                  "stop_loss": "90", "strategy": "fixed", "source_stream": "alerts",
                                  "source_id": "1700000000000-1", "routed_at": "1700000000.5"})
    assert run("dlq", "replay", buy).exit_code == 0
    [(_, fields)] = r.xrange("alerts")
    assert (fields["notional"], fields["limit_price"], fields["stop_loss"], fields["strategy"]) == (
        "100", "99.5", "90", "fixed")
    cancel = _worker_dead_letter(r, {"ticker": "NVDA", "side": "cancel", "control": "cancel-all",
                                     "source_stream": KEYS.control, "source_id": "1700000000000-2",
                                     "routed_at": "1700000000.5"})
    assert run("dlq", "replay", cancel, "--stream", "alerts").exit_code == 2  # never a plain sell
    result = run("dlq", "replay", cancel)
    assert result.exit_code == 0, result.output
    [(_, control)] = r.xrange(KEYS.control)
    assert control["action"] == "cancel-all" and control["ticker"] == "NVDA" and "direction" not in control


def test_dlq_replay_errors(env: Path, r: redis.Redis) -> None:
    result = run("dlq", "replay", "not-an-id")
    assert result.exit_code == 2 and "is not a stream entry id" in result.output
    result = run("dlq", "replay", "1-0")
    assert result.exit_code == 1 and "no DLQ entry 1-0" in result.output
    dlq_id = _dead_letter_from_router(r, {"ticker": "NVDA", "direction": "b"}, "x")
    result = run("dlq", "replay", dlq_id, "--stream", "elsewhere")
    assert result.exit_code == 2 and "not a source stream" in result.output
    assert r.xlen(KEYS.dlq) == 1  # nothing lost


def test_dlq_purge_asks_first(env: Path, r: redis.Redis) -> None:
    for n in range(3):
        _dead_letter_from_router(r, {"ticker": f"X{n}", "direction": "b"}, "unknown ticker")
    result = run("dlq", "purge", input="n\n")
    assert result.exit_code == 1 and "Delete 3 DLQ entries" in result.output
    assert r.xlen(KEYS.dlq) == 3
    result = run("dlq", "purge", input="y\n")
    assert result.exit_code == 0 and "deleted 3 DLQ entries" in result.output
    assert r.xlen(KEYS.dlq) == 0


def test_dlq_purge_yes(env: Path, r: redis.Redis) -> None:
    _dead_letter_from_router(r, {"ticker": "X", "direction": "b"}, "unknown ticker")
    result = run("dlq", "purge", "--yes")
    assert result.exit_code == 0 and "deleted 1 DLQ entries" in result.output
    assert run("dlq", "purge", "--yes").output.strip() == "DLQ is empty"


# ----------------------------------------------------------------------------- orders

def _journal(r: redis.Redis, n: int) -> list[str]:
    ids = []
    for i in range(n):
        ids.append(r.xadd(KEYS.orders, {
            "source_stream": "nvda", "source_id": f"{1700000000000 + i}-0", "ticker": "NVDA",
            "side": "buy" if i % 2 == 0 else "sell", "outcome": "filled" if i % 3 else "skipped",
            "reason": "" if i % 3 else "halted", "client_order_id": f"tb-{i}", "order_id": f"o-{i}",
            "status": "filled", "qty": "2", "filled_qty": "2", "filled_avg_price": "100.5",
            "final_at": repr(time.time())}))
    return ids


def test_orders_last_n(env: Path, r: redis.Redis) -> None:
    ids = _journal(r, 7)
    result = run("orders", "--last", "3")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == ids[::-1][:3]
    entries = json.loads(run("orders", "--last", "2", "--json").output)
    assert [e["id"] for e in entries] == ids[::-1][:2]
    assert entries[0]["client_order_id"] == "tb-6"


def test_orders_bad_count_and_empty_journal(env: Path) -> None:
    result = run("orders", "--last", "0")
    assert result.exit_code == 2
    assert run("orders").output.strip() == "no journal entries"


# ----------------------------------------------------------------------------- status

def _prepare_fleet_state(r: redis.Redis) -> None:
    now = time.time()
    _dead_letter_from_router(r, {"ticker": "TSLA", "direction": "b"}, "unknown ticker")
    for n in range(5):
        r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    r.xreadgroup(KEYS.router_group, "router@host", {"nvda": ">"}, count=2)  # 2 pending, 3 not delivered
    ensure_group(r, KEYS.signals, KEYS.workers_group, "0")
    r.xadd(KEYS.signals, {"ticker": "NVDA", "side": "buy", "source_stream": "nvda", "source_id": "1-0",
                          "routed_at": str(now)})
    r.xreadgroup(KEYS.workers_group, "worker-00@host", {KEYS.signals: ">"})
    r.hset(KEYS.prices("NVDA"), mapping={"bid": "100.1", "ask": "100.3", "last": "100.2", "polled_at": str(now - 2)})
    r.hset(KEYS.account, mapping={"cash": "50000", "buying_power": "50000", "equity": "100000", "status": "ACTIVE",
                                  "polled_at": str(now - 1)})
    r.hset(KEYS.positions, mapping={"NVDA": json.dumps({"qty": "10", "avg_entry_price": "99.5"}),
                                    "_polled_at": str(now - 1), "_as_of": str(now - 1)})
    r.hset(KEYS.clock, mapping={"is_open": "1", "next_open": "x", "next_close": "y", "polled_at": str(now)})
    _journal(r, 7)
    r.set(KEYS.halt, "testing")


def test_status_json_reports_everything(env: Path, r: redis.Redis) -> None:
    _prepare_fleet_state(r)
    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["fleet"]["running"] is False and status["fleet"]["processes"] == []
    assert status["redis"]["ok"] is True
    streams = {s["name"]: s for s in status["streams"]}
    assert streams["nvda"]["length"] == 6 and streams["nvda"]["role"] == "source"  # 5 + the DLQ'd one
    [router_group] = streams["nvda"]["groups"]
    assert router_group["name"] == KEYS.router_group
    assert router_group["pending"] == 2 and router_group["lag"] == 3
    assert router_group["lag_method"] in ("xinfo", "exact-xrange")
    assert {c["name"]: c["pending"] for c in router_group["consumers"]} == {"router-1": 0, "router@host": 2}
    [workers_group] = streams[KEYS.signals]["groups"]
    assert workers_group["pending"] == 1 and workers_group["lag"] == 0
    assert workers_group["consumers"] == [{"name": "worker-00@host", "pending": 1,
                                           "idle_s": workers_group["consumers"][0]["idle_s"]}]
    assert streams[KEYS.orders]["length"] == 7 and streams["alerts"]["length"] == 0
    assert status["dlq"] == 1
    [price, aapl] = status["prices"]
    assert price["symbol"] == "NVDA" and price["bid"] == "100.1" and 1.5 < price["age_s"] < 60
    assert aapl == {"symbol": "AAPL", "age_s": None}
    assert status["account"]["cash"] == "50000"
    assert status["positions"] == {"NVDA": {"qty": "10", "avg_entry_price": "99.5"}}
    assert len(status["orders"]) == 5 and status["orders"][0]["client_order_id"] == "tb-6"
    assert status["halt"] == {"on": True, "reason": "testing", "state": "halted"}
    assert status["settings"]["symbols"] == ["NVDA", "AAPL"]


def test_status_lag_counts_undelivered_entries_past_a_trimmed_start(env: Path, r: redis.Redis) -> None:
    ensure_group(r, "nvda", KEYS.router_group, "0")
    ids = [r.xadd("nvda", {"ticker": "NVDA", "direction": "b"}) for _ in range(6)]
    r.xreadgroup(KEYS.router_group, "c", {"nvda": ">"}, count=4)
    r.xack("nvda", KEYS.router_group, *ids[:4])
    r.xtrim("nvda", minid=ids[3], approximate=False)  # 3 left: one delivered, two not
    status = json.loads(run("status", "--json").output)
    group = next(s for s in status["streams"] if s["name"] == "nvda")["groups"][0]
    assert group["pending"] == 0 and group["lag"] == 2


def test_status_text_is_one_readable_screen(env: Path, r: redis.Redis) -> None:
    _prepare_fleet_state(r)
    result = run("status")
    assert result.exit_code == 0, result.output
    text = result.output
    for expected in ("HALTED: testing", "supervisord not running", "nvda", KEYS.router_group, "router@host",
                     "NVDA", "bid 100.1", "cash 50000", "NVDA 10 @ 99.5", "last orders (journal 7 entries, DLQ 1",
                     "AAPL     no price yet"):
        assert expected in text, expected
    assert len(text.splitlines()) < 45


def test_status_shows_the_fleet_recorded_in_the_var_folder(env: Path, r: redis.Redis, redis_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Without REDIS_URL the operator commands use what `tradebot up` recorded (the embedded Redis)."""
    var = env / "var"
    var.mkdir()
    (var / "fleet.json").write_text(json.dumps({"redis_url": redis_url, "symbols": ["NVDA", "MSFT"],
                                                "source_streams": ["nvda"], "prefix": "tradebot"}))
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.delenv("TRADEBOT_SYMBOLS")
    monkeypatch.delenv("TRADEBOT_SOURCE_STREAMS")
    assert run("signal", "MSFT", "b").exit_code == 0
    assert r.xlen("nvda") == 1


# ----------------------------------------------------------------------------- errors

def test_unreachable_redis_is_a_clear_error_without_the_password(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:topsecretpw@127.0.0.1:{free_port()}/0")
    for args in (["signal", "NVDA", "b"], ["halt", "--reason", "x"], ["resume"], ["orders"], ["dlq", "list"],
                 ["dlq", "purge", "--yes"], ["dlq", "replay", "1-0"]):
        result = run(*args)
        assert result.exit_code == 1, args
        assert "is unreachable" in result.output and "redis://:***@127.0.0.1" in result.output, args
        assert "topsecretpw" not in result.output
    result = run("status")
    assert result.exit_code == 1 and "UNREACHABLE" in result.output and "topsecretpw" not in result.output
    result = run("status", "--json")
    assert result.exit_code == 1 and "topsecretpw" not in result.output
    assert json.loads(result.output)["redis"]["ok"] is False


def test_bad_settings_are_input_errors(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBOT_MAX_PRICE_AGE", "soon")
    result = run("status")
    assert result.exit_code == 2 and "TRADEBOT_MAX_PRICE_AGE='soon' is not a number" in result.output


def test_input_is_checked_before_redis_is_needed(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert run("signal", "TSLA", "b").exit_code == 2
    assert run("dlq", "replay", "junk").exit_code == 2


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(data_dir=tmp_path / "pw-redis", password="Pa55-w0rd-never-shown", appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_redis_password_never_reaches_the_output(env: Path, password_redis: EmbeddedRedis,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    password = "Pa55-w0rd-never-shown"
    monkeypatch.setenv("REDIS_URL", password_redis.url)
    outputs = []
    for args in (["signal", "NVDA", "b"], ["halt", "--reason", "check"], ["status"], ["status", "--json"],
                 ["resume"], ["orders", "--json"], ["dlq", "list", "--json"], ["dlq", "purge", "--yes"]):
        result = run(*args)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
    status = json.loads(outputs[3])
    assert status["redis"]["url"] == f"redis://:***@127.0.0.1:{password_redis.port}/0"
    assert status["settings"]["redis_url"] == status["redis"]["url"]
    assert all(password not in out for out in outputs)

    monkeypatch.setenv("REDIS_URL", password_redis.url.replace(password, "wrong-guess-pw"))
    for args in (["status"], ["signal", "NVDA", "b"]):
        result = run(*args)
        assert result.exit_code == 1
        assert "refused the credentials" in result.output or "UNREACHABLE" in result.output
        assert "wrong-guess-pw" not in result.output and password not in result.output


def test_status_survives_a_junk_bytes_entry_on_a_source_stream(env: Path, rb: redis.Redis) -> None:
    ensure_group(rb, "nvda", KEYS.router_group, "0")
    rb.xadd("nvda", {b"ticker": b"\xff", b"direction": b"b"})  # XINFO STREAM would return it undecodable
    result = run("status", "--json")
    assert result.exit_code == 0
    streams = {s["name"]: s for s in json.loads(result.output)["streams"]}
    assert streams["nvda"]["length"] == 1
    assert streams["nvda"]["groups"][0]["lag"] == 1


@pytest.mark.parametrize("url", ["redis://:S3cret/PW@host:6379/0", "redis://:pw9xq@host:notaport/0"])
def test_a_malformed_redis_url_is_one_line_without_the_password(env: Path, monkeypatch: pytest.MonkeyPatch,
                                                               url: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    result = run("status")
    assert result.exit_code != 0 and "not a valid" in result.output
    assert "S3cret" not in result.output and "pw9xq" not in result.output


def test_a_truncated_dead_letter_is_not_replayed(env: Path, r: redis.Redis, rb: redis.Redis) -> None:
    from bot.streams import dead_letter

    rb.xgroup_create("nvda", "g", id="0", mkstream=True)
    assert dead_letter(rb, KEYS, ack_stream="nvda", group="g", entry_id="0-1", source_stream="nvda",
                       source_id="1700000000000-0", reason="field 'blob' is 1000000 bytes", deliveries=1,
                       raw_fields={b"ticker": b"NVDA", b"blob": b"y" * 1_000_000})
    (dlq_id, fields), = r.xrange(KEYS.dlq)
    assert len(fields["raw_blob"]) < 1000  # stored truncated, not whole
    result = run("dlq", "replay", dlq_id)
    assert result.exit_code == 1 and "cannot be replayed" in result.output
    assert r.xlen(KEYS.dlq) == 1 and r.xlen("nvda") == 0
