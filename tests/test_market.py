"""The Redis market cache: the poller's writes and the workers' typed reads, on a real Redis."""
from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from bot.alpaca.models import Account, Clock, Position, Snapshot
from bot.keys import Keys
from bot.market import (
    CorruptEntry,
    MarketCache,
    MarketDataError,
    NoPrice,
    NotPolled,
    NotReady,
    StalePrice,
    StaleQuote,
    write_account,
    write_clock,
    write_positions,
    write_prices,
)

KEYS = Keys("tb")
T0 = 1_700_000_000.0
QUOTE_TIME = datetime(2023, 11, 14, 22, 13, 19, 500000, tzinfo=timezone.utc)


def snap(symbol: str = "NVDA", bid: str | None = "100.10", ask: str | None = "100.20", last: str | None = "100.15",
         size: str = "3") -> Snapshot:
    return Snapshot(symbol=symbol, bid=None if bid is None else Decimal(bid), ask=None if ask is None else Decimal(ask),
                    bid_size=Decimal(size), ask_size=Decimal(size), last=None if last is None else Decimal(last),
                    quote_time=QUOTE_TIME)


def account(cash: str = "1000.50") -> Account:
    return Account(id="acc", status="ACTIVE", currency="USD", cash=Decimal(cash), buying_power=Decimal("2001"),
                   equity=Decimal("1500.25"), trading_blocked=False)


def position(symbol: str = "NVDA", qty: str = "2") -> Position:
    return Position(symbol=symbol, qty=Decimal(qty), qty_available=Decimal(qty), avg_entry_price=Decimal("99.5"),
                    market_value=Decimal("201"))


def cache(r, now: float = T0 + 1, max_price_age: float = 5.0) -> MarketCache:
    return MarketCache(r, KEYS, max_price_age=max_price_age, now=lambda: now)


# ---------------------------------------------------------------------- prices


def test_price_round_trip_with_age(r):
    skipped = write_prices(r, KEYS, {"NVDA": snap()}, T0, symbols=["NVDA"])
    assert skipped == {}
    price = cache(r, now=T0 + 1.5).price("nvda")
    assert price.symbol == "NVDA"
    assert (price.bid, price.ask, price.last) == (Decimal("100.10"), Decimal("100.20"), Decimal("100.15"))
    assert (price.bid_size, price.ask_size) == (Decimal(3), Decimal(3))
    assert price.quote_time == QUOTE_TIME.timestamp()
    assert price.polled_at == T0 and price.age == 1.5
    assert price.mid == Decimal("100.15")
    assert price.for_side("buy") == Decimal("100.20") and price.for_side("sell") == Decimal("100.10")


def test_stale_price_names_age_and_limit(r):
    write_prices(r, KEYS, {"NVDA": snap()}, T0)
    with pytest.raises(StalePrice, match=r"NVDA is 7\.5s old, more than the 5\.0s allowed") as info:
        cache(r, now=T0 + 7.5).price("NVDA")
    assert (info.value.age, info.value.limit) == (7.5, 5.0)
    assert isinstance(info.value, MarketDataError)


def test_absent_price_is_no_price(r):
    with pytest.raises(NoPrice, match="tb:prices:AAPL"):
        cache(r).price("AAPL")


def test_missing_symbol_and_empty_quote_are_skipped_not_zeroed(r):
    write_prices(r, KEYS, {"NVDA": snap(), "AAPL": snap("AAPL", bid="50", ask="51")}, T0)
    # next poll: AAPL absent from the response, NVDA with neither bid nor ask (0 was mapped to None)
    skipped = write_prices(r, KEYS, {"NVDA": snap(bid=None, ask=None, last="1")}, T0 + 1,
                           symbols=["NVDA", "AAPL", "MSFT"])
    assert set(skipped) == {"NVDA", "AAPL", "MSFT"}
    assert "missing" in skipped["AAPL"] and "no bid and no ask" in skipped["NVDA"]
    # the older values are kept, with their old polled_at, so the age shows it
    nvda = r.hgetall(KEYS.prices("NVDA"))
    assert nvda["bid"] == "100.10" and nvda["last"] == "100.15" and float(nvda["polled_at"]) == T0
    assert not r.exists(KEYS.prices("MSFT"))
    assert cache(r, now=T0 + 2).price("AAPL").age == 2


