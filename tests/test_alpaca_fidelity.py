"""The client reading real Alpaca answers right (issue 13 point 5): 403 refusals of an order mapped
by Alpaca's codes and words with the broker's message kept, X-RateLimit-Limit learned by the
fleet-wide bucket, snapshot batches split around an invalid symbol, an unusable data feed reported
once (and the fallback feed), list_orders paging past 500, and the account flags in the cache.
Bodies are Alpaca's as quoted in /work/shared/alpaca-api.md; httpx.MockTransport and a real Redis."""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest

from bot.alpaca.client import AlpacaClient
from bot.alpaca.errors import FeedNotPermitted, InsufficientFunds, InvalidOrder, TradingForbidden, Unauthorized
from bot.alpaca.models import Account, Order, OrderRequest, ts
from bot.keys import Keys
from bot.market import MarketCache, write_account
from bot.poller import Poller
from bot.ratelimit import RateLimiter

TRADING_URL = "https://paper-api.test"
DATA_URL = "https://data.test"
KEYS = Keys("fid")
T0 = 1_800_000_000.0
SNAPSHOTS = "/v2/stocks/snapshots"

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, **kw: Any) -> AlpacaClient:
    options: dict[str, Any] = dict(api_key="PKFIDELITY", secret_key="fidelity-secret", base_url=TRADING_URL,
                                   data_url=DATA_URL, transport=httpx.MockTransport(handler), sleep=lambda s: None,
                                   jitter=lambda spread: 0.0, clock=lambda: T0, max_retries=0)
    options.update(kw)
    return AlpacaClient(**options)


def order_json(**overrides: Any) -> dict[str, Any]:
    order = {"id": "904837e3-3b76-47ec-b432-046db621571b", "client_order_id": "sig-1-0", "symbol": "NVDA",
             "side": "buy", "type": "market", "time_in_force": "ioc", "status": "accepted", "qty": "3",
             "notional": None, "filled_qty": "0", "filled_avg_price": None,
             "created_at": "2026-07-01T14:00:00.123456789Z", "submitted_at": "2026-07-01T14:00:00.120000000Z",
             "failed_at": None}
    order.update(overrides)
    return order


def snapshot_json(bid: float = 10.0, ask: float = 10.1) -> dict[str, Any]:
    return {"latestQuote": {"t": "2026-07-01T14:00:00.5Z", "bp": bid, "bs": 1, "ap": ask, "as": 2, "c": ["R"],
                            "z": "C"},
            "latestTrade": {"t": "2026-07-01T14:00:00.4Z", "p": bid, "s": 100, "x": "V", "i": 1, "c": ["@"],
                            "z": "C"}}


def buy() -> OrderRequest:
    return OrderRequest(symbol="NVDA", side="buy", client_order_id="sig-1-0", qty=Decimal(3))


# ---------------------------------------------------------------------- 403 on POST /v2/orders


def submit_refused(body: dict[str, Any]) -> Exception:
    client = make_client(lambda request: httpx.Response(403, json=body))
    with pytest.raises((InsufficientFunds, TradingForbidden)) as caught:
        client.submit_order(buy())
    return caught.value


def test_insufficient_buying_power_keeps_the_brokers_words_and_numbers():
    error = submit_refused({"code": 40310000, "message": "insufficient buying power", "buying_power": "10.00",
                            "cost_basis": "1234.50"})
    assert isinstance(error, InsufficientFunds) and error.kind == "buying_power"
    assert error.broker_message == "insufficient buying power" == error.reason
    assert error.code == 40310000 and error.status == 403 and error.body["cost_basis"] == "1234.50"


def test_insufficient_qty_is_insufficient_funds_of_kind_qty():
    error = submit_refused({"code": 40310000, "message": "insufficient qty available for order (requested: 5, "
                            "available: 2)", "available": "2", "existing_qty": "2", "held_for_orders": "0",
                            "symbol": "NVDA"})
    assert isinstance(error, InsufficientFunds) and error.kind == "qty"
    assert error.broker_message is not None and "available: 2" in error.broker_message


