import logging
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

import bot.router
from bot.cli import cli
from bot.config import Settings
from bot.embedded_redis import EmbeddedRedis
from bot.router import DEAD, DUPLICATE, RETRY, ROUTED, Router, TrimPolicy
from bot.signals import Signal
from bot.streams import KEPT_OF_TRUNCATED, MAX_DLQ_VALUE_BYTES, original_fields
from waiting import wait_for

PREFIX = "tb"
SETTINGS = Settings(symbols=("NVDA", "AAPL"), source_streams=("nvda", "aapl"), prefix=PREFIX)
KEYS = SETTINGS.keys



def make_router(rb, **kw) -> Router:
    kw.setdefault("consumer", "router-1")
    kw.setdefault("block_ms", None)
    return Router(SETTINGS, client=rb, **kw)


@pytest.fixture
def router(rb) -> Router:
    router = make_router(rb)
    router.setup()
    return router


def signals(r) -> list[dict]:
    return [fields for _, fields in r.xrange(KEYS.signals)]


def dead(r) -> list[dict]:
    return [fields for _, fields in r.xrange(KEYS.dlq)]


def pending(r, stream="nvda") -> int:
    return r.xpending(stream, KEYS.router_group)["pending"]


# ---------------------------------------------------------------- routing

@pytest.mark.parametrize("raw,side,qty", [
    ({"ticker": "NVDA", "direction": "b"}, "buy", None),
    ({"ticker": "NVDA", "direction": "s"}, "sell", None),
    ({"ticker": "nvda", "direction": "buy"}, "buy", None),
    ({"ticker": " nvda ", "direction": "SELL", "qty": "2.50"}, "sell", "2.5"),
])
def test_good_signals_are_routed_and_the_source_acked(r, router, raw, side, qty):
    entry_id = r.xadd("nvda", raw)
    assert router.step() == 1
    (fields,) = signals(r)
    expected = {"ticker": "NVDA", "side": side, "source_stream": "nvda", "source_id": entry_id}
    if qty:
        expected["qty"] = qty
    assert {k: v for k, v in fields.items() if k != "routed_at"} == expected
    assert abs(float(fields["routed_at"]) - time.time()) < 60
    assert Signal.from_fields(fields).qty == (Decimal(qty) if qty else None)
    assert pending(r) == 0 and dead(r) == []
    assert r.exists(KEYS.routed("nvda", entry_id))
    assert router.counts[ROUTED] == 1


def test_routes_from_every_source_stream(r, router):
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    r.xadd("aapl", {"ticker": "AAPL", "direction": "s"})
    assert router.step() == 2
    assert sorted((f["source_stream"], f["ticker"]) for f in signals(r)) == [("aapl", "AAPL"), ("nvda", "NVDA")]
    assert pending(r, "nvda") == pending(r, "aapl") == 0


BAD = [
    ({"direction": "b"}, "missing field 'ticker'"),
    ({"ticker": "NVDA"}, "missing field 'direction'"),
    ({"ticker": "TSLA", "direction": "b"}, "unknown ticker 'TSLA' (configured: NVDA,AAPL)"),
    ({"ticker": "NVDA", "direction": "x"}, "direction 'x' is not b/s/buy/sell"),
    ({"ticker": "NVDA", "direction": "b", "qty": "-1"}, "qty '-1' must be a positive number"),
    ({"ticker": "NVDA", "direction": "b", "qty": "5000000"}, "qty '5000000' exceeds the maximum 1000000"),
    ({"ticker": "NVDA", "direction": "b", "note": "x" * 100}, "field 'note' is 100 bytes (max 64)"),
    ({f"f{i}": "v" for i in range(17)}, "entry has 17 fields (max 16)"),
]


@pytest.mark.parametrize("raw,reason", BAD)
def test_bad_signals_go_to_the_dlq_with_reason_and_raw_fields(r, router, raw, reason, caplog):
    entry_id = r.xadd("nvda", raw)
    with caplog.at_level(logging.WARNING, logger="bot.router"):
        router.step()
    (fields,) = dead(r)
    assert fields["reason"] == reason
    assert fields["source_stream"] == "nvda" and fields["source_id"] == entry_id
    assert fields["deliveries"] == "1" and fields["consumer"] == "router-1"
    assert {k[4:]: v for k, v in fields.items() if k.startswith("raw_")} == raw
    assert signals(r) == [] and pending(r) == 0
    assert router.counts[DEAD] == 1
    assert any(reason in rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records)