def test_one_missing_side_is_left_out_and_old_side_removed(r):
    write_prices(r, KEYS, {"NVDA": snap()}, T0)
    write_prices(r, KEYS, {"NVDA": snap(bid="100.30", ask=None)}, T0 + 1)
    stored = r.hgetall(KEYS.prices("NVDA"))
    assert stored["bid"] == "100.30"
    assert "ask" not in stored and "ask_size" not in stored  # the old ask does not linger
    price = cache(r, now=T0 + 1).price("NVDA")
    assert price.ask is None and price.mid is None
    assert price.for_side("buy") == Decimal("100.15")  # falls back to the last trade


def test_write_prices_queues_on_a_given_pipeline(r):
    pipe = r.pipeline(transaction=False)
    write_prices(pipe, KEYS, {"NVDA": snap(), "AAPL": snap("AAPL")}, T0)
    assert not r.exists(KEYS.prices("NVDA"))  # nothing sent before the caller executes
    assert pipe.execute() == [1, 1]
    assert r.exists(KEYS.prices("NVDA"), KEYS.prices("AAPL")) == 2


def test_a_slower_older_response_never_overwrites_newer_data(r):
    # request B sent at T0+2 answered first; request A sent at T0+1 answered later
    write_prices(r, KEYS, {"NVDA": snap(bid="102", ask="103")}, T0 + 2.1, as_of=T0 + 2)
    write_prices(r, KEYS, {"NVDA": snap(bid="101", ask="102")}, T0 + 2.5, as_of=T0 + 1)
    assert r.hget(KEYS.prices("NVDA"), "bid") == "102"
    assert write_account(r, KEYS, account("2000"), T0 + 2.1, as_of=T0 + 2) is True
    assert write_account(r, KEYS, account("1000"), T0 + 2.5, as_of=T0 + 1) is False
    assert cache(r).account().cash == Decimal("2000")
    assert write_positions(r, KEYS, [position(qty="5")], T0 + 2.1, as_of=T0 + 2) is True
    assert write_positions(r, KEYS, [], T0 + 2.5, as_of=T0 + 1) is False
    assert cache(r).position("NVDA").qty == Decimal(5)
    clock = Clock(timestamp=QUOTE_TIME, is_open=True, next_open=QUOTE_TIME, next_close=QUOTE_TIME)
    assert write_clock(r, KEYS, clock, T0 + 2.1, as_of=T0 + 2) is True
    assert write_clock(r, KEYS, Clock(QUOTE_TIME, False, QUOTE_TIME, QUOTE_TIME), T0 + 2.5, as_of=T0 + 1) is False
    assert cache(r).clock().is_open is True
    # a newer one does replace
    write_prices(r, KEYS, {"NVDA": snap(bid="104", ask="105")}, T0 + 3.1, as_of=T0 + 3)
    assert r.hget(KEYS.prices("NVDA"), "bid") == "104"


def test_corrupt_field_is_a_typed_error(r):
    r.hset(KEYS.prices("NVDA"), mapping={"bid": "abc", "polled_at": str(T0)})
    with pytest.raises(CorruptEntry, match="tb:prices:NVDA field bid"):
        cache(r).price("NVDA")


# ---------------------------------------------------------------------- account, positions, clock


def test_account_round_trip_and_absent(r):
    c = cache(r, now=T0 + 3)
    assert c.account() is None
    write_account(r, KEYS, account(), T0)
    state = c.account()
    assert (state.cash, state.buying_power, state.equity) == (Decimal("1000.50"), Decimal(2001), Decimal("1500.25"))
    assert state.status == "ACTIVE" and state.trading_blocked is False and state.age == 3


def test_positions_replaced_atomically_and_closed_ones_vanish(r):
    write_positions(r, KEYS, [position("NVDA", "2"), position("AAPL", "1")], T0)
    c = cache(r)
    assert set(c.positions()) == {"NVDA", "AAPL"}
    assert c.position("nvda").qty == Decimal(2) and c.position("NVDA").avg_entry_price == Decimal("99.5")
    write_positions(r, KEYS, [position("NVDA", "3")], T0 + 1)
    assert set(c.positions()) == {"NVDA"}
    assert c.position("AAPL") is None  # flat
    assert json.loads(r.hget(KEYS.positions, "NVDA"))["qty"] == "3"