@pytest.mark.parametrize("body, kind", [
    ({"code": 40310000, "message": "potential wash trade detected. use complex orders",
      "reject_reason": "opposite side market/stop order exists"}, "wash_trade"),
    ({"code": 40310100, "message": "trade denied due to pattern day trading protection"}, "pattern_day_trading"),
    ({"code": 40310000, "message": "account is not allowed to short"}, "shorting_not_allowed"),
    ({"code": 40310000, "message": "account is not authorized to trade"}, "account_restricted"),
], ids=["wash-trade", "pdt", "short", "not-authorized"])
def test_account_refusals_are_trading_forbidden_not_insufficient_funds(body, kind):
    error = submit_refused(body)
    assert isinstance(error, TradingForbidden) and not isinstance(error, InsufficientFunds)
    assert error.kind == kind and error.code == body["code"] and error.broker_message == body["message"]
    if "reject_reason" in body:
        assert error.reject_reason == body["reject_reason"]
        assert body["message"] in error.reason and body["reject_reason"] in error.reason


def test_a_trading_refusal_after_an_unknown_outcome_finds_the_order_that_landed():
    answers = iter([httpx.Response(503),  # outcome unknown ...
                    httpx.Response(404, json={"code": 40410000, "message": "order not found"}),  # ... not there yet
                    httpx.Response(403, json={"code": 40310000, "message": "potential wash trade detected. use "
                                                                           "complex orders"}),
                    httpx.Response(200, json=order_json(status="new"))])  # the first POST landed late
    client = make_client(lambda request: next(answers), max_retries=2)
    order = client.submit_order(buy())
    assert order.status == "new" and order.client_order_id == "sig-1-0"


def test_a_rejected_order_carries_no_reason_only_its_status_and_failed_at():
    # Alpaca's Order schema (trading-api.json) has no reason field; a rejected order says only this much
    order = Order.from_json(order_json(status="rejected", failed_at="2026-07-01T14:00:01.5Z"))
    assert order.is_terminal and order.failed_at == ts("2026-07-01T14:00:01.5Z")
    assert not {"reject_reason", "reason"} & set(order.raw)


# ---------------------------------------------------------------------- X-RateLimit-Limit


class LimitLimiter:
    def __init__(self) -> None:
        self.observed: list[tuple[Any, ...]] = []

    def acquire(self, bucket: str) -> None:
        pass

    def observe(self, bucket: str, remaining: int | None, reset: float | None, limit: int | None = None) -> None:
        self.observed.append((bucket, remaining, reset, limit))


class LegacyLimiter:
    def __init__(self) -> None:
        self.observed: list[tuple[Any, ...]] = []

    def acquire(self, bucket: str) -> None:
        pass

    def observe(self, bucket: str, remaining: int | None, reset: float | None) -> None:
        self.observed.append((bucket, remaining, reset))


def rate_headers(limit: str, remaining: str = "990") -> dict[str, str]:
    return {"X-RateLimit-Limit": limit, "X-RateLimit-Remaining": remaining, "X-RateLimit-Reset": str(int(T0) + 40)}


def test_the_client_passes_the_announced_limit_to_a_limiter_that_takes_it():
    headers = iter([rate_headers("1000"), rate_headers("garbage"), rate_headers("0")])
    limiter = LimitLimiter()
    client = make_client(lambda request: httpx.Response(200, json=[], headers=next(headers)), limiter=limiter)
    for _ in range(3):
        client.list_positions()
    assert limiter.observed == [("trading", 990, T0 + 40, 1000), ("trading", 990, T0 + 40, None),
                                ("trading", 990, T0 + 40, None)]
    assert client.announced_limits == {"trading": 1000}


def test_a_limiter_without_the_limit_parameter_still_gets_remaining_and_reset():
    limiter = LegacyLimiter()
    client = make_client(lambda request: httpx.Response(200, json=[], headers=rate_headers("1000")), limiter=limiter)
    client.list_positions()
    assert limiter.observed == [("trading", 990, T0 + 40)]


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> float:
        return self.t


