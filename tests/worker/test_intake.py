"""Intake.deliveries: reclaimed entries, the own due replay, the own PEL after a restart, then new ones."""
from __future__ import annotations

import threading
from typing import Any

import redis
from waiting import wait_for

from bot.streams import ensure_group
from bot.worker.intake import Intake
from bot.worker.replays import OwnReplays

from .bench import CONSUMER, Bench, config


def intake(bench: Bench, replays: OwnReplays | None = None, **options: Any) -> Intake:
    ensure_group(bench.r, bench.keys.signals, bench.keys.workers_group, "0")
    return Intake(bench.rb, bench.keys.signals, bench.keys.workers_group, config(**options),
                  replays if replays is not None else OwnReplays(1.0, 8.0))


def one_round(stage: Intake, stop: threading.Event | None = None) -> list[tuple[str, int]]:
    return [(d.entry_id, d.deliveries) for d in stage.deliveries(stop or threading.Event())]


def add(bench: Bench) -> str:
    return bench.r.xadd(bench.keys.signals, bench.signal().to_fields())


def owner(r: redis.Redis, bench: Bench, entry_id: str) -> tuple[str, int]:
    [row] = r.xpending_range(bench.keys.signals, bench.keys.workers_group, entry_id, entry_id, 1)
    return row["consumer"], row["times_delivered"]


def test_new_entries_come_one_at_a_time_as_first_deliveries(bench: Bench):
    stage = intake(bench)
    first, second = add(bench), add(bench)
    deliveries = list(stage.deliveries(threading.Event()))
    assert [(d.entry_id, d.deliveries) for d in deliveries] == [(first, 1)]
    assert deliveries[0].fields[b"source_stream"] == b"nvda"  # bytes: a foreign entry need not be UTF-8
    assert one_round(stage) == [(second, 1)]
    assert one_round(stage) == []  # nothing new: the BLOCK times out
    assert owner(bench.r, bench, first) == (CONSUMER, 1)


def test_after_a_restart_the_own_pel_comes_first(bench: Bench):
    left = add(bench)
    ensure_group(bench.r, bench.keys.signals, bench.keys.workers_group, "0")
    bench.r.xreadgroup(bench.keys.workers_group, CONSUMER, {bench.keys.signals: ">"}, count=1)  # then it died
    fresh = add(bench)
    stage = intake(bench)  # the restarted worker, same consumer name
    assert one_round(stage) == [(left, 2), (fresh, 1)]  # the held entry first, then what is new


def died_holding(bench: Bench, entry_id: str) -> None:
    """``entry_id`` was delivered to a worker that died; it is idle past the claim-idle used below (50 ms)."""
    ensure_group(bench.r, bench.keys.signals, bench.keys.workers_group, "0")
    bench.r.xreadgroup(bench.keys.workers_group, "dead-worker", {bench.keys.signals: ">"}, count=1)
    assert owner(bench.r, bench, entry_id) == ("dead-worker", 1)
    wait_for(lambda: bench.r.xpending_range(bench.keys.signals, bench.keys.workers_group, "-", "+", 1)[0]
             ["time_since_delivered"] >= 60, what="the entry idle 60 ms")


def test_entries_idle_past_claim_idle_are_reclaimed(bench: Bench):
    entry_id = add(bench)
    died_holding(bench, entry_id)
    stage = intake(bench, claim_idle=0.05)
    delivered = []
    for delivery in stage.deliveries(threading.Event()):
        delivered.append((delivery.entry_id, delivery.deliveries))
        assert owner(bench.r, bench, entry_id) == (CONSUMER, 2)
        bench.r.xack(bench.keys.signals, bench.keys.workers_group, delivery.entry_id)  # handled: journaled
    assert delivered == [(entry_id, 2)]


def test_an_entry_reclaimed_and_left_pending_waits_for_its_own_replay(bench: Bench):
    # a fresh worker's first round: it reclaims a dead worker's entry, the broker is down, the entry
    # is left pending with its replay in 30 s; the same round must not deliver it again at once
    entry_id = add(bench)
    died_holding(bench, entry_id)
    replays = OwnReplays(first=30.0, cap=30.0)
    stage = intake(bench, replays, claim_idle=0.05)
    delivered = []
    for delivery in stage.deliveries(threading.Event()):
        delivered.append((delivery.entry_id, delivery.deliveries))
        replays.left_pending(delivery.entry_id, "broker: HTTP 503")  # handled: PENDING
    assert delivered == [(entry_id, 2)]
    assert owner(bench.r, bench, entry_id) == (CONSUMER, 2)


def test_an_entry_left_pending_is_replayed_once_due(bench: Bench):
    entry_id = add(bench)
    replays = OwnReplays(first=0.05, cap=1.0)
    stage = intake(bench, replays)
    assert one_round(stage) == [(entry_id, 1)]
    replays.left_pending(entry_id, "broker: 503")
    assert one_round(stage) == []  # not due yet
    wait_for(lambda: replays.due() == entry_id, what="the replay to be due")
    assert one_round(stage) == [(entry_id, 2)]


def test_a_replay_of_an_entry_done_meanwhile_is_dropped(bench: Bench):
    entry_id = add(bench)
    replays = OwnReplays(first=0.05, cap=1.0)
    stage = intake(bench, replays)
    assert one_round(stage) == [(entry_id, 1)]
    replays.left_pending(entry_id, "broker: 503")
    bench.r.xclaim(bench.keys.signals, bench.keys.workers_group, "other", 0, [entry_id])  # another worker has it
    wait_for(lambda: replays.due() == entry_id, what="the replay to be due")
    assert one_round(stage) == [] and len(replays) == 0
    assert owner(bench.r, bench, entry_id) == ("other", 2)  # left alone


def test_a_replay_of_an_entry_whose_data_was_deleted_acks_it(bench: Bench):
    entry_id = add(bench)
    replays = OwnReplays(first=0.05, cap=1.0)
    stage = intake(bench, replays)
    assert one_round(stage) == [(entry_id, 1)]
    replays.left_pending(entry_id, "broker: 503")
    bench.r.xdel(bench.keys.signals, entry_id)  # trimmed meanwhile: nothing to process or dead-letter
    wait_for(lambda: replays.due() == entry_id, what="the replay to be due")
    assert one_round(stage) == [] and len(replays) == 0 and bench.pending() == 0


def test_a_stop_delivers_nothing(bench: Bench):
    add(bench)
    stage = intake(bench)
    stop = threading.Event()
    stop.set()
    assert one_round(stage, stop) == []
    assert bench.pending() == 0  # nothing was read
