"""Retention: streams, journal and DLQ trimmed by default, never past what someone still needs;
markers no longer than needed; settled reservations swept out of the ledger."""
from __future__ import annotations

import json
import threading
import time
from decimal import Decimal as D

import pytest
import redis

from bot.config import MARKER_SLACK, ConfigError, Settings
from bot.journal import JournalEntry, journal_entries, record_outcome
from bot.ledger import Ledger
from bot.retention import BASELINE, trim_dlq, trim_journal
from bot.router import Router, TrimPolicy
from bot.streams import record_once, trim_acknowledged
from waiting import wait_for

PREFIX = "rt"
SETTINGS = Settings(symbols=("NVDA", "AAPL"), source_streams=("nvda",), prefix=PREFIX)
KEYS = SETTINGS.keys
NOW = 1_800_000_000.0
DAY = 86400.0


def entry(i: int, ticker: str = "NVDA", side: str = "buy", filled: str = "1") -> JournalEntry:
    return JournalEntry(source_stream="nvda", source_id=f"{i}-0", ticker=ticker, side=side, outcome="filled",
                        client_order_id=f"c{i}", order_id=f"o{i}", status="filled", qty=D(filled),
                        filled_qty=D(filled), filled_avg_price=D(100), final_at=NOW)


def add_journal(r: redis.Redis, at: float, e: JournalEntry) -> str:
    return r.xadd(KEYS.orders, e.to_fields(), id=f"{int(at * 1000)}-0")


def books(r: redis.Redis) -> dict[str, D]:
    """What reconciliation's drift check adds up: the baseline plus the journal's signed fills."""
    total: dict[str, D] = {}
    for name, value in r.hgetall(KEYS.reconcile).items():
        if name.startswith(BASELINE):
            total[name[len(BASELINE):]] = total.get(name[len(BASELINE):], D(0)) + D(value)
    for _id, e in journal_entries(r, KEYS):
        if e.filled_qty:
            total[e.ticker] = total.get(e.ticker, D(0)) + (e.filled_qty if e.side == "buy" else -e.filled_qty)
    return {s: q for s, q in total.items() if q}


# ----------------------------------------------------------------------------- settings

def test_retention_is_on_by_default_and_markers_follow_it() -> None:
    s = Settings.from_env({})
    assert s.stream_retention == 3600 and s.journal_retention == 30 * DAY and s.journal_maxlen == 1_000_000
    assert s.dlq_retention == 30 * DAY and s.dlq_maxlen == 100_000
    assert s.marker_ttl == 3600 + MARKER_SLACK
    assert Settings.from_env({"TRADEBOT_STREAM_RETENTION": "600"}).marker_ttl == 1200
    assert Settings.from_env({"TRADEBOT_STREAM_RETENTION": "86400"}).marker_ttl == 86400 + MARKER_SLACK
    assert Settings.from_env({"TRADEBOT_STREAM_RETENTION": "0"}).marker_ttl == 7 * 86400  # kept: a week at most
    policy = TrimPolicy.from_settings(s)
    assert policy.enabled and policy.streams and policy.min_age_s == 3600 and policy.journal_age == 30 * DAY