def test_non_utf8_payload_is_dead_lettered_losslessly(r, rb, router):
    raw = {b"ticker": b"NV\xffDA", b"direction": b"b", b"\xfe": b"\x00\x01"}
    entry_id = rb.xadd("nvda", raw).decode()
    router.step()
    ((_, fields),) = rb.xrange(KEYS.dlq)
    assert fields[b"reason"] == b"field 'ticker' is not UTF-8"
    assert fields[b"source_id"].decode() == entry_id
    assert original_fields(fields) == raw
    assert dead(r)[0]["raw"]  # readable with a decoding client too
    assert pending(r) == 0


def test_internal_error_is_dead_lettered_as_last_resort(r, router, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(bot.router, "parse_raw", broken)
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    router.step()
    (fields,) = dead(r)
    assert fields["reason"] == "internal error: RuntimeError: parser bug"
    assert pending(r) == 0


# ---------------------------------------------------------------- delivery guarantees

def test_own_pending_entries_are_drained_first_on_restart(r, rb):
    make_router(rb).setup()
    crashed = r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    r.xreadgroup(KEYS.router_group, "router-1", {"nvda": ">"})  # delivered, then the router "crashed"
    newer = r.xadd("nvda", {"ticker": "NVDA", "direction": "s"})
    restarted = make_router(rb, batch=1)
    restarted.step()
    assert [f["source_id"] for f in signals(r)] == [crashed]
    restarted.step()
    assert [f["source_id"] for f in signals(r)] == [crashed, newer]
    assert pending(r) == 0


def test_a_new_group_starts_max_signal_age_back(r, rb):
    """A signal written just before the router's first start is routed; one older than
    max_signal_age (it would only be skipped as too old) is left in the stream, unread."""
    stale = r.xadd("nvda", {"ticker": "NVDA", "direction": "b"},
                   id=f"{int((time.time() - SETTINGS.max_signal_age - 30) * 1000)}-0")
    recent = r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    router = make_router(rb)
    router.step()
    assert [f["source_id"] for f in signals(r)] == [recent] and dead(r) == []
    newer = r.xadd("nvda", {"ticker": "NVDA", "direction": "s"})
    router.step()
    assert [f["source_id"] for f in signals(r)] == [recent, newer]
    assert stale in [i for i, _ in r.xrange("nvda")]


def test_from_start_reads_existing_entries(r, rb):
    old = r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    make_router(rb, from_start=True).step()
    assert [f["source_id"] for f in signals(r)] == [old]


def test_the_same_entry_is_routed_once_even_by_racing_routers(r, rb, router):
    entry_id = r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    other = make_router(rb, consumer="router-2")
    fields = {b"ticker": b"NVDA", b"direction": b"b"}
    assert router.handle("nvda", entry_id, fields) == ROUTED
    assert other.handle("nvda", entry_id, fields) == DUPLICATE
    assert router.handle("nvda", entry_id, {b"ticker": b"TSLA", b"direction": b"b"}) == DUPLICATE  # no DLQ either
    assert len(signals(r)) == 1 and dead(r) == []


def test_a_dead_lettered_entry_is_never_routed_later(r, rb, router):
    entry_id = r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    assert router.handle("nvda", entry_id, {b"ticker": b"TSLA", b"direction": b"b"}) == DEAD
    assert router.handle("nvda", entry_id, {b"ticker": b"NVDA", b"direction": b"b"}) == DUPLICATE
    assert signals(r) == [] and len(dead(r)) == 1


def test_entries_of_a_dead_router_are_reclaimed(r, rb, router):
    entry_id = r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    r.xreadgroup(KEYS.router_group, "router-dead", {"nvda": ">"})
    survivor = make_router(rb, consumer="router-2", claim_idle_ms=0)
    survivor.step()
    assert [f["source_id"] for f in signals(r)] == [entry_id]
    assert pending(r) == 0


def test_redis_write_errors_are_retried_then_dead_lettered(r, rb):
    router = make_router(rb, max_deliveries=2, claim_idle_ms=0, maintenance_interval_s=0)
    router.setup()
    r.set(KEYS.signals, "not a stream")  # every XADD to the signals stream now fails
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    router.step()  # delivery 1: WRONGTYPE -> left pending
    assert router.counts[RETRY] == 1 and pending(r) == 1 and dead(r) == []
    router.step()  # reclaimed: delivery 2, still failing
    assert router.counts[RETRY] == 2 and pending(r) == 1
    router.step()  # delivery 3 > max_deliveries
    (fields,) = dead(r)
    assert fields["reason"].startswith("failed to route after 3 deliveries: redis error: ")
    assert "WRONGTYPE" in fields["reason"]
    assert fields["deliveries"] == "3" and pending(r) == 0


# ---------------------------------------------------------------- maintenance

def test_trim_removes_only_acknowledged_entries(r, rb):
    router = make_router(rb, trim=TrimPolicy(maxlen=1))
    router.setup()
    r.xgroup_create(KEYS.signals, KEYS.workers_group, "0", mkstream=True)
    for _ in range(4):
        r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    router.step()
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})  # not yet read by the router
    signal_ids = [i for i, _ in r.xrange(KEYS.signals)]
    r.xreadgroup(KEYS.workers_group, "w1", {KEYS.signals: ">"}, count=2)
    r.xack(KEYS.signals, KEYS.workers_group, signal_ids[0])  # signal 1 still pending at a worker
    assert router.trim() == 4 + 1  # the 4 routed source entries; 1 acknowledged signal
    assert r.xlen("nvda") == 1
    assert [i for i, _ in r.xrange(KEYS.signals)] == signal_ids[1:]
    router.step()
    assert r.xlen(KEYS.signals) == 4


