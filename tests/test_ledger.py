"""Cash and share reservations against the real Redis. The account and positions hashes are written
here in the poller's format (bot/market.py); time is injected."""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import threading
import uuid
from decimal import Decimal as D

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import lua
from bot.keys import Keys
from bot.ledger import (
    CorruptCache,
    InsufficientCash,
    InsufficientShares,
    Ledger,
    LedgerError,
    NoAccountData,
    PositionLimit,
)

KEYS = Keys("t")
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def put_account(r, cash: str, buying_power: str | None = None, *, as_of: float = T0 - 1) -> None:
    r.delete(KEYS.account)
    r.hset(KEYS.account, mapping={"cash": cash, "buying_power": buying_power or cash, "equity": cash,
                                  "status": "ACTIVE", "polled_at": repr(as_of + 0.1), "as_of": repr(as_of)})


def put_positions(r, holdings: dict[str, str | tuple[str, str | None]], *, as_of: float = T0 - 1) -> None:
    r.delete(KEYS.positions)
    fields = {"_polled_at": repr(as_of + 0.1), "_as_of": repr(as_of)}
    for symbol, held in holdings.items():
        qty, available = held if isinstance(held, tuple) else (held, held)
        fields[symbol] = json.dumps({"qty": qty, "qty_available": available, "avg_entry_price": "100",
                                     "market_value": None, "side": "long"})
    r.hset(KEYS.positions, mapping=fields)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(r, clock) -> Ledger:
    return Ledger(r, KEYS, cash_buffer_bps=0, now=clock)


# ----------------------------------------------------------------------------- buys


def test_all_in_buys_whole_shares_with_the_buffer(r, clock):
    put_account(r, "10000")
    ledger = Ledger(r, KEYS, cash_buffer_bps=50, now=clock)
    res = ledger.reserve_buy("o1", "nvda", D("100"))
    assert (res.symbol, res.side, res.qty, res.cash, res.price) == ("NVDA", "buy", D(99), D("9949.5"), D(100))
    assert res.created_at == T0 and res.settled_at is None
    with pytest.raises(InsufficientCash) as caught:
        ledger.reserve_buy("o2", "NVDA", D("100"))
    assert caught.value.available == D("50.5")
    assert caught.value.needed == D("100.5")
    assert "need 100.50" in str(caught.value) and "9949.50 committed" in str(caught.value)


def test_buffer_boundary(r, clock):
    ledger = Ledger(r, KEYS, cash_buffer_bps=50, now=clock)
    put_account(r, "1005")
    assert ledger.reserve_buy("a", "NVDA", D(100)).qty == 10
    r.delete(KEYS.ledger)
    put_account(r, "1004.99")
    assert ledger.reserve_buy("b", "NVDA", D(100)).qty == 9
    assert ledger.buffered_price(D("100")) == D("100.5")


def test_weights_split_the_cash_and_nothing_is_left_twice(r, ledger):
    put_account(r, "10000")
    nvda = ledger.reserve_buy("n", "NVDA", D(100), max_cash=D(6000))
    aapl = ledger.reserve_buy("a", "AAPL", D(50), max_cash=D(4000))
    assert (nvda.qty, nvda.cash, aapl.qty, aapl.cash) == (60, 6000, 80, 4000)
    assert ledger.committed_cash() == D(10000)
    with pytest.raises(InsufficientCash) as caught:
        ledger.reserve_buy("x", "MSFT", D(1), max_cash=D(100))
    assert caught.value.available == 0


def test_available_is_the_smaller_of_cash_and_buying_power(r, ledger):
    put_account(r, "10000", "3000")
    assert ledger.reserve_buy("o", "NVDA", D(100)).qty == 30
    r.delete(KEYS.ledger)
    put_account(r, "-5", "3000")  # negative cash: nothing to spend, not a negative amount
    with pytest.raises(InsufficientCash) as caught:
        ledger.reserve_buy("p", "NVDA", D(1))
    assert caught.value.available == 0


