import json

import pytest

from bot.config import Settings
from bot.keys import Keys
from bot.ops.render import render_status
from bot.ops.status import collect_status
from bot.ops.stream_status import has_xinfo_lag, stream_status
from bot.streams import (
    GroupReader,
    acknowledged_bound,
    autoclaim,
    autoclaim_entries,
    consumers,
    dead_letter,
    default_consumer_name,
    delete_consumer_if_idle,
    delivery_count,
    ensure_group,
    is_stream_id,
    original_fields,
    raw_fields_for_dlq,
    reap_idle_consumers,
    trim_acknowledged,
)

KEYS = Keys("tb")
S, G = "src", "grp"


def add(r, n=1, stream=S):
    return [r.xadd(stream, {"i": str(i)}) for i in range(n)]


def read_once(r, streams, group, consumer):
    """One read of a fresh GroupReader: the consumer's own pending entries first, else new ones."""
    return GroupReader(streams, group, consumer, count=10, block_ms=None).read(r)


def pending_ids(r, stream=S, group=G, consumer=None):
    rows = r.xpending_range(stream, group, "-", "+", 1000, consumername=consumer)
    return [row["message_id"] for row in rows]


# ---------------------------------------------------------------- groups and reading

def test_ensure_group_creates_stream_and_is_idempotent(r):
    assert ensure_group(r, S, G) is True
    assert r.exists(S)
    assert ensure_group(r, S, G) is False
    assert [g["name"] for g in r.xinfo_groups(S)] == [G]


def test_group_at_dollar_skips_existing_entries_and_at_zero_reads_them(r):
    add(r, 2)
    ensure_group(r, S, "new", "$")
    ensure_group(r, S, "all", "0")
    assert read_once(r, S, "new", "c") == []
    assert len(read_once(r, S, "all", "c")) == 2  # PEL empty: new ones at once


def test_read_group_replays_own_pending_first_then_reads_new(r):
    ensure_group(r, S, G)
    first = add(r, 3)
    r.xreadgroup(G, "me", {S: ">"})  # delivered before a "crash", never acked
    r.xreadgroup(G, "other", {S: ">"})  # nothing left for other
    later = add(r, 1)
    reader = GroupReader(S, G, "me", count=2, block_ms=None)

    page1 = reader.read(r)
    assert [e.id for e in page1] == first[:2] and reader.replaying
    assert reader.last_replayed == {(S, i) for i in first[:2]}
    assert page1[0].stream == S and page1[0].fields == {"i": "0"}
    page2 = reader.read(r)  # paged: continues after the last replayed id even without acks
    assert [e.id for e in page2] == first[2:]
    new = reader.read(r)  # PEL drained -> the same call switches to ">"
    assert [e.id for e in new] == later and not reader.replaying
    assert reader.last_replayed == frozenset()
    assert reader.read(r) == []
    assert delivery_count(r, S, G, first[0]) == 2 and delivery_count(r, S, G, later[0]) == 1


def test_replay_acks_and_skips_entries_whose_data_was_deleted(r):
    ensure_group(r, S, G)
    gone, kept = add(r, 2)
    r.xreadgroup(G, "me", {S: ">"})
    r.xdel(S, gone)
    entries = read_once(r, S, G, "me")
    assert [e.id for e in entries] == [kept]
    assert pending_ids(r) == [kept]


def test_read_group_recreates_a_lost_group(r):
    ensure_group(r, S, G)
    r.xgroup_destroy(S, G)  # as if Redis restarted without data
    ids = add(r, 2)
    entries = read_once(r, [S], G, "me")
    assert [e.id for e in entries] == ids  # recreated at 0: nothing added meanwhile is lost


def test_read_group_over_several_streams_works_with_bytes_client(rb):
    ensure_group(rb, "a", G)
    ensure_group(rb, "b", G)
    ida, idb = rb.xadd("a", {b"k": b"\xff"}), rb.xadd("b", {b"k": b"v"})
    seen = read_once(rb, ("a", "b"), G, "me")
    assert {(e.stream, e.id) for e in seen} == {("a", ida.decode()), ("b", idb.decode())}
    assert {e.fields[b"k"] for e in seen} == {b"\xff", b"v"}


# ---------------------------------------------------------------- reclaiming