def test_idle_consumers_without_pending_entries_are_reaped(r, rb, router):
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    old_id, busy_id = [i for i, _ in r.xrange("nvda")]
    r.xreadgroup(KEYS.router_group, "router-old", {"nvda": ">"}, count=1)
    r.xack("nvda", KEYS.router_group, old_id)
    r.xreadgroup(KEYS.router_group, "router-busy", {"nvda": ">"}, count=1)
    janitor = make_router(rb, consumer_idle_ms=0)
    assert janitor.reap_consumers() == 1
    names = [c["name"] for c in r.xinfo_consumers("nvda", KEYS.router_group)]
    assert names == ["router-busy"]


# ---------------------------------------------------------------- the loop and the process

@pytest.fixture
def running() -> Iterator[Callable[[Router], None]]:
    started: list[tuple[threading.Thread, threading.Event]] = []

    def start(router: Router) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=router.run, args=(stop,), daemon=True)
        started.append((thread, stop))
        thread.start()

    yield start
    for thread, stop in started:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def test_run_routes_until_stopped(r, rb, running):
    router = make_router(rb, block_ms=50, from_start=True)
    running(router)
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    r.xadd("nvda", {"ticker": "nope", "direction": "b"})
    wait_for(lambda: len(signals(r)) == 1 and len(dead(r)) == 1, what="routing")
    assert pending(r) == 0


def test_run_survives_redis_outage_and_data_loss(tmp_path, running):
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False).start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        router = Router(Settings(redis_url=server.url, source_streams=("nvda",), prefix=PREFIX),
                        consumer="router-1", block_ms=50, backoff_cap_s=0.2)
        running(router)
        wait_for(lambda: client.exists("nvda"), what="group creation")
        client.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
        wait_for(lambda: client.exists(KEYS.signals), what="first signal")
        server.stop()
        wait_for(lambda: router.outages > 0, what="the router to notice the outage")
        server.start()  # same port, empty: groups and streams are gone
        client.xadd("nvda", {"ticker": "NVDA", "direction": "s"})
        wait_for(lambda: client.exists(KEYS.signals), what="a signal after the restart")
        assert client.xrange(KEYS.signals)[0][1]["side"] == "sell"
    finally:
        client.close()
        server.stop()