def test_fixed_qty_must_fit(r, clock):
    put_account(r, "2000")
    ledger = Ledger(r, KEYS, cash_buffer_bps=50, now=clock)
    res = ledger.reserve_buy("o1", "NVDA", D(100), qty=D(10))
    assert (res.qty, res.cash) == (10, D("1005"))
    with pytest.raises(InsufficientCash) as caught:
        ledger.reserve_buy("o2", "NVDA", D(100), qty=D(10))
    assert (caught.value.available, caught.value.needed) == (D(995), D(1005))
    assert ledger.reserve_buy("o3", "NVDA", D(100), qty=D("9.9")).cash == D("994.95")
    r.delete(KEYS.ledger)
    with pytest.raises(InsufficientCash, match=r"capped at 100\.00"):
        ledger.reserve_buy("o4", "NVDA", D(1), qty=D(1000), max_cash=D(100))


def test_same_client_order_id_returns_the_existing_reservation(r, ledger, clock):
    put_account(r, "1000")
    first = ledger.reserve_buy("sig-1", "NVDA", D(100))
    clock.t += 5
    put_account(r, "5000")  # a redelivered signal sees other numbers: it still gets the same reservation
    other_worker = Ledger(r, KEYS, cash_buffer_bps=0, now=clock)
    assert other_worker.reserve_buy("sig-1", "NVDA", D(90)) == first
    assert ledger.committed_cash() == D(1000)
    with pytest.raises(LedgerError, match="already reserves a buy of NVDA"):
        ledger.reserve_sell("sig-1", "NVDA")


def test_no_account_data_and_corrupt_cache(r, ledger):
    with pytest.raises(NoAccountData, match="t:account"):
        ledger.reserve_buy("o", "NVDA", D(100))
    with pytest.raises(NoAccountData, match="t:positions"):
        ledger.reserve_sell("o", "NVDA")
    put_account(r, "1e5")
    with pytest.raises(CorruptCache, match="cash"):
        ledger.reserve_buy("o", "NVDA", D(100))
    r.hset(KEYS.positions, mapping={"_polled_at": "1", "NVDA": "{not json"})
    with pytest.raises(CorruptCache, match="NVDA"):
        ledger.reserve_sell("o", "NVDA")
    assert r.hlen(KEYS.ledger) == 0


def test_bad_arguments_raise_value_error(r, ledger):
    put_account(r, "1000")
    for kwargs in ({"qty": D(0)}, {"qty": D("1.0000000001")}, {"max_cash": D(-1)}):
        with pytest.raises(ValueError):
            ledger.reserve_buy("o", "NVDA", D(10), **kwargs)
    with pytest.raises(ValueError, match="price"):
        ledger.reserve_buy("o", "NVDA", D(0))
    with pytest.raises(ValueError, match="ticker"):
        ledger.reserve_buy("o", "_as_of", D(1))
    with pytest.raises(ValueError):
        Ledger(r, KEYS, cash_buffer_bps=-1)


def test_position_limit_counts_the_buys_in_flight(r, ledger):
    put_account(r, "100000")
    put_positions(r, {"NVDA": "2"})
    ledger.reserve_buy("b1", "NVDA", D(100), qty=D(3), max_position_qty=D(10))  # 2 held + 3
    with pytest.raises(PositionLimit) as caught:
        ledger.reserve_buy("b2", "NVDA", D(100), qty=D(6), max_position_qty=D(10))  # 2 + 3 + 6 > 10
    assert caught.value.room == 5
    assert "2 held + 3 in buys not yet in the positions leave room for 5 of at most 10" in str(caught.value)
    assert ledger.pending_buy_qty("NVDA") == 3
    assert ledger.reserve_buy("b3", "NVDA", D(100), max_position_qty=D("10.5")).qty == 5  # all-in: sized down
    with pytest.raises(PositionLimit):
        ledger.reserve_buy("b4", "NVDA", D(100), max_position_qty=D("10.5"))  # no whole share left
    assert ledger.reserve_buy("a1", "AAPL", D(100), qty=D(10), max_position_qty=D(10)).qty == 10  # per symbol
    assert ledger.reserve_buy("b5", "NVDA", D(100), qty=D(1)).qty == 1  # no limit given: none applied


def test_limits_past_what_the_ledger_can_hold_mean_no_limit(r, ledger):
    # a huge TRADEBOT_MAX_POSITION_VALUE (e.g. 1e12 at $40) must not turn every buy into a skip
    put_account(r, "100000")
    put_positions(r, {})
    huge = D("25753283543.65")  # shares: above the ledger's 2^53 nano-shares
    assert ledger.reserve_buy("b1", "NVDA", D(100), qty=D(3), max_position_qty=huge).qty == 3
    assert ledger.reserve_buy("b2", "NVDA", D(100), max_cash=D("1e13"), max_position_qty=huge).qty > 0