def test_empty_positions_differ_from_never_polled(r):
    c = cache(r)
    assert c.positions_polled_at() is None
    with pytest.raises(NotPolled, match="never polled"):
        c.positions()
    with pytest.raises(NotPolled):
        c.position("NVDA")
    write_positions(r, KEYS, [], T0)
    assert c.positions() == {} and c.position("NVDA") is None
    assert c.positions_polled_at() == T0


def test_clock_round_trip(r):
    c = cache(r, now=T0 + 1)
    assert c.clock() is None
    opens = datetime.fromisoformat("2026-06-24T09:30:00-04:00")
    closes = datetime.fromisoformat("2026-06-23T16:00:00-04:00")
    write_clock(r, KEYS, Clock(timestamp=opens, is_open=False, next_open=opens, next_close=closes), T0)
    state = c.clock()
    assert state.is_open is False and state.next_open == opens and state.next_close == closes and state.age == 1
    assert r.hget(KEYS.clock, "is_open") == "0"


def test_quote_age_is_checked_when_a_limit_is_set(r):
    write_prices(r, KEYS, {"NVDA": snap()}, T0)  # quoted at T0 - 0.5, polled at T0
    assert cache(r, now=T0 + 1).price("NVDA").quote_time == T0 - 0.5
    strict = MarketCache(r, KEYS, max_price_age=5.0, now=lambda: T0 + 1, max_quote_age=1.0)
    with pytest.raises(StaleQuote, match=r"quote of NVDA is 1.5s old, more than the 1.0s allowed"):
        strict.price("NVDA")
    lenient = MarketCache(r, KEYS, max_price_age=5.0, now=lambda: T0 + 1, max_quote_age=60.0)
    assert lenient.price("NVDA").bid == Decimal("100.10")
    r.hdel(KEYS.prices("NVDA"), "quote_time")
    with pytest.raises(StaleQuote, match="no quote time"):
        lenient.price("NVDA")
    assert cache(r, now=T0 + 1).price("NVDA").quote_time is None  # readers without the limit don't care


def test_prices_and_quotes_stamped_in_the_future_are_stale(r):
    write_prices(r, KEYS, {"NVDA": snap()}, T0)
    assert cache(r, now=T0 - 4).price("NVDA").age == -4  # clock skew within the tolerance
    with pytest.raises(StalePrice, match=r"polled 6\.0s in the future"):
        cache(r, now=T0 - 6).price("NVDA")
    r.hset(KEYS.prices("NVDA"), "quote_time", repr(T0 + 10))
    with pytest.raises(StaleQuote, match=r"stamped 9\.0s in the future"):
        MarketCache(r, KEYS, now=lambda: T0 + 1, max_quote_age=60.0).price("NVDA")


@pytest.mark.parametrize("is_open, now, expected", [
    (True, "15:59:59", True),
    (True, "16:00:00", False),  # polled open at 15:59:40; the close it announced has come
    (False, "09:29:59", False),
    (False, "09:30:00", True),  # polled closed at 09:29:50; the session it announced has begun
    (False, "16:00:00", False),
])
def test_clock_open_at_honours_the_announced_open_and_close(is_open, now, expected):
    from bot.market import ClockState

    day = "2026-06-24T{}-04:00"
    state = ClockState(is_open=is_open, next_open=datetime.fromisoformat(day.format("09:30:00")),
                       next_close=datetime.fromisoformat(day.format("16:00:00")), polled_at=0.0, age=0.0)
    assert state.open_at(datetime.fromisoformat(day.format(now)).timestamp()) is expected


# ---------------------------------------------------------------------- coordination


def test_request_refresh_queues_a_bounded_request(r):
    c = cache(r)
    for _ in range(25):
        c.request_refresh()
    assert 1 <= r.llen(KEYS.refresh_request) <= 10


def fill_all(r):
    write_prices(r, KEYS, {"NVDA": snap(), "AAPL": snap("AAPL")}, T0)
    write_account(r, KEYS, account(), T0)
    write_positions(r, KEYS, [], T0)
    write_clock(r, KEYS, Clock(QUOTE_TIME, True, QUOTE_TIME, QUOTE_TIME), T0)