def test_router_command_help():
    result = CliRunner().invoke(cli, ["router", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--redis-url", "--symbols", "--source-streams", "--prefix", "--consumer", "--from-start",
                   "--trim-maxlen", "--trim-minid-age", "--block-ms"):
        assert option in result.output


def test_router_command_refuses_bad_settings(monkeypatch):
    monkeypatch.setattr("processes.signal_router.configure_logging", lambda: None)  # keep pytest's logging
    result = CliRunner().invoke(cli, ["router", "--symbols", "NV DA!"], env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 2
    assert "is not a ticker" in result.output


def test_router_process_routes_and_stops_on_sigterm(r, redis_url):
    env = {**os.environ, "REDIS_URL": redis_url, "TRADEBOT_PREFIX": PREFIX, "TRADEBOT_SYMBOLS": "NVDA",
           "TRADEBOT_SOURCE_STREAMS": "nvda"}
    tradebot = Path(sys.executable).with_name("tradebot")
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    proc = subprocess.Popen([str(tradebot), "router", "--from-start", "--block-ms", "100", "--consumer", "cli-1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: r.exists(KEYS.signals) or proc.poll() is not None, timeout=20, what="the process to route")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "SIGTERM received" in proc.stderr.read().decode()
        assert "cli-1" not in [c["name"] for c in r.xinfo_consumers("nvda", KEYS.router_group)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


# ---------------------------------------------------------------- fuzz

NAMES = st.one_of(st.sampled_from([b"ticker", b"direction", b"qty", b"", b"raw", b"reason"]), st.binary(max_size=70))
VALUES = st.one_of(
    st.sampled_from([b"NVDA", b" nvda", b"AAPL", b"b", b"S", b"sell", b"1", b"-1", b"0.5", b"1e3", b""]),
    st.binary(max_size=80),
    st.integers(65, 200_000).map(lambda n: b"x" * n),
)
QTYS = st.one_of(
    st.sampled_from([b"1", b"0.5", b"100.000", b"-1", b"0", b"1e3", b"", b"1000001", b"0.0000000001"]),
    st.decimals(allow_nan=True, allow_infinity=True).map(lambda d: str(d).encode()),
    VALUES,
)
NEAR_VALID = st.fixed_dictionaries(
    {b"ticker": st.sampled_from([b"NVDA", b" nvda", b"aapl\t", b"TSLA", b"", b"\xffNVDA"]),
     b"direction": st.sampled_from([b"b", b"S", b"buy", b"SELL ", b"x", b"\xc3"])},
    optional={b"qty": QTYS, b"note": VALUES},
)
PAYLOADS = st.one_of(
    st.dictionaries(NAMES, VALUES, min_size=1, max_size=24),
    NEAR_VALID,
    NEAR_VALID,  # twice: about half the examples exercise the routing path
    st.integers(17, 300).map(lambda n: {f"f{i}".encode(): b"v" for i in range(n)}),
)


def _bytes(value):
    return value if isinstance(value, bytes) else str(value).encode()


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=PAYLOADS)
def test_fuzz_every_entry_ends_as_one_signal_or_one_dead_letter(rb, payload):
    rb.flushdb()
    router = make_router(rb)
    router.setup()
    entry_id = rb.xadd("nvda", payload).decode()
    router.step()
    routed, dlq = rb.xrange(KEYS.signals), rb.xrange(KEYS.dlq)
    assert len(routed) + len(dlq) == 1
    if routed:
        signal = Signal.from_fields(routed[0][1])
        assert signal.source_id == entry_id and signal.ticker in SETTINGS.symbols
    else:
        fields = dlq[0][1]
        assert fields[b"reason"] and not fields[b"reason"].startswith(b"internal error")
        # what the DLQ keeps: every value whole, or the start of an oversized one (its size recorded)
        kept = {name: value if len(value) <= MAX_DLQ_VALUE_BYTES else value[:KEPT_OF_TRUNCATED]
                for name, value in ((_bytes(k), _bytes(v)) for k, v in payload.items())}
        assert original_fields(fields) == kept
        if kept != {_bytes(k): _bytes(v) for k, v in payload.items()}:
            assert fields[b"truncated"]
    assert rb.xpending("nvda", KEYS.router_group)["pending"] == 0


def test_an_entry_written_with_a_future_id_goes_to_the_dlq_and_does_not_stop_later_signals(router, r):
    """One XADD with an explicit id 600 s ahead: Redis gives every later auto id that time. The bad
    entry is dead-lettered with the reason; the later ones are routed, timed by their receipt."""
    ahead = int((time.time() + 600) * 1000)
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"}, id=f"{ahead}-0")
    later = [r.xadd("nvda", {"ticker": "NVDA", "direction": "s"}) for _ in range(3)]
    assert all(i.startswith(f"{ahead}-") for i in later)  # inherited
    before = time.time()
    router.step()
    [bad] = dead(r)
    assert "ahead of the router's clock (an XADD with an explicit id?)" in bad["reason"]
    routed = [Signal.from_fields(fields) for fields in signals(r)]
    assert [s.source_id for s in routed] == later
    assert all(before - 1 <= s.source_at <= time.time() + 1 for s in routed)  # the receipt, not the id


def test_an_entry_timed_by_its_receipt_is_dead_lettered_when_delivered_again(r, rb):
    ahead = int((time.time() + 600) * 1000)
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"}, id=f"{ahead}-0")
    inherited = r.xadd("nvda", {"ticker": "NVDA", "direction": "s"})
    router = make_router(rb, claim_idle_ms=0)
    router.setup()
    r.xreadgroup(KEYS.router_group, "router-2", {"nvda": ">"})  # a router that then died with both
    router.reclaim()
    reasons = {d["source_id"]: d["reason"] for d in dead(r)}
    assert "its age cannot be judged" in reasons[inherited] and signals(r) == []