def test_a_settled_buy_counts_against_the_position_until_the_positions_show_it(r, ledger, clock):
    put_account(r, "100000", as_of=T0 - 1)
    put_positions(r, {}, as_of=T0 - 1)
    ledger.reserve_buy("b1", "NVDA", D(100), qty=D(6), max_position_qty=D(10))
    clock.t = T0 + 1
    ledger.settle("b1", D(6), D(100))
    put_account(r, "99400", as_of=T0 + 2)  # the account shows the fill, the positions do not yet
    assert ledger.committed_cash() == 0
    with pytest.raises(PositionLimit):
        ledger.reserve_buy("b2", "NVDA", D(100), qty=D(5), max_position_qty=D(10))
    put_positions(r, {"NVDA": "6"}, as_of=T0 + 2)  # now they do: the reservation is dropped
    assert ledger.pending_buy_qty("NVDA") == 0 and ledger.get("b1") is None
    assert ledger.reserve_buy("b2", "NVDA", D(100), qty=D(4), max_position_qty=D(10)).qty == 4


def test_position_limit_needs_the_positions(r, ledger):
    put_account(r, "1000")
    with pytest.raises(NoAccountData, match="position limit of NVDA"):
        ledger.reserve_buy("b", "NVDA", D(100), max_position_qty=D(5))
    r.hset(KEYS.positions, mapping={"_polled_at": "1", "NVDA": "{not json"})
    with pytest.raises(CorruptCache, match="t:positions field NVDA"):
        ledger.reserve_buy("b", "NVDA", D(100), max_position_qty=D(5))
    assert r.hlen(KEYS.ledger) == 0


# ----------------------------------------------------------------------------- sells


def test_all_in_sell_takes_at_most_max_qty(r, ledger):
    put_positions(r, {"NVDA": "25.5"})
    assert ledger.reserve_sell("s1", "NVDA", max_qty=D(10)).qty == 10
    assert ledger.reserve_sell("s2", "NVDA", max_qty=D(10)).qty == 10
    assert ledger.reserve_sell("s3", "NVDA", max_qty=D(10)).qty == D("5.5")  # what is left, below the cap
    with pytest.raises(InsufficientShares):
        ledger.reserve_sell("s4", "NVDA", max_qty=D(10))


def test_sells_never_exceed_qty_available(r, ledger):
    put_positions(r, {"NVDA": ("10", "8"), "AAPL": "3"})  # 2 NVDA held for an open order elsewhere
    assert ledger.reserve_sell("s1", "NVDA", qty=D(5)).qty == 5
    with pytest.raises(InsufficientShares) as caught:
        ledger.reserve_sell("s2", "NVDA", qty=D(4))
    assert (caught.value.available, caught.value.needed) == (3, 4)
    assert "8 held - 5 reserved" in str(caught.value)
    assert ledger.reserve_sell("s3", "NVDA").qty == 3  # all that is left
    with pytest.raises(InsufficientShares):
        ledger.reserve_sell("s4", "NVDA")
    assert ledger.reserve_sell("s5", "AAPL").qty == 3
    assert ledger.reserved_shares("nvda") == 8
    with pytest.raises(InsufficientShares, match="0 held"):
        ledger.reserve_sell("s6", "TSLA")  # flat


def test_positions_without_qty_available_fall_back_to_qty(r, ledger):
    put_positions(r, {"NVDA": ("4", None)})
    assert ledger.reserve_sell("s", "NVDA").qty == 4


def test_fractional_shares_are_exact(r, ledger):
    put_positions(r, {"NVDA": "0.123456789"})
    assert ledger.reserve_sell("s1", "NVDA", qty=D("0.1")).qty == D("0.1")
    assert ledger.reserve_sell("s2", "NVDA").qty == D("0.023456789")
    with pytest.raises(InsufficientShares):
        ledger.reserve_sell("s3", "NVDA", qty=D("0.000000001"))
    assert ledger.reserved_shares("NVDA") == D("0.123456789")


# ----------------------------------------------------------------------------- life cycle