def drain(limiter: RateLimiter, bucket: str = "trading") -> float:
    """Take tokens until one is refused; the wait for the next."""
    for _ in range(100):
        wait = limiter.try_acquire(bucket)
        if wait > 0:
            return wait
    raise AssertionError("bucket never ran dry")


def test_an_announced_higher_limit_is_followed_by_every_process(r):
    clock = Clock()
    a = RateLimiter(r, KEYS, {"trading": 60}, {"trading": 5}, now=clock.now)
    b = RateLimiter(r, KEYS, {"trading": 60}, {"trading": 5}, now=clock.now)  # another process, configured 60
    assert drain(a) == pytest.approx(1.0, abs=1e-3)  # 60/min: a token a second
    a.observe("trading", remaining=None, reset=None, limit=600)  # "X-RateLimit-Limit: 600"
    assert a.per_minute["trading"] == 600 and r.hget(KEYS.ratelimit("trading"), "limit") == "600"
    clock.t += 0.1
    assert b.try_acquire("trading") == 0.0  # b refills at 10/s though it never saw the header
    assert b.try_acquire("trading") == pytest.approx(0.1, abs=1e-3)
    assert r.pttl(KEYS.ratelimit("trading")) > 500_000  # the announcement outlives a full bucket


def test_an_operators_rate_limit_is_kept_whatever_the_broker_announces(r):
    from bot.config import Settings

    settings = Settings.from_env({"TRADEBOT_PREFIX": KEYS.prefix, "TRADEBOT_RATE_LIMIT": "100"})
    fixed = RateLimiter.from_settings(r, settings)
    fixed.observe("trading", remaining=150, reset=None, limit=1000)
    assert fixed.per_minute["trading"] == 100 and r.hget(KEYS.ratelimit("trading"), "limit") is None
    following = RateLimiter.from_settings(r, Settings.from_env({"TRADEBOT_PREFIX": KEYS.prefix}))
    following.observe("data", remaining=150, reset=None, limit=1000)  # TRADEBOT_DATA_RATE_LIMIT unset
    assert r.hget(KEYS.ratelimit("data"), "limit") == "1000"
    # a process without the setting announces a limit on the trading bucket: the fixed one keeps its rate
    following.observe("trading", remaining=150, reset=None, limit=6000)
    assert r.hget(KEYS.ratelimit("trading"), "limit") == "6000"
    clock = Clock()
    strict = RateLimiter(r, KEYS, {"trading": 60}, {"trading": 1}, now=clock.now, fixed=["trading"])
    assert drain(strict) == pytest.approx(1.0, abs=1e-3)  # 60/min still: not 6000/min


def test_an_announced_lower_limit_slows_the_bucket_and_a_garbage_one_is_ignored(r):
    clock = Clock()
    lim = RateLimiter(r, KEYS, {"trading": 200}, {"trading": 5}, now=clock.now)
    lim.observe("trading", remaining=150, reset=None, limit=0)  # not a plan: ignored
    assert lim.per_minute["trading"] == 200 and not r.exists(KEYS.ratelimit("trading"))
    lim.observe("trading", remaining=150, reset=None, limit=30)
    assert drain(lim) == pytest.approx(2.0, abs=1e-3)  # 30/min: a token every 2 s
    lim.observe("trading", remaining=150, reset=None, limit=30)  # unchanged: no round trip needed
    assert lim.per_minute["trading"] == 30 and lim.configured["trading"] == 200


# ---------------------------------------------------------------------- snapshots: invalid symbols, feeds