def test_autoclaim_reclaims_idle_entries_of_another_consumer(r):
    ensure_group(r, S, G)
    ids = add(r, 3)
    r.xreadgroup(G, "dead", {S: ">"})
    assert autoclaim(r, S, G, "alive", min_idle_ms=60_000) == []  # not idle long enough
    claimed = autoclaim(r, S, G, "alive", min_idle_ms=0)
    assert [(i, f) for i, f in claimed] == [(ids[0], {"i": "0"}), (ids[1], {"i": "1"}), (ids[2], {"i": "2"})]
    assert pending_ids(r, consumer="alive") == ids and pending_ids(r, consumer="dead") == []
    assert delivery_count(r, S, G, ids[0]) == 2  # a claim counts as a delivery, as a plain XAUTOCLAIM


def test_autoclaim_respects_count_and_follows_the_cursor(r):
    ensure_group(r, S, G)
    ids = add(r, 25)
    r.xreadgroup(G, "dead", {S: ">"})
    first = autoclaim(r, S, G, "alive", min_idle_ms=0, count=10)
    assert [i for i, _ in first] == ids[:10]
    r.xack(S, G, *ids[:10])
    rest = autoclaim(r, S, G, "alive", min_idle_ms=0, count=100)
    assert [i for i, _ in rest] == ids[10:]


def test_autoclaim_acks_and_skips_deleted_entries(r):
    ensure_group(r, S, G)
    ids = add(r, 3)
    r.xreadgroup(G, "dead", {S: ">"})
    r.xdel(S, ids[1])
    claimed = autoclaim(r, S, G, "alive", min_idle_ms=0)
    assert [i for i, _ in claimed] == [ids[0], ids[2]]
    assert pending_ids(r) == [ids[0], ids[2]]


def test_autoclaim_resolves_deleted_entries_on_either_server(r, rb, redis_version, caplog):
    """Redis >= 7 (Valkey) names deleted pending entries in XAUTOCLAIM's third element and drops
    them from the PEL itself; 6.2 answers nil entries.  Either way: none left pending, all counted."""
    ensure_group(r, S, G)
    ensure_group(r, S, "probe")  # a twin group for the raw command: on 7+ it resolves what it sees
    ids = add(r, 6)
    r.xreadgroup(G, "dead", {S: ">"})
    r.xreadgroup("probe", "dead", {S: ">"})
    r.xdel(S, ids[1], ids[4])
    raw = r.execute_command("XAUTOCLAIM", S, "probe", "alive", 0, "0-0", "COUNT", 10, "JUSTID")
    if redis_version >= (7, 0):  # the server's third element: the path under test is the 7+ one
        assert len(raw) == 3 and sorted(raw[2]) == [ids[1], ids[4]] and len(raw[1]) == 4
    else:  # 6.2: no third element; JUSTID names the deleted entries with the others
        assert len(raw) == 2 and len(raw[1]) == 6
    with caplog.at_level("WARNING", logger="bot.streams"):
        result = autoclaim_entries(rb, S, G, "alive", min_idle_ms=0)
    assert [i for i, _ in result.claimed] == [ids[0], ids[2], ids[3], ids[5]]
    assert result.claimed[0][1] == {b"i": b"0"}
    assert sorted(result.deleted) == [ids[1], ids[4]]
    if redis_version >= (7, 0):
        assert (sorted(result.dropped), result.acked) == ([ids[1], ids[4]], [])
    else:
        assert (sorted(result.acked), result.dropped) == ([ids[1], ids[4]], [])
    assert pending_ids(r) == [ids[0], ids[2], ids[3], ids[5]]
    assert r.xpending(S, G)["pending"] == 4
    assert "2 pending entries of src (group grp) had their data deleted" in caplog.text
    assert autoclaim_entries(r, S, G, "alive", min_idle_ms=0).deleted == []  # resolved once, for good