def test_settled_buy_counts_at_the_fill_until_the_account_shows_it(r, ledger, clock):
    put_account(r, "10000", as_of=T0 - 1)
    ledger.reserve_buy("o1", "NVDA", D(100), max_cash=D(6000))
    clock.t = T0 + 1
    ledger.settle("o1", D(50), D("99.5"))  # partial fill: the unfilled 10 shares are free at once
    res = ledger.get("o1")
    assert (res.qty, res.cash, res.price, res.settled_at) == (50, D(4975), D("99.5"), T0 + 1)
    assert ledger.committed_cash() == D(4975)
    put_account(r, "10000", as_of=T0 + 0.5)  # a poll sent before the settle: does not show the fill
    assert ledger.committed_cash() == D(4975)
    put_account(r, "5025", as_of=T0 + 2)  # sent after the settle: the fill is in the cash now
    assert ledger.committed_cash() == 0
    assert ledger.get("o1") is None
    assert ledger.reserve_buy("o2", "NVDA", D(100)).qty == 50


def test_settling_again_keeps_the_first_settle_time(r, ledger, clock):
    put_account(r, "1000")
    ledger.reserve_buy("o", "NVDA", D(100))
    ledger.settle("o", D(10), D(100))
    clock.t += 5
    ledger.settle("o", D(10), D(100))  # a replayed signal after a crash
    assert ledger.get("o").settled_at == T0
    put_account(r, "0", as_of=T0 + 1)
    assert ledger.committed_cash() == 0


def test_settled_buy_without_avg_price_uses_the_buffered_reserve_price(r, clock):
    put_account(r, "10000")
    ledger = Ledger(r, KEYS, cash_buffer_bps=100, now=clock)
    ledger.reserve_buy("o1", "NVDA", D(100), qty=D(10))
    ledger.settle("o1", D(4), None)
    assert ledger.get("o1").cash == D(404)


def test_settled_sell_counts_until_positions_show_it(r, ledger, clock):
    put_positions(r, {"NVDA": "10"}, as_of=T0 - 1)
    ledger.reserve_sell("s1", "NVDA")
    clock.t = T0 + 1
    ledger.settle("s1", D(10), D(101))
    with pytest.raises(InsufficientShares):
        ledger.reserve_sell("s2", "NVDA")
    put_positions(r, {"NVDA": "10"}, as_of=T0 + 0.5)
    with pytest.raises(InsufficientShares):
        ledger.reserve_sell("s2", "NVDA")
    put_positions(r, {"NVDA": "2"}, as_of=T0 + 2)  # a later buy filled 2 more
    assert ledger.reserve_sell("s2", "NVDA").qty == 2
    assert ledger.get("s1") is None


def test_reflect_margin_keeps_counting_for_the_skew(r, clock):
    put_account(r, "1000")
    ledger = Ledger(r, KEYS, cash_buffer_bps=0, now=clock, reflect_margin=2.0)
    ledger.reserve_buy("o", "NVDA", D(100))
    ledger.settle("o", D(10), D(100))
    put_account(r, "0", as_of=T0 + 1.5)
    assert ledger.committed_cash() == D(1000)
    put_account(r, "0", as_of=T0 + 2.5)
    assert ledger.committed_cash() == 0


def test_release_and_settle_with_nothing_filled_drop_at_once(r, ledger):
    put_account(r, "1000")
    ledger.reserve_buy("o1", "NVDA", D(100), qty=D(5))
    ledger.reserve_buy("o2", "NVDA", D(100), qty=D(5))
    ledger.release("o1")
    ledger.settle("o2", D(0), None)
    assert ledger.get("o1") is None and ledger.get("o2") is None
    assert ledger.committed_cash() == 0
    ledger.settle("never-reserved", D(1), D(1))  # logged, not raised
    ledger.release("never-reserved")


def test_reservations_of_a_crashed_worker_expire(r, clock, caplog):
    put_account(r, "1000")
    ledger = Ledger(r, KEYS, cash_buffer_bps=0, now=clock, max_age=3600)
    ledger.reserve_buy("lost", "NVDA", D(100))
    clock.t += 3599
    with pytest.raises(InsufficientCash):
        ledger.reserve_buy("new", "NVDA", D(100))
    clock.t += 2
    with caplog.at_level(logging.WARNING, logger="bot.ledger"):
        assert ledger.reserve_buy("new", "NVDA", D(100)).qty == 10
    assert "dropped 1 reservation(s)" in caplog.text and "lost" in caplog.text
    assert [res.client_order_id for res in ledger.reservations()] == ["new"]


