"""Worker(wrap=...): the seam that hands each stage built by the Worker to a wrapper."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bot.worker import JOURNALED, STAGES, Worker
from bot.worker.record import Recorder
from bot.worker.records import DEAD, DUPLICATE

from .bench import Bench, config


class Spy:
    """Delegates to the stage it wraps, noting (label, method) of every call."""

    def __init__(self, inner: Any, label: str, calls: list[tuple[str, str]]) -> None:
        self.inner, self.label, self.calls = inner, label, calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            self.calls.append((self.label, name))
            return attr(*args, **kw)

        return call


def spying(label: str, calls: list[tuple[str, str]]) -> Callable[[Any], Any]:
    return lambda inner: Spy(inner, label, calls)


@pytest.fixture
def build(bench: Bench) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def make(wrap: dict[str, Callable[[Any], Any]]) -> Worker:
        worker = Worker(bench.settings, config(), r=bench.r, rb=bench.rb, client=bench.client, wrap=wrap)
        workers.append(worker)
        worker.setup()
        return worker

    try:
        yield make
    finally:
        for worker in workers:
            worker.close()


def test_an_unknown_stage_name_raises(bench: Bench):
    with pytest.raises(ValueError, match=r"^no such worker stage: bogus, intake \(stages: triage, decide, submit, "
                                         r"follow, record, controls\)$"):
        Worker(bench.settings, config(), r=bench.r, rb=bench.rb, client=bench.client,
               wrap={"intake": lambda s: s, "bogus": lambda s: s})
    assert STAGES == ("triage", "decide", "submit", "follow", "record", "controls")


def test_a_wrapper_around_record_sees_every_call(bench: Bench, build: Callable[..., Worker]):
    calls: list[tuple[str, str]] = []
    worker = build({"record": spying("record", calls)})
    assert isinstance(worker.recorder, Spy) and isinstance(worker.recorder.inner, Recorder)
    signal = bench.signal()
    bench.r.xadd(bench.keys.signals, signal.to_fields())
    assert worker.step() == [JOURNALED]
    bench.r.xadd(bench.keys.signals, signal.to_fields())  # routed twice
    assert worker.step() == [DUPLICATE]
    bench.r.xadd(bench.keys.signals, {"ticker": "NVDA", "side": "buy"})
    assert worker.step() == [DEAD]
    bench.refresh()
    bench.r.set(bench.keys.halt, "operator")
    bench.r.xadd(bench.keys.signals, bench.signal().to_fields())
    assert worker.step() == [JOURNALED]
    assert calls == [("record", "final"), ("record", "duplicate"), ("record", "dead_letter"), ("record", "skipped")]
    assert [e.outcome for e in bench.journal()] == ["filled", "skipped"] and len(bench.dlq()) == 1
    assert worker.outcomes == {"filled": 1, "skipped": 1}  # read through the wrapper
    assert bench.pending() == 0 and bench.orders() == 1


def test_wrappers_see_the_stages_in_their_order(bench: Bench, build: Callable[..., Worker]):
    calls: list[tuple[str, str]] = []
    worker = build({name: spying(name, calls) for name in STAGES})
    bench.r.xadd(bench.keys.signals, bench.signal().to_fields())
    assert worker.step() == [JOURNALED]
    assert calls == [("triage", "examine"), ("decide", "decide"), ("submit", "submit"), ("follow", "follow"),
                     ("record", "final")]