class DataBroker:
    """Market data that answers like Alpaca: 400 for the whole batch when it holds an invalid symbol."""

    def __init__(self, invalid: set[str], name_it: bool = True, sip_allowed: bool = True) -> None:
        self.invalid = invalid
        self.name_it = name_it
        self.sip_allowed = sip_allowed
        self.asked: list[tuple[list[str], str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        symbols = request.url.params["symbols"].split(",")
        feed = request.url.params.get("feed", "")
        self.asked.append((symbols, feed))
        if feed == "sip" and not self.sip_allowed:
            return httpx.Response(403, json={"message": "subscription does not permit querying recent SIP data"})
        bad = [s for s in symbols if s in self.invalid]
        if bad:
            message = f"invalid symbol: {bad[0]}" if self.name_it else "invalid symbol"
            return httpx.Response(400, json={"message": message})
        return httpx.Response(200, json={s: snapshot_json() for s in symbols})


def test_one_invalid_symbol_named_by_alpaca_costs_one_more_request():
    broker = DataBroker({"BADX"})
    client = make_client(broker)
    batch = client.fetch_snapshots(["NVDA", "BADX", "AAPL"])
    assert set(batch.snapshots) == {"NVDA", "AAPL"} and batch.invalid == {"BADX": "invalid symbol: BADX"}
    assert [symbols for symbols, _ in broker.asked] == [["NVDA", "BADX", "AAPL"], ["NVDA", "AAPL"]]
    assert set(client.get_snapshots(["NVDA", "BADX"])) == {"NVDA"}


def test_a_refusal_that_names_no_symbol_is_bisected():
    broker = DataBroker({"BAD1", "BAD2"}, name_it=False)
    client = make_client(broker)
    symbols = ["A", "B", "BAD1", "C", "D", "E", "BAD2", "F"]
    batch = client.fetch_snapshots(symbols)
    assert set(batch.snapshots) == {"A", "B", "C", "D", "E", "F"} and set(batch.invalid) == {"BAD1", "BAD2"}
    assert len(broker.asked) <= 2 * 2 * 3 + 1  # ~2 log2(n) requests per bad symbol


def test_a_400_that_is_not_about_symbols_is_raised():
    client = make_client(lambda request: httpx.Response(400, json={"message": "invalid feed"}))
    with pytest.raises(InvalidOrder, match="invalid feed"):
        client.fetch_snapshots(["NVDA", "AAPL"])


def test_a_feed_the_plan_does_not_cover_is_feed_not_permitted_with_the_fix():
    client = make_client(DataBroker(set(), sip_allowed=False), feed="sip")
    with pytest.raises(FeedNotPermitted) as caught:
        client.get_snapshots(["NVDA"])
    assert isinstance(caught.value, Unauthorized) and caught.value.feed == "sip"
    assert "ALPACA_DATA_FEED=iex" in str(caught.value) and "TRADEBOT_DATA_FEED_FALLBACK=iex" in str(caught.value)


def test_the_fallback_feed_is_used_once_sip_is_refused(caplog):
    broker = DataBroker(set(), sip_allowed=False)
    client = make_client(broker, feed="sip", feed_fallback="iex")
    with caplog.at_level(logging.WARNING, logger="bot.alpaca.client"):
        assert set(client.get_snapshots(["NVDA", "AAPL"])) == {"NVDA", "AAPL"}
        assert set(client.get_snapshots(["NVDA"])) == {"NVDA"}
    assert [feed for _, feed in broker.asked] == ["sip", "iex", "iex"] and client.feed == "iex"
    assert len([r for r in caplog.records if "falling back" in r.getMessage()]) == 1


class Times:
    def __init__(self) -> None:
        self.wall, self.mono = T0, 1000.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def price_poller(client: AlpacaClient, r: Any, times: Times, symbols: list[str], **kw: Any) -> Poller:
    poller = Poller(client, r, KEYS, symbols, now=times.now, monotonic=times.monotonic, **kw)
    poller._account_due = poller._clock_due = float("inf")  # prices only
    return poller


def test_the_poller_warns_once_skips_the_bad_symbol_and_takes_it_back_when_fixed(r, caplog):
    broker = DataBroker({"BADX"})
    times = Times()
    poller = price_poller(make_client(broker), r, times, ["NVDA", "BADX", "AAPL"], invalid_symbol_retry=60.0)
    with caplog.at_level(logging.INFO, logger="bot.poller"):
        for _ in range(3):
            assert poller.tick() is True
            times.advance(1.0)
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "BADX" in warnings[0].getMessage() and "TRADEBOT_SYMBOLS" in warnings[0].getMessage()
    assert [symbols for symbols, _ in broker.asked[2:]] == [["NVDA", "AAPL"], ["NVDA", "AAPL"]]
    cache = MarketCache(r, KEYS, max_price_age=5.0, now=times.now)
    assert cache.price("NVDA").bid == Decimal("10.0") and poller.invalid_symbols == {"BADX": "invalid symbol: BADX"}

    broker.invalid.clear()  # listed now (or TRADEBOT_SYMBOLS fixed)
    times.advance(60.0)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bot.poller"):
        assert poller.tick() is True
    assert broker.asked[-1][0] == ["NVDA", "BADX", "AAPL"] and poller.invalid_symbols == {}
    assert any("BADX is accepted" in rec.getMessage() for rec in caplog.records)
    assert cache.price("BADX").bid == Decimal("10.0")


def test_the_poller_reports_an_unusable_feed_once_with_the_fix(r, caplog):
    times = Times()
    poller = price_poller(make_client(DataBroker(set(), sip_allowed=False), feed="sip"), r, times, ["NVDA"])
    with caplog.at_level(logging.WARNING, logger="bot.poller"):
        for _ in range(4):
            assert poller.tick() is False
            times.advance(1.0)
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1 and "ALPACA_DATA_FEED=iex" in errors[0].getMessage()
    assert not [rec for rec in caplog.records if "poll of prices failed" in rec.getMessage()]


# ---------------------------------------------------------------------- list_orders past 500


class OrdersBroker:
    """GET /v2/orders as Alpaca pages it: after/until exclusive on submitted_at, limit <= 500."""

    def __init__(self, count: int) -> None:
        start = datetime(2026, 7, 1, 14, tzinfo=timezone.utc)
        # pairs of orders share an instant, so page edges fall inside one
        self.orders = [order_json(id=f"order-{i:05d}", client_order_id=f"c-{i}",
                                  submitted_at=(start + timedelta(seconds=i // 2)).isoformat().replace("+00:00", "Z"))
                       for i in range(count)]
        self.pages: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.pages.append(params)
        limit = int(params["limit"])
        if limit > 500:
            return httpx.Response(422, json={"code": 40010001, "message": "limit must be <= 500"})
        after, until = ts(params.get("after")), ts(params.get("until"))

        def inside(order: dict[str, Any]) -> bool:
            at = ts(order["submitted_at"])
            assert at is not None
            return (after is None or at > after) and (until is None or at < until)

        rows = [o for o in self.orders if inside(o)]
        rows.sort(key=lambda o: (o["submitted_at"], o["id"]), reverse=params["direction"] == "desc")
        return httpx.Response(200, json=rows[:limit])


@pytest.mark.parametrize("direction", ["desc", "asc"])
def test_list_orders_pages_through_everything(direction):
    broker = OrdersBroker(1203)
    orders = make_client(broker).list_orders(status="all", direction=direction)
    ids = [o.id for o in orders]
    assert len(ids) == len(set(ids)) == 1203
    times = [o.submitted_at for o in orders]
    assert times == sorted(times, reverse=direction == "desc")  # type: ignore[type-var]
    assert len(broker.pages) >= 3 and all(int(p["limit"]) <= 500 for p in broker.pages)


def test_list_orders_stops_at_its_limit_and_a_small_one_is_one_request():
    broker = OrdersBroker(1203)
    client = make_client(broker)
    assert len(client.list_orders(limit=700)) == 700 and len(broker.pages) == 2
    broker.pages.clear()
    assert len(client.list_orders(status="open", limit=50)) == 50
    assert broker.pages == [{"status": "open", "limit": "50", "direction": "desc"}]


# ---------------------------------------------------------------------- account flags in the cache


def test_trading_and_account_blocked_reach_the_account_cache(r):
    account = Account.from_json({"id": "a", "status": "ACTIVE", "currency": "USD", "cash": "10", "buying_power": "10",
                                 "equity": "10", "trading_blocked": True, "account_blocked": True})
    write_account(r, KEYS, account, T0)
    assert r.hget(KEYS.account, "trading_blocked") == "1" and r.hget(KEYS.account, "account_blocked") == "1"
    state = MarketCache(r, KEYS, max_price_age=5.0, now=lambda: T0).account()
    assert state is not None
    assert state.trading_blocked is True and state.account_blocked is True