def test_autoclaim_of_only_deleted_entries_follows_the_cursor_past_them(r, redis_version):
    """count=1, as a worker claims: deleted entries use up a scan's count, never the caller's."""
    ensure_group(r, S, G)
    ids = add(r, 30)
    r.xreadgroup(G, "dead", {S: ">"})
    r.xdel(S, *ids[:29])
    result = autoclaim_entries(r, S, G, "alive", min_idle_ms=0, count=1)
    assert [i for i, _ in result.claimed] == [ids[29]]
    assert len(result.deleted) == 29 and pending_ids(r) == [ids[29]]
    assert (result.dropped if redis_version >= (7, 0) else result.acked) == result.deleted
    assert autoclaim(r, S, G, "alive", min_idle_ms=0) == [(ids[29], {"i": "29"})]


def test_autoclaim_without_group_claims_nothing(r):
    assert autoclaim(r, "nothing", G, "me", 0) == []


def test_delivery_count_is_zero_when_not_pending(r):
    ensure_group(r, S, G)
    (entry,) = add(r)
    assert delivery_count(r, S, G, entry) == 0
    r.xreadgroup(G, "me", {S: ">"})
    assert delivery_count(r, S, G, entry) == 1
    r.xack(S, G, entry)
    assert delivery_count(r, S, G, entry) == 0


# ---------------------------------------------------------------- dead letters

def dlq(r, **overrides):
    kw = dict(ack_stream=S, group=G, entry_id="0-0", source_stream=S, source_id="0-0", reason="bad",
              deliveries=1, raw_fields={"ticker": "TSLA"})
    kw.update(overrides)
    return dead_letter(r, KEYS, **kw)


def test_dead_letter_writes_reason_and_raw_fields_and_acks(r):
    ensure_group(r, S, G)
    (entry,) = [r.xadd(S, {"ticker": "TSLA", "direction": "b"})]
    r.xreadgroup(G, "me", {S: ">"})
    assert dlq(r, entry_id=entry, source_id=entry, reason="unknown ticker 'TSLA' (configured: NVDA)",
               deliveries=3, raw_fields={"ticker": "TSLA", "direction": "b"}, consumer="me") is True
    ((dlq_id, fields),) = r.xrange(KEYS.dlq)
    assert fields["source_stream"] == S and fields["source_id"] == entry
    assert fields["reason"] == "unknown ticker 'TSLA' (configured: NVDA)"
    assert fields["deliveries"] == "3" and fields["consumer"] == "me"
    assert fields["raw_ticker"] == "TSLA" and fields["raw_direction"] == "b"
    assert pending_ids(r) == []
    assert r.get(KEYS.done(S, entry)) == f"dlq:{dlq_id}"
    assert 0 < r.ttl(KEYS.done(S, entry)) <= 7 * 24 * 3600


def test_dead_letter_is_exactly_once_per_signal(r):
    ensure_group(r, S, G)
    (entry,) = add(r)
    r.xreadgroup(G, "me", {S: ">"})
    assert dlq(r, entry_id=entry, source_id=entry) is True
    assert dlq(r, entry_id=entry, source_id=entry, reason="again") is False
    assert r.xlen(KEYS.dlq) == 1 and pending_ids(r) == []


def test_dead_letter_is_skipped_when_a_guard_key_exists(r):
    ensure_group(r, S, G)
    (entry,) = add(r)
    r.xreadgroup(G, "me", {S: ">"})
    r.set(KEYS.routed(S, entry), "1-0")
    assert dlq(r, entry_id=entry, source_id=entry, guard_keys=[KEYS.routed(S, entry)]) is False
    assert not r.exists(KEYS.dlq) and pending_ids(r) == []  # acked all the same


def test_dead_letter_keeps_non_utf8_fields_as_json_with_base64(rb):
    raw = {b"ticker": b"\xffNVDA", b"direction": b"b", b"\x00\xfe": b""}
    assert dlq(rb, raw_fields=raw) is True
    ((_, fields),) = rb.xrange(KEYS.dlq)
    assert not any(k.startswith(b"raw_") for k in fields)
    pairs = json.loads(fields[b"raw"])
    assert {"name": "ticker", "value_b64": "/05WREE="} in pairs
    assert original_fields(fields) == raw


@pytest.mark.parametrize("raw", [
    {"": "empty name"},
    {"bad\nname": "x"},
    {"n" * 65: "long name"},
    {f"f{i}": "v" for i in range(101)},
])
def test_unusable_names_go_to_one_raw_json_field(raw):
    fields = raw_fields_for_dlq(raw)
    assert list(fields) == ["raw"]
    assert original_fields(fields) == {k.encode(): v.encode() for k, v in raw.items()}


