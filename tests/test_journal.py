from decimal import Decimal

import pytest

from bot.journal import OUTCOMES, JournalEntry, count, read_journal, record_outcome
from bot.keys import Keys
from bot.streams import autoclaim, dead_letter, ensure_group

KEYS = Keys("tb")


def entry(source_id="1700000000000-0", **kw) -> JournalEntry:
    values = dict(source_stream="nvda", source_id=source_id, ticker="NVDA", side="buy", outcome="filled",
                  client_order_id="tb-abc", order_id="o-1", status="filled", qty=Decimal("3"),
                  filled_qty=Decimal("3"), filled_avg_price=Decimal("123.45"), source_at=1700000000.0,
                  routed_at=1700000000.01, claimed_at=1700000000.02, submitted_at=1700000000.03,
                  final_at=1700000000.5, consumer="w1", deliveries=1)
    values.update(kw)
    return JournalEntry(**values)


@pytest.fixture
def delivered(r):
    """A signals entry delivered to worker w1 and still pending."""
    ensure_group(r, KEYS.signals, KEYS.workers_group)
    entry_id = r.xadd(KEYS.signals, {"ticker": "NVDA", "side": "buy", "source_stream": "nvda",
                                     "source_id": "1700000000000-0", "routed_at": "1.0"})
    r.xreadgroup(KEYS.workers_group, "w1", {KEYS.signals: ">"})
    return entry_id


def pending(r):
    return r.xpending(KEYS.signals, KEYS.workers_group)["pending"]


def test_fields_round_trip():
    original = entry()
    fields = original.to_fields()
    assert fields["outcome"] == "filled" and fields["filled_avg_price"] == "123.45"
    assert fields["final_at"] == "1700000000.5" and fields["deliveries"] == "1"
    assert all(isinstance(v, str) for v in fields.values())
    assert JournalEntry.from_fields(fields) == original
    assert JournalEntry.from_fields({k.encode(): v.encode() for k, v in fields.items()}) == original


def test_unknown_values_are_empty_strings_and_read_back_as_none():
    skipped = JournalEntry(source_stream="nvda", source_id="1-0", ticker="NVDA", side="sell", outcome="skipped",
                           reason="market closed")
    fields = skipped.to_fields()
    assert fields["order_id"] == "" and fields["qty"] == "" and fields["submitted_at"] == ""
    assert set(fields) >= {"source_stream", "source_id", "ticker", "side", "outcome", "reason", "client_order_id",
                           "order_id", "status", "qty", "filled_qty", "filled_avg_price", "source_at",
                           "routed_at", "claimed_at", "submitted_at", "final_at"}
    back = JournalEntry.from_fields(fields)
    assert back == skipped and back.qty is None and back.final_at is None and back.deliveries is None


def test_quantities_given_as_float_or_str_are_written_exactly():
    fields = entry(qty="2", filled_qty=0.1, filled_avg_price=Decimal("100.10")).to_fields()
    assert (fields["qty"], fields["filled_qty"], fields["filled_avg_price"]) == ("2", "0.1", "100.10")


def test_outcome_must_be_known():
    assert "partially_filled" in OUTCOMES
    with pytest.raises(ValueError, match="outcome 'done'"):
        entry(outcome="done")


def test_record_outcome_is_exactly_once(r, delivered):
    first = entry()
    assert record_outcome(r, KEYS, first, ack_stream=KEYS.signals, group=KEYS.workers_group,
                          entry_id=delivered) is True
    assert pending(r) == 0
    # the same signal handled again (a reclaim after a slow worker): acked, not journaled twice
    r.xgroup_setid(KEYS.signals, KEYS.workers_group, "0")
    r.xreadgroup(KEYS.workers_group, "w2", {KEYS.signals: ">"})
    assert pending(r) == 1
    assert record_outcome(r, KEYS, entry(consumer="w2"), ack_stream=KEYS.signals, group=KEYS.workers_group,
                          entry_id=delivered) is False
    assert pending(r) == 0
    assert count(r, KEYS) == 1
    (journaled,) = read_journal(r, KEYS)
    assert journaled == first and journaled.consumer == "w1"
    marker = KEYS.done("nvda", "1700000000000-0")
    assert r.get(marker) == journaled.journal_id == first.journal_id
    assert 6 * 24 * 3600 < r.ttl(marker) <= 7 * 24 * 3600


def test_no_journal_entry_after_the_signal_was_dead_lettered(r, delivered):
    assert dead_letter(r, KEYS, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id=delivered,
                       source_stream="nvda", source_id="1700000000000-0", reason="poison", deliveries=6,
                       raw_fields={"ticker": "NVDA"}) is True
    r.xgroup_setid(KEYS.signals, KEYS.workers_group, "0")
    r.xreadgroup(KEYS.workers_group, "w1", {KEYS.signals: ">"})
    assert record_outcome(r, KEYS, entry(), ack_stream=KEYS.signals, group=KEYS.workers_group,
                          entry_id=delivered) is False
    assert count(r, KEYS) == 0 and r.xlen(KEYS.dlq) == 1 and pending(r) == 0


def test_racing_workers_journal_once(r, delivered):
    """A reclaimed entry: the old owner and the new one both finish; one entry, nothing left pending."""
    claimed = autoclaim(r, KEYS.signals, KEYS.workers_group, "w2", min_idle_ms=0)
    assert [i for i, _ in claimed] == [delivered]
    results = [record_outcome(r, KEYS, entry(consumer=c), ack_stream=KEYS.signals, group=KEYS.workers_group,
                              entry_id=delivered) for c in ("w2", "w1")]
    assert results == [True, False]
    assert count(r, KEYS) == 1 and pending(r) == 0


def test_read_journal_returns_the_newest_last(r, delivered):
    for n in range(5):
        record_outcome(r, KEYS, entry(source_id=f"17-{n}", order_id=f"o-{n}"), ack_stream=KEYS.signals,
                       group=KEYS.workers_group, entry_id=delivered)
    assert [e.order_id for e in read_journal(r, KEYS, last=3)] == ["o-2", "o-3", "o-4"]
    assert count(r, KEYS) == 5
    assert read_journal(r, Keys("other")) == []


def test_journal_maxlen_is_approximate_and_optional(r, delivered):
    for n in range(300):
        record_outcome(r, KEYS, entry(source_id=f"17-{n}"), ack_stream=KEYS.signals, group=KEYS.workers_group,
                       entry_id=delivered, maxlen=50)
    assert 50 <= count(r, KEYS) < 300
    assert read_journal(r, KEYS, last=1)[0].source_id == "17-299"