@pytest.mark.parametrize("name,value,message", [
    ("TRADEBOT_STREAM_RETENTION", "-1", "TRADEBOT_STREAM_RETENTION must be >= 0 seconds"),
    ("TRADEBOT_JOURNAL_RETENTION", "a week", "TRADEBOT_JOURNAL_RETENTION='a week' is not a number of seconds"),
    ("TRADEBOT_DLQ_RETENTION", "inf", "TRADEBOT_DLQ_RETENTION must be >= 0 seconds"),
    ("TRADEBOT_JOURNAL_MAXLEN", "-5", "TRADEBOT_JOURNAL_MAXLEN"),
])
def test_bad_retention_settings_are_one_line_errors(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert message in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- the journal

def test_trimming_the_journal_by_age_folds_its_fills_into_the_baseline(r: redis.Redis) -> None:
    add_journal(r, NOW - 40 * DAY, entry(1, filled="5"))
    add_journal(r, NOW - 35 * DAY, entry(2, side="sell", filled="2"))
    add_journal(r, NOW - 31 * DAY, entry(3, ticker="AAPL", filled="3"))
    kept = add_journal(r, NOW - 1 * DAY, entry(4, filled="1"))
    before = books(r)
    assert trim_journal(r, KEYS, 30 * DAY, 0, now=NOW) == 3
    assert [i for i, _ in journal_entries(r, KEYS)] == [kept]
    assert books(r) == before == {"NVDA": D(4), "AAPL": D(3)}
    assert r.hget(KEYS.reconcile, BASELINE + "NVDA") == "3"
    assert trim_journal(r, KEYS, 30 * DAY, 0, now=NOW) == 0  # nothing older left: nothing folded twice
    assert books(r) == before


def test_trimming_the_journal_by_length_keeps_the_newest(r: redis.Redis) -> None:
    ids = [add_journal(r, NOW - 100 + i, entry(i)) for i in range(10)]
    assert trim_journal(r, KEYS, 0, 4, now=NOW) == 6
    assert [i for i, _ in journal_entries(r, KEYS)] == ids[-4:]
    assert books(r) == {"NVDA": D(10)}
    assert trim_journal(r, KEYS, 0, 0, now=NOW) == 0  # no bound: nothing goes


def test_racing_trimmers_fold_each_fill_exactly_once(redis_url: str, r: redis.Redis) -> None:
    for i in range(3000):
        add_journal(r, NOW - 40 * DAY + i, entry(i, side="buy" if i % 3 else "sell", filled=str(1 + i % 4)))
    add_journal(r, NOW, entry(99999))
    before = books(r)
    clients = [redis.Redis.from_url(redis_url, decode_responses=True) for _ in range(4)]
    removed: list[int] = []
    go = threading.Barrier(len(clients))

    def trim(client: redis.Redis) -> None:
        go.wait()
        removed.append(sum(trim_journal(client, KEYS, 30 * DAY, 0, now=NOW) for _ in range(3)))

    threads = [threading.Thread(target=trim, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in clients:
        c.close()
    assert sum(removed) == 3000 and r.xlen(KEYS.orders) == 1
    assert books(r) == before


# ----------------------------------------------------------------------------- the DLQ

def test_the_dlq_is_trimmed_by_age_and_length(r: redis.Redis) -> None:
    for i in range(5):
        r.xadd(KEYS.dlq, {"reason": "old", "n": i}, id=f"{int((NOW - 40 * DAY) * 1000) + i}-0")
    young = [r.xadd(KEYS.dlq, {"reason": "young", "n": i}, id=f"{int(NOW * 1000) - 10 + i}-0") for i in range(5)]
    assert trim_dlq(r, KEYS, 30 * DAY, 0, now=NOW) == 5
    assert trim_dlq(r, KEYS, 30 * DAY, 3, now=NOW) == 2
    assert [i for i, _ in r.xrange(KEYS.dlq)] == young[-3:]


# ----------------------------------------------------------------------------- the streams

def test_the_router_trims_acknowledged_source_entries_by_default_and_keeps_the_rest(rb: redis.Redis,
                                                                                   r: redis.Redis) -> None:
    old = int((time.time() - 2 * 3600) * 1000)
    for i in range(4):
        r.xadd("nvda", {"ticker": "NVDA", "direction": "b"}, id=f"{old + i}-0")
    policy = TrimPolicy.from_settings(SETTINGS, interval_s=0.001)
    router = Router(SETTINGS, client=rb, consumer="router-1", block_ms=None, from_start=True, trim=policy,
                    maintenance_interval_s=3600)
    router.setup()
    router.step()  # routes (and acks) all four
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"}, id=f"{old + 10}-0")  # old, but never acked:
    r.xreadgroup(KEYS.router_group, "router-2", {"nvda": ">"})  # another router holds it (pending)
    assert router.trim_policy.min_age_s == 3600
    wait_for(lambda: router.step() is not None and r.xlen("nvda") == 1, 10,
             "a trim on the trim interval, not the maintenance one")
    assert [i for i, _ in r.xrange("nvda")] == [f"{old + 10}-0"]  # acked old ones went, the pending one stays
    assert r.xlen(KEYS.signals) == 4  # young entries the workers have not read stay


def test_a_consumer_that_held_an_entry_past_its_marker_records_nothing(r: redis.Redis) -> None:
    """Worker A journals and acks; the marker expires (retention); worker B, paused with the same
    delivery in hand all along, then tries to journal it: refused, since the group acked it."""
    r.xgroup_create(KEYS.signals, KEYS.workers_group, id="0", mkstream=True)
    entry_id = r.xadd(KEYS.signals, {"ticker": "NVDA", "side": "buy"})
    r.xreadgroup(KEYS.workers_group, "worker-b", {KEYS.signals: ">"}, count=1)
    r.xclaim(KEYS.signals, KEYS.workers_group, "worker-a", 0, [entry_id])
    e = entry(1)
    assert record_outcome(r, KEYS, e, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id=entry_id,
                          ttl=60, pending_only=True)
    r.delete(KEYS.done("nvda", "1-0"))  # the marker's ttl ran out
    assert not record_outcome(r, KEYS, entry(1), ack_stream=KEYS.signals, group=KEYS.workers_group,
                              entry_id=entry_id, ttl=60, pending_only=True)
    assert r.xlen(KEYS.orders) == 1
    # without the group (Redis lost it), the marker is the guard and the record goes ahead
    r.delete(KEYS.signals)
    written, _ = record_once(r, marker=KEYS.done("nvda", "2-0"), stream=KEYS.orders, fields={"a": "b"},
                             ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id="5-0", pending_only=True)
    assert written


def test_marker_ttls_follow_the_retention(r: redis.Redis, rb: redis.Redis) -> None:
    settings = Settings(symbols=("NVDA",), source_streams=("nvda",), prefix=PREFIX, stream_retention=600)
    router = Router(settings, client=rb, consumer="router-1", block_ms=None)
    router.setup()
    source_id = r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    router.step()
    ttl = r.ttl(KEYS.routed("nvda", source_id))
    assert 600 < ttl <= 1200


# ----------------------------------------------------------------------------- the ledger

def test_a_sweep_drops_settled_reservations_the_cache_reflects(r: redis.Redis) -> None:
    clock = [NOW]
    ledger = Ledger(r, KEYS, cash_buffer_bps=0, now=lambda: clock[0])
    r.hset(KEYS.account, mapping={"cash": "100000", "buying_power": "100000", "equity": "100000",
                                  "status": "ACTIVE", "polled_at": repr(NOW - 0.9), "as_of": repr(NOW - 1)})
    r.hset(KEYS.positions, mapping={"_polled_at": repr(NOW - 0.9), "_as_of": repr(NOW - 1)})
    for i in range(5):
        ledger.reserve_buy(f"b{i}", "NVDA", D(100), qty=D(1))
    clock[0] = NOW + 1
    for i in range(3):
        ledger.settle(f"b{i}", D(1), D(100))
    r.hset(KEYS.account, mapping={"polled_at": repr(NOW + 2.1), "as_of": repr(NOW + 2)})
    r.hset(KEYS.positions, mapping={"_polled_at": repr(NOW + 2.1), "_as_of": repr(NOW + 2),
                                    "NVDA": json.dumps({"qty": "3", "qty_available": "3"})})
    clock[0] = NOW + 3
    ledger.sweep()
    assert sorted(r.hkeys(KEYS.ledger)) == ["b3", "b4"]  # in flight stay; settled and reflected went


def test_a_sparse_stream_keeps_what_is_above_the_cutoff(r: redis.Redis, rb: redis.Redis) -> None:
    """Entries of one stream node more than 2^31 ms (~25 days) apart: Redis 6.2.5's exact XTRIM
    MINID would delete them all, the unread newer ones included; every retention trim deletes by id."""
    base = int((time.time() - 60 * DAY) * 1000)
    old = [r.xadd("nvda", {"ticker": "NVDA", "direction": "b"}, id=f"{base + i}-0") for i in range(3)]
    new = [r.xadd("nvda", {"ticker": "NVDA", "direction": "b"}, id=f"{base + 2**31 + 1000 + i}-0") for i in range(3)]
    r.xgroup_create("nvda", KEYS.router_group, id=old[-1])  # the old ones acknowledged, the new ones unread
    assert trim_acknowledged(r, "nvda", [KEYS.router_group], min_age_ms=1000) == 3
    assert [i for i, _ in r.xrange("nvda")] == new
    for i, entry_id in enumerate([old[0], *new]):
        r.xadd(KEYS.dlq, {"n": i}, id=entry_id)
    assert trim_dlq(r, KEYS, 40 * DAY, 0) == 1 and r.xlen(KEYS.dlq) == 3
    for e, entry_id in ((entry(1), old[0]), (entry(2), new[0])):
        r.xadd(KEYS.orders, e.to_fields(), id=entry_id)
    assert trim_journal(r, KEYS, 40 * DAY, 0) == 1 and [i for i, _ in r.xrange(KEYS.orders)] == [new[0]]