def test_usable_names_keep_their_own_field(r):
    raw = {"ticker": "NVDA", "note": "ünïcode"}
    fields = raw_fields_for_dlq(raw)
    assert fields == {"raw_ticker": "NVDA", "raw_note": "ünïcode"}
    assert original_fields(fields) == {b"ticker": b"NVDA", b"note": "ünïcode".encode()}


# ---------------------------------------------------------------- trimming

def test_trim_never_removes_pending_or_undelivered_entries(r):
    ensure_group(r, S, G)
    ids = add(r, 6)
    r.xreadgroup(G, "me", {S: ">"}, count=4)  # 0..3 delivered, 4..5 not yet
    r.xack(S, G, ids[0], ids[1], ids[3])  # 2 still pending
    assert trim_acknowledged(r, S, [G]) == 2
    assert [i for i, _ in r.xrange(S)] == ids[2:]
    r.xack(S, G, ids[2])
    assert trim_acknowledged(r, S, [G]) == 2  # 2 and the acked 3; 4, 5 never delivered
    assert [i for i, _ in r.xrange(S)] == ids[4:]


def test_trim_respects_every_group_and_a_missing_group(r):
    ensure_group(r, S, G)
    ensure_group(r, S, "slow")
    ids = add(r, 3)
    for group in (G, "slow"):
        r.xreadgroup(group, "me", {S: ">"})
    r.xack(S, G, *ids)
    r.xack(S, "slow", ids[0])
    assert trim_acknowledged(r, S, [G]) == 1  # "slow" still needs 1 and 2
    assert trim_acknowledged(r, S, ["workers-not-there-yet"]) == 0
    assert trim_acknowledged(r, "no-such-stream", [G]) == 0
    assert acknowledged_bound(r, S) is not None


def test_trim_without_any_group_removes_nothing(r):
    add(r, 3)
    assert trim_acknowledged(r, S) == 0 and r.xlen(S) == 3


def test_trim_to_maxlen_keeps_the_newest_but_never_past_the_acknowledged(r):
    ensure_group(r, S, G)
    ids = add(r, 10)
    r.xreadgroup(G, "me", {S: ">"})
    r.xack(S, G, *ids[:3])
    assert trim_acknowledged(r, S, [G], maxlen=5) == 3  # would remove 5, only 3 are acknowledged
    r.xack(S, G, *ids[3:])
    assert trim_acknowledged(r, S, [G], maxlen=5) == 2
    assert [i for i, _ in r.xrange(S)] == ids[5:]
    assert trim_acknowledged(r, S, [G], maxlen=5) == 0


def test_trim_by_age(r):
    ensure_group(r, S, G, "0")
    old = [r.xadd(S, {"i": "old"}, id=f"1000-{n}") for n in range(1, 3)]
    new = [r.xadd(S, {"i": "new"}, id="5000-0")]
    r.xreadgroup(G, "me", {S: ">"})
    r.xack(S, G, *old, *new)
    assert trim_acknowledged(r, S, [G], min_age_ms=2000, now_ms=6000) == 2
    assert [i for i, _ in r.xrange(S)] == new


# ---------------------------------------------------------------- consumers

def test_delete_consumer_only_without_pending_entries(r):
    ensure_group(r, S, G)
    done, entry = add(r, 2)
    r.xreadgroup(G, "idle", {S: ">"}, count=1)
    r.xack(S, G, done)
    r.xreadgroup(G, "busy", {S: ">"})
    assert delete_consumer_if_idle(r, S, G, "busy") is False
    assert delete_consumer_if_idle(r, S, G, "idle", min_idle_ms=3_600_000) is False  # not idle long enough
    assert delete_consumer_if_idle(r, S, G, "idle") is True
    assert delete_consumer_if_idle(r, S, G, "never-there") is False
    assert [c["name"] for c in consumers(r, S, G)] == ["busy"]
    r.xack(S, G, entry)
    assert delete_consumer_if_idle(r, S, G, "busy") is True
    assert consumers(r, S, G) == [] and consumers(r, S, "no-group") == []


