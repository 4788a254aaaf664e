"""OwnReplays: the capped, doubling schedule of the entries this worker left pending."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from bot.worker import replays as replays_module
from bot.worker.replays import MAX_REASONS, OwnReplays


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The monotonic clock OwnReplays reads, set by the test (now[0])."""
    clock = [1000.0]
    monkeypatch.setattr(replays_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    return clock


def test_the_delay_doubles_from_first_to_cap(now: list[float]):
    replays = OwnReplays(first=0.5, cap=3.0)
    delays = [replays.left_pending("1-0", f"try {n}") for n in range(6)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert replays.scheduled()["1-0"].failures == 6
    assert replays.scheduled()["1-0"].due == 1003.0
    assert replays.last_error("1-0") == "try 5"  # the latest error, not the first


def test_due_only_once_the_delay_has_passed(now: list[float]):
    replays = OwnReplays(first=1.0, cap=8.0)
    assert replays.due() is None and replays.seconds_to_next() is None
    replays.left_pending("1-0", "broker: 503")
    assert replays.due() is None and replays.seconds_to_next() == 1.0
    now[0] += 0.999
    assert replays.due() is None
    now[0] += 0.001
    assert replays.due() == "1-0"
    assert replays.due() == "1-0"  # asking does not consume it: only forget() or a new schedule does
    assert len(replays) == 1


def test_due_gives_the_earliest_due_entry(now: list[float]):
    replays = OwnReplays(first=1.0, cap=8.0)
    replays.left_pending("1-0", "a")
    replays.left_pending("1-0", "a again")  # due in 2 s
    replays.left_pending("2-0", "b")  # due in 1 s
    now[0] += 1.0
    assert replays.due() == "2-0"
    now[0] += 5.0
    assert replays.due() == "2-0"  # both due: the one due first
    replays.forget("2-0")
    assert replays.due() == "1-0"


def test_forget_clears_schedule_and_last_error(now: list[float]):
    replays = OwnReplays(first=1.0, cap=8.0)
    replays.left_pending("1-0", "broker: 503")
    replays.left_pending("1-0", "broker: 503")
    replays.forget("1-0")
    assert len(replays) == 0 and replays.scheduled() == {} and replays.last_error("1-0") is None
    assert replays.due() is None and replays.seconds_to_next() is None
    replays.forget("never-seen")  # harmless
    assert replays.left_pending("1-0", "again") == 1.0  # the backoff starts over


def test_tracked_bound_drops_the_oldest_schedule(now: list[float]):
    replays = OwnReplays(first=1.0, cap=8.0, tracked=2)
    for entry_id in ("1-0", "2-0", "3-0"):
        replays.left_pending(entry_id, f"error of {entry_id}")
    assert list(replays.scheduled()) == ["2-0", "3-0"] and len(replays) == 2
    # its last error stays (XAUTOCLAIM still delivers the dropped entry; a DLQ reason needs it)
    assert replays.last_error("1-0") == "error of 1-0"
    replays.left_pending("2-0", "again")  # pending again: now the newest, so 3-0 is the oldest
    replays.left_pending("4-0", "d")
    assert list(replays.scheduled()) == ["2-0", "4-0"]
    assert replays.scheduled()["2-0"].failures == 2


def test_reasons_are_short_and_bounded(now: list[float]):
    replays = OwnReplays(first=1.0, cap=8.0, tracked=1)
    replays.left_pending("0-1", "x" * 2000)
    assert replays.last_error("0-1") == "x" * 500
    for n in range(1, MAX_REASONS + 1):
        replays.left_pending(f"{n}-0", "e")
    assert replays.last_error("0-1") is None  # the oldest of MAX_REASONS + 1 went
    assert replays.last_error("1-0") == "e" and replays.last_error(f"{MAX_REASONS}-0") == "e"