def test_wait_ready_returns_when_the_poller_has_filled_everything(r):
    c = cache(r)
    writer = threading.Timer(0.2, fill_all, args=(r,))
    writer.start()
    try:
        assert c.wait_ready(["NVDA", "AAPL"], timeout=10) is True
    finally:
        writer.cancel()
        writer.join()
    assert c.missing(["NVDA", "AAPL"]) == []


def test_wait_ready_times_out_naming_what_is_missing(r, caplog):
    write_prices(r, KEYS, {"NVDA": snap()}, T0)
    with caplog.at_level(logging.INFO, logger="bot.market"), pytest.raises(NotReady) as info:
        cache(r).wait_ready(["NVDA", "AAPL"], timeout=0.2)
    assert info.value.missing == ["tb:prices:AAPL", "tb:account", "tb:positions", "tb:clock"]
    assert "waiting for the price poller to fill tb:prices:AAPL, tb:account, tb:positions, tb:clock" in caplog.text


def test_wait_ready_stops_on_stop_event(r):
    stop = threading.Event()
    stop.set()
    assert cache(r).wait_ready(["NVDA"], timeout=None, stop_event=stop) is False


# ---------------------------------------------------------------------- one round trip: the snapshot


def _fill_cache(r) -> None:
    write_prices(r, KEYS, {"NVDA": snap()}, T0)
    write_account(r, KEYS, account(), T0)
    write_positions(r, KEYS, [position("NVDA", "2")], T0)
    opens = datetime.fromisoformat("2026-06-24T09:30:00-04:00")
    write_clock(r, KEYS, Clock(timestamp=opens, is_open=True, next_open=opens, next_close=opens), T0)


def test_snapshot_reads_what_the_single_reads_read(r):
    _fill_cache(r)
    r.set(KEYS.halt, "maintenance")
    c = MarketCache(r, KEYS, max_price_age=5.0, now=lambda: T0 + 1, max_quote_age=60.0)
    snapshot = c.snapshot("nvda", [KEYS.halt, KEYS.done("nvda", "1-0")])
    assert snapshot.symbol == "NVDA" and snapshot.read_at == T0 + 1
    assert snapshot.price() == c.price("NVDA")
    assert snapshot.account() == c.account()
    assert snapshot.position() == c.position("NVDA")
    assert snapshot.clock() == c.clock()
    assert snapshot.value(KEYS.halt) == "maintenance" and snapshot.exists(KEYS.halt)
    assert snapshot.value(KEYS.done("nvda", "1-0")) is None and not snapshot.exists(KEYS.done("nvda", "1-0"))


def test_snapshot_raises_the_single_reads_errors_when_a_value_is_used(r):
    c = MarketCache(r, KEYS, max_price_age=5.0, now=lambda: T0 + 1, max_quote_age=1.0)
    empty = c.snapshot("NVDA")  # reading an empty cache raises nothing by itself
    with pytest.raises(NoPrice):
        empty.price()
    with pytest.raises(NotPolled):
        empty.position()
    assert empty.account() is None and empty.clock() is None

    _fill_cache(r)
    r.hset(KEYS.account, "cash", "lots")
    broken = c.snapshot("NVDA")
    with pytest.raises(StaleQuote, match=r"quote of NVDA is 1\.5s old"):  # quoted at T0 - 0.5
        broken.price()
    with pytest.raises(CorruptEntry, match="tb:account field cash"):
        broken.account()
    assert broken.position().qty == Decimal(2)  # one bad entry spoils no other read
    later = MarketCache(r, KEYS, max_price_age=5.0, now=lambda: T0 + 6).snapshot("NVDA")
    with pytest.raises(StalePrice, match=r"price of NVDA is 6\.0s old"):
        later.price()


def test_snapshot_keeps_a_redis_error_for_its_own_read_and_runs_queued_commands(r):
    import redis

    _fill_cache(r)
    r.rpush(KEYS.halt, "not a string")  # a key of the wrong type: an error of that read only
    snapshot = MarketCache(r, KEYS, now=lambda: T0 + 1).snapshot(
        "NVDA", [KEYS.halt], also=lambda pipe: pipe.incr("tb:counter").incr("tb:counter"))
    assert snapshot.exists(KEYS.halt)  # it exists, like EXISTS says
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        snapshot.value(KEYS.halt)
    assert snapshot.price().bid == Decimal("100.10")
    assert snapshot.more == (1, 2) and r.get("tb:counter") == "2"