def test_reap_idle_consumers_keeps_the_caller_and_anyone_with_pending_entries(r):
    ensure_group(r, S, G)
    _, done, _ = add(r, 3)
    for consumer in ("busy", "gone", "me"):
        r.xreadgroup(G, consumer, {S: ">"}, count=1)
    r.xack(S, G, done)  # "gone" (a dead process) has nothing pending; "busy" still holds its entry
    assert reap_idle_consumers(r, S, G, min_idle_ms=3_600_000, keep="me") == []  # nobody idle for an hour
    assert reap_idle_consumers(r, S, G, min_idle_ms=0, keep="me") == ["gone"]
    assert sorted(c["name"] for c in consumers(r, S, G)) == ["busy", "me"]
    assert reap_idle_consumers(r, S, "no-group", min_idle_ms=0) == []


def test_default_consumer_names_are_unique_per_process_and_role():
    import os

    plain, router = default_consumer_name(), default_consumer_name("router")
    assert plain.endswith(f"-{os.getpid()}") and router == f"router-{plain}"
    assert not any(ch.isspace() for ch in plain)


@pytest.mark.parametrize("text,ok", [("1719410000000-0", True), ("0-0", True), ("1-2-3", False), ("17", False),
                                     ("*", False), ("1719410000000-", False), (" 1-0", False)])
def test_is_stream_id(text, ok):
    assert is_stream_id(text) is ok


def test_an_oversized_value_is_dead_lettered_truncated_with_its_size_and_digest() -> None:
    import hashlib
    import json

    from bot.streams import KEPT_OF_TRUNCATED

    poison = b"x" * 1_000_000
    fields = raw_fields_for_dlq({b"ticker": b"NVDA", b"payload": poison})
    assert len(fields["raw_payload"]) == KEPT_OF_TRUNCATED and fields["raw_ticker"] == "NVDA"
    (info,) = json.loads(fields["truncated"])
    assert info == {"name": "payload", "size": 1_000_000, "sha256": hashlib.sha256(poison).hexdigest()}
    assert original_fields(fields)[b"ticker"] == b"NVDA"  # the rest is still readable


# ---------------------------------------------------------------- lag (tradebot status)

def _group_with_lag(r):
    ensure_group(r, S, G, "0")
    ids = add(r, 5)
    r.xreadgroup(G, "c", {S: ">"}, count=2)  # 2 delivered, 3 not
    return ids


def _status_text(redis_url, tmp_path):
    settings = Settings(redis_url=redis_url, prefix="tb", source_streams=(S,))
    return render_status(collect_status(settings, var_dir=str(tmp_path)))


def test_lag_comes_from_xinfo_on_7_and_is_counted_on_6_2(r, redis_url, redis_version, tmp_path):
    _group_with_lag(r)
    assert ("lag" in r.xinfo_groups(S)[0]) is (redis_version >= (7, 0))
    (group,) = stream_status(r, S, "source").groups
    assert group.lag == 3
    assert group.lag_method == ("xinfo" if redis_version >= (7, 0) else "exact-xrange")
    text = _status_text(redis_url, tmp_path)
    assert ("this Redis has no XINFO lag" in text) is (redis_version < (7, 0))
    assert "XINFO GROUPS has none" not in text


def test_lag_is_counted_where_xinfo_has_none(r, redis_url, redis_version, tmp_path):
    """On 7+ an entry deleted after the group's last-delivered-id makes XINFO's lag null: counted."""
    ids = _group_with_lag(r)
    r.xdel(S, ids[3])
    if redis_version >= (7, 0):
        assert r.xinfo_groups(S)[0]["lag"] is None
    (group,) = stream_status(r, S, "source").groups
    assert (group.lag, group.lag_method) == (2, "exact-xrange")
    text = _status_text(redis_url, tmp_path)
    if redis_version >= (7, 0):
        assert "XINFO GROUPS has none" in text and "this Redis has no XINFO lag" not in text
    else:
        assert "this Redis has no XINFO lag" in text


@pytest.mark.parametrize(("version", "has"), [("6.2.5", False), ("7.0.0", True), ("7.2.4", True), ("8.0.1", True),
                                              ("?", False), ("", False)])
def test_has_xinfo_lag_reads_the_redis_version(version, has):
    assert has_xinfo_lag(version) is has