def test_unreadable_ledger_entries_are_dropped_with_a_warning(r, ledger, caplog):
    put_account(r, "100")
    r.hset(KEYS.ledger, "junk", "not json")
    with caplog.at_level(logging.WARNING, logger="bot.ledger"):
        assert ledger.committed_cash() == 0
    assert "unreadable" in caplog.text
    assert r.hlen(KEYS.ledger) == 0


# ----------------------------------------------------------------------------- precision


def test_cents_and_sub_dollar_prices_are_exact(r, ledger):
    put_account(r, "1000.10")
    res = ledger.reserve_buy("o", "PENNY", D("0.3333"))
    assert (res.qty, res.cash) == (3000, D("999.9"))  # 3001 shares would cost 1000.2333
    r.delete(KEYS.ledger)
    put_account(r, "0.3")
    for n in range(3):  # 0.1 + 0.1 + 0.1 is 0.3 here, not 0.30000000000000004
        ledger.reserve_buy(f"d{n}", "X", D("0.1"), qty=D(1))
    assert ledger.committed_cash() == D("0.3")
    with pytest.raises(InsufficientCash):
        ledger.reserve_buy("d3", "X", D("0.1"), qty=D(1))
    r.delete(KEYS.ledger)
    put_account(r, "1000")
    assert ledger.reserve_buy("f", "NVDA", D("333.33"), qty=D("0.5")).cash == D("166.665")


@pytest.fixture
def lua_units(r):
    script = r.register_script(lua.source("ledger_common") + "local n = units(ARGV[1], tonumber(ARGV[2])) "
                                             "if n == nil then return 'nil' end return fmt(n)")
    return lambda text, scale: script(keys=["a", "b", "c"], args=[text, scale])


@pytest.mark.parametrize("text,scale,expected", [
    ("10000.50", 6, "10000500000"),
    ("0.1", 6, "100000"),
    ("  7 ", 6, "7000000"),
    (".5", 6, "500000"),
    ("123.4567899", 6, "123456789"),  # extra digits round down
    ("-1.0000001", 6, "-1000001"),  # ...towards minus infinity
    ("0.123456789", 9, "123456789"),
    ("99999999999999999999", 6, "9000000000000000"),  # clamped below 2^53
    ("1e5", 6, "nil"),
    ("", 6, "nil"),
    ("abc", 6, "nil"),
])
def test_lua_parses_decimal_strings_exactly(lua_units, text, scale, expected):
    assert lua_units(text, scale) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.decimals(min_value=D("-999999999"), max_value=D("999999999"), places=8, allow_nan=False))
def test_lua_units_match_decimal_floor(lua_units, value):
    expected = value.scaleb(6).to_integral_value(rounding="ROUND_FLOOR")
    assert lua_units(format(value, "f"), 6) == str(int(expected))


# ----------------------------------------------------------------------------- concurrency


def test_eight_threads_never_commit_more_than_the_cash(r, redis_url, clock):
    put_account(r, "1000")
    barrier = threading.Barrier(8)
    results: list[D] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            ledger = Ledger(client, KEYS, cash_buffer_bps=0, now=clock)
            barrier.wait(timeout=10)
            for i in range(25):
                try:
                    res = ledger.reserve_buy(f"w{n}-{i}", "NVDA", D("7.77"), qty=D(1))
                except InsufficientCash:
                    continue
                with lock:
                    results.append(res.cash)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(results) == 128  # floor(1000 / 7.77): every share that fits, and not one more
    assert sum(results) == D("994.56") == Ledger(r, KEYS, now=clock).committed_cash()


def _sell_in_process(url: str, tag: str, out: multiprocessing.Queue[str]) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    ledger = Ledger(client, KEYS, now=lambda: T0)
    got = D(0)
    for i in range(30):
        with contextlib.suppress(InsufficientShares):
            got += ledger.reserve_sell(f"{tag}-{i}", "NVDA", qty=D("0.5")).qty
    client.close()
    out.put(str(got))


def test_processes_never_sell_more_than_held(r, redis_url):
    put_positions(r, {"NVDA": "37.25"})
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_sell_in_process, args=(redis_url, uuid.uuid4().hex, out)) for _ in range(4)]
    try:
        for proc in procs:
            proc.start()
        totals = [D(out.get(timeout=20)) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    assert sum(totals) == D("37")  # 74 half-shares fit in 37.25; the last 0.25 does not
    assert Ledger(r, KEYS, now=lambda: T0).reserved_shares("NVDA") == D("37")
