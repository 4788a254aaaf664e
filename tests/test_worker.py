"""The worker loop in process: a real Redis, the paper broker in process (or one real server for
the concurrency test) and the real Poller filling the market cache."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Iterator

import httpx
import pytest
import redis
from click.testing import CliRunner

from bot.strategy import Strategies, StrategyMap
from bot.alpaca.client import AlpacaClient
from bot.alpaca.errors import RateLimited
from bot.alpaca.models import OrderRequest
from bot.config import ConfigError, Settings
from bot.journal import JournalEntry, read_journal
from bot.keys import Keys
from bot.ledger import Ledger
from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY
from bot.paper.testing import PaperBrokerServer, paper_transport
from bot.poller import Poller
from bot.ratelimit import RateLimiter, RateLimitTimeout
from bot.signals import Signal
from bot.streams import consumers, delivery_count, ensure_group
from bot.worker import (
    CLIENT_KNOBS,
    SUBMIT_DEADLINE,
    DEAD,
    DUPLICATE,
    JOURNALED,
    LOST,
    PENDING,
    BoundedLimiter,
    Worker,
    WorkerConfig,
    client_order_id,
    outcome_of,
)

SYMBOL = "NVDA"
BASE = "http://paper"
CASH = Decimal("100000")
ASK = Decimal("100.01")  # the pinned quote: 100.00 +- 0.01
BID = Decimal("99.99")


def make_client(transport: Any = None, base_url: str = BASE, **kw: Any) -> AlpacaClient:
    # no sleeping between the client's own retries: the fault tests stay fast
    return AlpacaClient(api_key=DEMO_API_KEY, secret_key=DEMO_SECRET_KEY, base_url=base_url, data_url=base_url,
                        transport=transport, sleep=lambda _s: None, **kw)


def _wait(condition: Callable[[], bool], timeout: float, what: str, tick: Callable[[], Any] = lambda: None) -> None:
    # a deadline only decides how long a failing test takes to say so: at least 30 s, so that a loaded
    # machine (a second suite on the same cores) never turns a slow success into a failure
    deadline = time.monotonic() + max(timeout, 30.0)
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        tick()
        time.sleep(0.02)


def _after_decide(then: Callable[[], Any]) -> Callable[[Any], Any]:
    """A wrap for the decide stage: decide as usual, then ``then()`` (what happens before the submit)."""
    class AfterDecide:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def decide(self, job: Any) -> Any:
            decision = self.inner.decide(job)
            then()
            return decision

    return AfterDecide


@dataclass
class Rig:
    """Redis + in-process paper broker + poller; builds workers and signals for one test."""

    r: redis.Redis
    rb: redis.Redis
    redis_url: str
    transport: Any
    exchange: Any
    settings: Settings
    client: AlpacaClient
    poller: Poller
    workers: list[Worker] = field(default_factory=list)
    seq: int = 0

    @property
    def keys(self) -> Keys:
        return self.settings.keys

    @property
    def broker_state(self) -> Any:
        return self.transport.app.state.broker

    def refresh(self) -> None:
        """One poller tick: prices, account, positions and clock into the cache."""
        assert self.poller.tick(), self.poller.last_error

    def worker(self, settings: Settings | None = None, client: AlpacaClient | None = None,
               wrap: dict[str, Callable[[Any], Any]] | None = None, **config: Any) -> Worker:
        options: dict[str, Any] = dict(consumer=f"w{len(self.workers) + 1}", block_ms=20, claim_idle=5.0)
        options.update(config)
        worker = Worker(settings or self.settings, WorkerConfig(**options), r=self.r, rb=self.rb,
                        client=client or self.client, wrap=wrap)
        self.workers.append(worker)
        worker.setup()
        return worker

    def signal(self, side: str = "buy", qty: str | None = None, age: float = 0.0, ticker: str = SYMBOL) -> str:
        """XADD a routed signal; returns its tradebot:signals entry id."""
        self.seq += 1
        now = time.time()
        source_id = f"{int((now - age) * 1000)}-{self.seq}"
        signal = Signal(ticker, side, None if qty is None else Decimal(qty), "nvda", source_id, now)
        return self.r.xadd(self.keys.signals, signal.to_fields())

    def claim_as(self, consumer: str) -> None:
        """Deliver the next new entry to ``consumer`` (a worker that then dies)."""
        ensure_group(self.r, self.keys.signals, self.keys.workers_group, "0")
        self.r.xreadgroup(self.keys.workers_group, consumer, {self.keys.signals: ">"}, count=1)

    def await_idle(self, ms: int, timeout: float = 5.0) -> None:
        """Wait until every pending entry has been idle at least ``ms`` (XPENDING's own clock)."""
        def idle_enough() -> bool:
            rows = self.r.xpending_range(self.keys.signals, self.keys.workers_group, "-", "+", 100)
            return all(row["time_since_delivered"] >= ms for row in rows)
        _wait(idle_enough, timeout, f"pending entries idle {ms} ms")

    def await_consumers_idle(self, names: set[str], ms: int, timeout: float = 5.0) -> None:
        def idle_enough() -> bool:
            idle = {c["name"]: c["idle"] for c in consumers(self.r, self.keys.signals, self.keys.workers_group)}
            return all(idle.get(name, -1) >= ms for name in names)
        _wait(idle_enough, timeout, f"consumers {sorted(names)} idle {ms} ms")

    def journal(self) -> list[JournalEntry]:
        return read_journal(self.r, self.keys, last=1000)

    def orders(self) -> int:
        return sum(self.exchange.order_counts().values())

    def pending(self) -> int:
        return int(self.r.xpending(self.keys.signals, self.keys.workers_group)["pending"])

    def dlq(self) -> list[dict[str, str]]:
        return [fields for _id, fields in self.r.xrange(self.keys.dlq)]

    def coid(self, entry_id: str) -> str:
        """The client_order_id of the signal in tradebot:signals entry ``entry_id``."""
        fields = self.r.xrange(self.keys.signals, entry_id, entry_id)[0][1]
        return client_order_id(fields["source_stream"], fields["source_id"])

    def run_until(self, worker: Worker, done: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"condition not met within {timeout}s"
            self.refresh()
            worker.step()


@pytest.fixture
def rig(r: redis.Redis, rb: redis.Redis, redis_url: str) -> Iterator[Rig]:
    transport, exchange = paper_transport(always_open=True, seed=11, cash=str(CASH), symbols=(SYMBOL,))
    exchange.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
    settings = Settings(redis_url=redis_url, prefix="tbw", symbols=(SYMBOL,), alpaca_base_url=BASE,
                        alpaca_data_url=BASE)
    client = make_client(transport)
    # every tick polls everything: prices, account, positions and the clock
    poller = Poller(make_client(transport), r, settings.keys, [SYMBOL], interval=0.05, account_interval=1e-9,
                    clock_interval=1e-9)
    rig = Rig(r, rb, redis_url, transport, exchange, settings, client, poller)
    try:
        rig.refresh()
        yield rig
    finally:
        for worker in rig.workers:
            worker.close()
        transport.close()


def only(entries: list[JournalEntry]) -> JournalEntry:
    assert len(entries) == 1, entries
    return entries[0]


# ---------------------------------------------------------------------- pure parts


def test_client_order_id_is_deterministic_short_and_distinct():
    coid = client_order_id("nvda", "1719410000000-0")
    assert coid == "tb-nvda-1719410000000-0" == client_order_id("nvda", "1719410000000-0")
    assert client_order_id("nvda", "1719410000000-1") != coid
    long = client_order_id("a-very-long-source-stream-name-for-signals", "1719410000000-0")
    odd = client_order_id("signals from/the web", "1-0")
    for derived in (long, odd):
        assert derived.startswith("tb-") and len(derived) <= 48 and "-" not in derived[3:]
    assert long != client_order_id("a-very-long-source-stream-name-for-signals", "1719410000000-1")


def test_worker_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="strategy"):
        WorkerConfig(consumer="w", strategy="NVDA=")
    with pytest.raises(ConfigError, match="unknown strategy 'yolo'"):
        Strategies(StrategyMap.parse("yolo"))
    with pytest.raises(ConfigError, match="not both"):
        WorkerConfig(consumer="w", strategy="fixed", fixed_qty=Decimal(1), fixed_notional=Decimal(100))
    with pytest.raises(ConfigError, match="claim-idle"):
        WorkerConfig(consumer="w", claim_idle=0)
    assert WorkerConfig(consumer="w").claim_every == 15.0


def test_outcome_mapping():
    from bot.alpaca.models import Order

    def order(status: str, filled: str = "0") -> Order:
        return Order.from_json({"id": "1", "status": status, "qty": "10", "filled_qty": filled})

    assert outcome_of(order("filled", "10"))[0] == "filled"
    assert outcome_of(order("canceled", "3"))[0] == "partially_filled"
    assert outcome_of(order("expired", "3"))[0] == "partially_filled"
    assert outcome_of(order("canceled"), canceled_by_us=True, order_timeout=10)[1].startswith("not filled within")
    assert outcome_of(order("canceled"))[0] == "canceled"
    assert outcome_of(order("expired"))[0] == "expired"
    assert outcome_of(order("rejected"))[0] == "rejected"


# ---------------------------------------------------------------------- the order path


def test_buy_then_sell_fills_journals_and_refreshes_the_cache(rig: Rig):
    worker = rig.worker()
    rig.signal("buy")
    rig.run_until(worker, lambda: len(rig.journal()) == 1)
    buy = only(rig.journal())
    assert (buy.outcome, buy.status, buy.side, buy.ticker) == ("filled", "filled", "buy", SYMBOL)
    # all-in: as many whole shares as the cash buys at the ask plus the ledger's 50 bps buffer
    expected_qty = (CASH / (ASK * Decimal("1.005"))).to_integral_value(rounding="ROUND_FLOOR")
    assert buy.filled_qty == buy.qty == expected_qty and buy.filled_avg_price == ASK
    assert buy.client_order_id == client_order_id("nvda", buy.source_id) and buy.order_id
    assert buy.source_at <= buy.routed_at <= buy.claimed_at <= buy.submitted_at <= buy.final_at
    assert buy.consumer == "w1" and buy.deliveries == 1
    position = rig.client.get_position(SYMBOL)
    assert position is not None and position.qty == expected_qty
    assert rig.r.llen(rig.keys.refresh_request) == 1  # the poller is asked to refresh account and positions

    rig.refresh()  # the poller serves the refresh: positions show the new shares
    rig.signal("sell")
    rig.run_until(worker, lambda: len(rig.journal()) == 2)
    sell = rig.journal()[1]
    assert (sell.outcome, sell.side, sell.filled_qty, sell.filled_avg_price) == ("filled", "sell", expected_qty, BID)
    assert rig.client.get_position(SYMBOL) is None
    assert rig.pending() == 0 and rig.orders() == 2
    rig.refresh()  # settled reservations count only until the cache shows their fills
    ledger = Ledger(rig.r, rig.keys)
    assert ledger.committed_cash() == 0 and ledger.reserved_shares(SYMBOL) == 0


def test_redelivered_signal_whose_order_exists_places_no_second_order(rig: Rig):
    entry_id = rig.signal("buy", qty="3")
    # a worker that died after its submit: the entry is pending for it, its order is at the broker
    rig.claim_as("dead-worker")
    source_id = rig.r.xrange(rig.keys.signals)[0][1]["source_id"]
    coid = client_order_id("nvda", source_id)
    placed = rig.client.submit_order(OrderRequest(SYMBOL, "buy", coid, qty=Decimal(3)))
    rig.await_idle(60)  # the dead worker's entry grows older than the claim-idle below
    worker = rig.worker(claim_idle=0.05, strategy="fixed")
    rig.run_until(worker, lambda: len(rig.journal()) == 1)
    entry = only(rig.journal())
    assert (entry.outcome, entry.order_id, entry.client_order_id, entry.deliveries) == ("filled", placed.id, coid, 2)
    assert rig.orders() == 1 and rig.pending() == 0
    # and the same signal once more (say, routed twice) is only acked
    rig.r.xadd(rig.keys.signals, rig.r.xrange(rig.keys.signals, entry_id, entry_id)[0][1])
    rig.run_until(worker, lambda: rig.pending() == 0 and worker.counts[DUPLICATE] == 1)
    assert rig.orders() == 1 and len(rig.journal()) == 1


def test_restart_replays_own_pending_entry_before_new_ones(rig: Rig):
    first = rig.signal("buy", qty="1")
    # claimed by "w1", then w1 died before it submitted anything
    rig.claim_as("w1")
    rig.signal("buy", qty="2")
    worker = rig.worker(consumer="w1", strategy="fixed")
    rig.run_until(worker, lambda: len(rig.journal()) == 2)
    replayed, fresh = rig.journal()
    assert replayed.deliveries == 2 and replayed.qty == 1 and fresh.deliveries == 1 and fresh.qty == 2
    assert rig.r.xrange(rig.keys.signals)[0][0] == first
    assert rig.orders() == 2


def test_poison_entries_go_to_the_dlq(rig: Rig):
    rig.rb.xadd(rig.keys.signals, {b"ticker": b"NVDA", b"side": b"buy"})  # no source
    rig.rb.xadd(rig.keys.signals, {b"ticker": b"\xff\xfe", b"side": b"buy", b"source_stream": b"nvda",
                                   b"source_id": b"1-1", b"routed_at": b"1"})  # not UTF-8
    rig.r.xadd(rig.keys.signals, {"ticker": "NVDA", "side": "hold", "source_stream": "nvda",
                                  "source_id": "1-2", "routed_at": "1"})
    worker = rig.worker()
    rig.run_until(worker, lambda: len(rig.dlq()) == 3)
    reasons = [d["reason"] for d in rig.dlq()]
    assert "missing field 'source_stream'" in reasons[0]
    assert "not UTF-8" in reasons[1]
    assert "side 'hold'" in reasons[2]
    assert [d["source_id"] for d in rig.dlq()[1:]] == ["1-1", "1-2"]
    assert rig.dlq()[2]["raw_side"] == "hold"
    assert rig.pending() == 0 and rig.journal() == [] and rig.orders() == 0


def test_entry_delivered_too_often_goes_to_the_dlq_and_is_acked(rig: Rig):
    entry_id = rig.signal("buy")
    group, stream = rig.keys.workers_group, rig.keys.signals
    rig.claim_as("crasher")
    for _ in range(4):  # four more deliveries: a signal that killed every worker it met
        rig.r.xclaim(stream, group, "crasher", 0, [entry_id])
    rig.await_idle(60)
    worker = rig.worker(claim_idle=0.05, max_deliveries=5)
    results = worker.reclaim()
    assert results == [DEAD]
    dead = rig.dlq()
    assert len(dead) == 1 and dead[0]["deliveries"] == "6" and "delivered 6 times (max 5)" in dead[0]["reason"]
    assert dead[0]["raw_ticker"] == SYMBOL and dead[0]["entry_id"] == entry_id
    assert rig.pending() == 0 and rig.journal() == [] and rig.orders() == 0


def test_reclaim_round_removes_long_idle_consumers_with_nothing_pending(rig: Rig):
    rig.signal("buy", qty="1")
    rig.claim_as("gone-with-work")  # dead, but holds an entry: must stay until it is reclaimed
    done = rig.signal("buy", qty="1")
    rig.claim_as("gone-idle")  # dead after finishing its entry: nothing pending
    rig.r.xack(rig.keys.signals, rig.keys.workers_group, done)
    rig.await_consumers_idle({"gone-idle", "gone-with-work"}, 60)
    group_consumers = lambda: {c["name"] for c in consumers(rig.r, rig.keys.signals, rig.keys.workers_group)}  # noqa
    assert {"gone-idle", "gone-with-work"} <= group_consumers()
    worker = rig.worker(consumer_idle=0.05, claim_idle=30, strategy="fixed")
    worker.reclaim()
    names = group_consumers()
    assert "gone-idle" not in names and "gone-with-work" in names


# ---------------------------------------------------------------------- risk checks: skipped, no order


def _halt(rig: Rig) -> dict[str, Any]:
    rig.r.set(rig.keys.halt, "maintenance window")
    return {}


def _closed(rig: Rig) -> dict[str, Any]:
    rig.exchange.clock.mode = "closed"
    rig.refresh()
    return {}


def _stale(rig: Rig) -> dict[str, Any]:
    rig.r.hset(rig.keys.prices(SYMBOL), "polled_at", repr(time.time() - 30))
    return {}


def _old(rig: Rig) -> dict[str, Any]:
    return {"age": 120.0}


def _notional(rig: Rig) -> dict[str, Any]:
    rig.settings = replace(rig.settings, max_order_notional=Decimal(500))
    return {"qty": "10"}


def _position_value(rig: Rig) -> dict[str, Any]:
    rig.settings = replace(rig.settings, max_position_value=Decimal(50))
    return {}


def _no_shares(rig: Rig) -> dict[str, Any]:
    return {"side": "sell"}


def _stale_clock(rig: Rig) -> dict[str, Any]:
    rig.r.hset(rig.keys.clock, mapping={"polled_at": repr(time.time() - 200), "as_of": repr(time.time() - 200)})
    return {}


def _past_close(rig: Rig) -> dict[str, Any]:
    # polled while open, 20 s ago; the close it announced has passed since (the next poll is due in 10 s)
    closed_at = datetime.fromtimestamp(time.time() - 5, timezone.utc).isoformat()
    rig.r.hset(rig.keys.clock, mapping={"is_open": "1", "next_close": closed_at, "polled_at": repr(time.time() - 20)})
    return {}


def _old_quote(rig: Rig) -> dict[str, Any]:
    rig.r.hset(rig.keys.prices(SYMBOL), "quote_time", repr(time.time() - 120))  # polled just now, quoted long ago
    return {}


@pytest.mark.parametrize("setup, reason", [
    (_halt, "kill switch on: maintenance window"),
    (_closed, "market is closed"),
    (_stale, "price of NVDA is 30"),
    (_old, "signal is 120"),
    (_notional, "order notional 1000.10 (10 x 100.01) exceeds the max 500.00"),
    (_position_value, "above the max 50.00"),
    (_no_shares, "no NVDA shares to sell"),
    (_stale_clock, "market clock unknown: stale, polled 200s ago (max 90s)"),
    (_past_close, "market is closed"),
    (_old_quote, "quote of NVDA is 120"),
], ids=["halt", "market-closed", "stale-price", "old-signal", "max-order-notional", "max-position-value",
        "no-shares", "stale-clock", "past-next-close", "old-quote"])
def test_risk_checks_journal_skipped_and_send_no_order(rig: Rig, setup: Callable[[Rig], dict[str, Any]],
                                                       reason: str):
    signal_options = setup(rig)
    worker = rig.worker(strategy="fixed" if "qty" in signal_options else "all-in")
    rig.signal(**signal_options)
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert entry.outcome == "skipped" and reason in entry.reason, entry.reason
    assert entry.client_order_id == "" and entry.order_id == ""
    assert rig.orders() == 0 and rig.pending() == 0
    assert Ledger(rig.r, rig.keys).reservations() == []


def test_all_in_buys_top_up_to_the_target_then_find_no_cash_left(rig: Rig):
    worker = rig.worker()
    for _ in range(3):
        rig.signal("buy")
    rig.run_until(worker, lambda: len(rig.journal()) == 3)
    first, second, third = rig.journal()
    # position-target semantics: the second buy spends only what the first left over
    assert (first.outcome, first.filled_qty) == ("filled", 994)
    assert (second.outcome, second.filled_qty) == ("filled", 5)
    assert third.outcome == "skipped" and third.reason.startswith("no cash left to buy NVDA"), third.reason
    assert rig.orders() == 2


def test_broker_refusal_is_journaled_as_rejected_with_its_message(rig: Rig):
    worker = rig.worker()
    rig.exchange.reset(cash=Decimal(50))  # the broker's cash drops; the cache still says 100000
    rig.exchange.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
    rig.signal("buy")
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert entry.outcome == "rejected" and "insufficient buying power" in entry.reason
    assert entry.client_order_id and entry.order_id == ""
    assert Ledger(rig.r, rig.keys).reservations() == []  # released
    assert rig.pending() == 0


def test_all_in_sell_of_a_position_above_the_order_limit_sells_what_the_limit_allows(rig: Rig):
    rig.client.submit_order(OrderRequest(SYMBOL, "buy", "seed-buy", qty=Decimal(25)))
    rig.refresh()
    rig.settings = replace(rig.settings, max_order_notional=Decimal(1000))  # 25 x 99.99 is 2499.75
    worker = rig.worker()
    rig.signal("sell")
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert (entry.outcome, entry.filled_qty) == ("filled", 10), entry.reason  # floor(1000 / 99.99)
    assert rig.client.get_position(SYMBOL).qty == 15  # the next sell signals close the rest


def test_buys_in_flight_count_against_the_position_limit(rig: Rig):
    # another worker's buy of 4 is in flight: reserved, not yet in the cached positions
    rig.settings = replace(rig.settings, max_position_value=Decimal(700))  # 6 shares at 100.01
    Ledger(rig.r, rig.keys).reserve_buy("tb-other-order", SYMBOL, ASK, qty=Decimal(4))
    worker = rig.worker(strategy="fixed", fixed_qty=Decimal(3))
    rig.signal("buy")
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert entry.outcome == "skipped" and entry.reason.startswith("position limit of NVDA: 0 held + 4 in buys"), \
        entry.reason
    assert rig.orders() == 0
    rig.signal("buy", qty="2")  # 4 in flight + 2 fit in the 6
    assert worker.step() == [JOURNALED] and rig.journal()[1].outcome == "filled"


# ---------------------------------------------------------------------- never a hidden order


def test_skip_of_a_signal_whose_order_filled_before_journals_the_fill(rig: Rig):
    # Redis lost its last second: the sell filled and was journaled, then journal, done marker and
    # ack were lost; the entry comes back as a NEW delivery and there are no shares left to sell
    rig.client.submit_order(OrderRequest(SYMBOL, "buy", "seed-buy", qty=Decimal(4)))
    entry_id = rig.signal("sell")
    sold = rig.client.submit_order(OrderRequest(SYMBOL, "sell", rig.coid(entry_id), qty=Decimal(4)))
    rig.refresh()
    worker = rig.worker()
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert (entry.outcome, entry.order_id, entry.filled_qty, entry.deliveries) == ("filled", sold.id, 4, 1)
    assert rig.orders() == 2 and rig.pending() == 0


def test_gate_skip_looks_the_order_up_when_a_reservation_exists(rig: Rig):
    # crash after reserve + submit, before journal; the kill switch went on meanwhile
    entry_id = rig.signal("buy")
    coid = rig.coid(entry_id)
    Ledger(rig.r, rig.keys).reserve_buy(coid, SYMBOL, ASK, qty=Decimal(2))
    placed = rig.client.submit_order(OrderRequest(SYMBOL, "buy", coid, qty=Decimal(2)))
    rig.r.set(rig.keys.halt, "incident")
    worker = rig.worker()
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert (entry.outcome, entry.order_id) == ("filled", placed.id)
    assert Ledger(rig.r, rig.keys).get(coid).settled  # settled at the fill, not released as a skip


def test_gate_skip_on_a_first_delivery_costs_no_broker_request(rig: Rig):
    rig.r.set(rig.keys.halt, "closed for the night")
    worker = rig.worker()
    rig.signal("buy")
    before = rig.client.request_count
    assert worker.step() == [JOURNALED]
    assert only(rig.journal()).outcome == "skipped"
    assert rig.client.request_count == before  # no lookup: halted/closed skips may come by the thousand


def test_a_worker_that_lost_its_entry_while_stalled_sends_no_order(rig: Rig):
    entry_id = rig.signal("buy")

    def then_stall() -> None:  # the worker stalls past claim-idle here; another worker reclaims the entry
        rig.r.xclaim(rig.keys.signals, rig.keys.workers_group, "rescuer", 0, [entry_id])

    worker = rig.worker(strategy="fixed", fixed_qty=Decimal(1), wrap={"decide": _after_decide(then_stall)})
    assert worker.step() == [LOST]
    assert rig.orders() == 0 and rig.journal() == [] and rig.pending() == 1
    assert Ledger(rig.r, rig.keys).get(rig.coid(entry_id)) is not None  # the rescuer reuses it


# ---------------------------------------------------------------------- sent on time


def test_checks_run_again_right_before_the_submit(rig: Rig):
    entry_id = rig.signal("buy")

    def then_wait() -> None:  # time passes before the submit (a rate-limit wait, say): the price goes stale
        rig.r.hset(rig.keys.prices(SYMBOL), "polled_at", repr(time.time() - 30))

    worker = rig.worker(strategy="fixed", fixed_qty=Decimal(1), wrap={"decide": _after_decide(then_wait)})
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert entry.outcome == "skipped" and "price of NVDA is 30" in entry.reason and entry.submitted_at is None
    assert rig.orders() == 0 and Ledger(rig.r, rig.keys).get(rig.coid(entry_id)) is None


class _ThrottlingBroker:
    """httpx.MockTransport handler: the first POST is refused with 429 (the operator halts the bot
    during that wait when ``halt_on_429``), later ones are accepted and filled at once."""

    def __init__(self, r: redis.Redis, keys: Keys, halt_on_429: bool) -> None:
        self.r, self.keys, self.halt_on_429 = r, keys, halt_on_429
        self.posts = 0
        self.orders: dict[str, dict[str, Any]] = {}

    def __call__(self, request: Any) -> Any:
        import httpx

        path = request.url.path
        if request.method == "POST":
            self.posts += 1
            if self.posts == 1:
                if self.halt_on_429:
                    self.r.set(self.keys.halt, "operator")
                return httpx.Response(429, json={"message": "rate limit exceeded"}, headers={"Retry-After": "0"})
            body = json.loads(request.content)
            order = dict(id=f"order-{self.posts}", client_order_id=body["client_order_id"], symbol=body["symbol"],
                         side=body["side"], type=body["type"], time_in_force=body["time_in_force"], qty=body["qty"],
                         status="filled", filled_qty=body["qty"], filled_avg_price="100.01",
                         created_at=datetime.now(timezone.utc).isoformat())
            self.orders[order["client_order_id"]] = order
            return httpx.Response(200, json=order)
        if path == "/v2/orders:by_client_order_id":
            found = self.orders.get(request.url.params["client_order_id"])
            return httpx.Response(200, json=found) if found else httpx.Response(404, json={"message": "not found"})
        return httpx.Response(404, json={"message": f"no {path} here"})


@pytest.mark.parametrize("halt_on_429, outcome, posts", [(False, "filled", 2), (True, "skipped", 1)],
                         ids=["re-sent-after-fresh-checks", "halted-during-the-wait"])
def test_a_submit_refused_with_429_is_re_planned_with_fresh_checks(rig: Rig, halt_on_429: bool, outcome: str,
                                                                   posts: int):
    import httpx

    broker = _ThrottlingBroker(rig.r, rig.keys, halt_on_429)
    client = make_client(httpx.MockTransport(broker), **CLIENT_KNOBS)  # the worker's knobs: one POST per submit
    worker = rig.worker(client=client, strategy="fixed", fixed_qty=Decimal(2))
    rig.signal("buy")
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert entry.outcome == outcome and broker.posts == posts, entry.reason
    if halt_on_429:
        assert entry.reason == "kill switch on: operator" and Ledger(rig.r, rig.keys).reservations() == []
    client.close()


def test_the_worker_builds_a_client_that_cannot_wait_long(rig: Rig):
    worker = Worker(rig.settings, WorkerConfig(consumer="knobs"), r=rig.r, rb=rig.rb)
    try:
        client = worker.client
        assert client.max_retries <= 2 and client.max_wait <= 2.0
        assert client._http.timeout.read is not None and client._http.timeout.read <= 5
        assert isinstance(worker.limiter, BoundedLimiter)
    finally:
        worker.close()


def test_bounded_limiter_gives_up_instead_of_waiting(rig: Rig):
    limiter = RateLimiter(rig.r, rig.keys, {"trading": 1}, burst={"trading": 1})
    stop_left: list[float | None] = [None]
    bounded = BoundedLimiter(limiter, wait=5.0, stop_left=lambda: stop_left[0])
    bounded.acquire("trading")  # the one token of the minute
    with pytest.raises(RateLimitTimeout):
        bounded.acquire("trading")  # the next comes in ~60 s: no waiting for it
    stop_left[0] = -1.0  # past the stop grace: not even a short wait
    with pytest.raises(RateLimitTimeout, match="within 0.00s"):
        bounded.acquire("trading")
    stop_left[0] = None
    with pytest.raises(RateLimitTimeout, match="within 0.50s"):
        bounded.acquire("trading", timeout=0.5)  # the caller's own bound (the client's submit deadline)


def test_a_token_taken_with_the_recheck_serves_the_post_and_nothing_later(rig: Rig):
    from bot import lua

    limiter = RateLimiter(rig.r, rig.keys, {"trading": 1}, burst={"trading": 1})
    bounded = BoundedLimiter(limiter, wait=5.0)
    rig.r.script_flush()  # a Redis restarted without its scripts: no token, the POST's acquire asks itself
    pipe = rig.r.pipeline(transaction=False)
    assert bounded.queue_token(pipe, "trading") and not bounded.queue_token(pipe, "unlimited")
    [missing] = pipe.execute(raise_on_error=False)
    assert isinstance(missing, redis.exceptions.NoScriptError) and not RateLimiter.taken(missing)
    rig.r.script_load(lua.source("ratelimit_take"))
    pipe = rig.r.pipeline(transaction=False)
    bounded.queue_token(pipe, "trading")
    assert RateLimiter.taken(pipe.execute()[0])  # the one token of the minute, in the re-check's round trip
    with bounded.tight(taken="trading"):
        bounded.acquire("trading")  # the POST: its token is taken already
        with pytest.raises(RateLimitTimeout):
            bounded.acquire("trading")  # any further request asks the bucket
    with bounded.tight(taken="trading"):
        pass  # a token the block did not use goes with it
    with pytest.raises(RateLimitTimeout):
        bounded.acquire("trading")
    assert not RateLimiter.taken("0.5")  # a wait: nothing taken


def test_a_submit_cannot_leave_long_after_the_recheck(rig: Rig):
    import httpx

    now = [1000.0]

    class SlowToken:  # the rate-limit token for the POST comes `delay` seconds after the submit began
        delay = 0.0

        def acquire(self, bucket: str, timeout: float | None = None) -> None:
            now[0] += self.delay

    posts: list[str] = []

    def broker(request: httpx.Request) -> httpx.Response:
        posts.append(request.url.path)
        return httpx.Response(200, json={"id": "o1", "client_order_id": "c1", "symbol": SYMBOL, "side": "buy",
                                         "qty": "1", "status": "filled", "filled_qty": "1"})

    token = SlowToken()
    client = make_client(httpx.MockTransport(broker), limiter=token, monotonic=lambda: now[0], **CLIENT_KNOBS)
    request = OrderRequest(SYMBOL, "buy", "c1", qty=Decimal(1))
    token.delay = SUBMIT_DEADLINE + 0.5
    with pytest.raises(RateLimited, match="submit deadline"):
        client.submit_order(request)  # nothing placed: the worker re-plans with fresh checks
    assert posts == []
    token.delay = SUBMIT_DEADLINE - 0.5
    assert client.submit_order(request).status == "filled" and posts == ["/v2/orders"]
    assert SUBMIT_DEADLINE <= 2.0
    worker = Worker(rig.settings, WorkerConfig(consumer="deadline"), r=rig.r, rb=rig.rb)
    try:
        assert worker.client.submit_deadline == SUBMIT_DEADLINE  # the client the worker builds for itself
    finally:
        worker.close()
    client.close()


# ---------------------------------------------------------------------- settings reach the worker


def test_max_quote_age_comes_from_the_settings_unless_the_config_gives_one(rig: Rig):
    rig.r.hset(rig.keys.prices(SYMBOL), "quote_time", repr(time.time() - 30))  # polled now, quoted 30 s ago
    strict = rig.worker(settings=replace(rig.settings, max_quote_age=10.0), strategy="fixed", fixed_qty=Decimal(1))
    assert strict.market.max_quote_age == 10.0
    rig.signal("buy")
    assert strict.step() == [JOURNALED]
    assert "quote of NVDA is 30" in rig.journal()[0].reason
    overridden = rig.worker(settings=replace(rig.settings, max_quote_age=10.0), max_quote_age=45.0,
                            strategy="fixed", fixed_qty=Decimal(1))
    assert overridden.market.max_quote_age == 45.0
    rig.signal("buy")
    assert overridden.step() == [JOURNALED]
    assert rig.journal()[1].outcome == "filled"
    assert WorkerConfig(consumer="w").max_quote_age is None  # None: the setting (TRADEBOT_MAX_QUOTE_AGE)
    with pytest.raises(ConfigError, match="max-quote-age must be > 0"):
        WorkerConfig(consumer="w", max_quote_age=0)


# ---------------------------------------------------------------------- batched reads keep the checks' meaning


def test_a_halt_set_during_the_lookup_of_a_redelivered_signal_is_honoured(rig: Rig, monkeypatch):
    rig.signal("buy")
    rig.claim_as("w1")  # delivered before: the worker asks the broker for the order first
    worker = rig.worker(consumer="w1", strategy="fixed", fixed_qty=Decimal(1))
    lookup = worker.client.get_order_by_client_id

    def lookup_then_halt(coid: str) -> Any:
        found = lookup(coid)
        rig.r.set(rig.keys.halt, "operator")  # comes while the lookup was on its way
        return found

    reserved: list[str] = []
    reserve = worker.ledger.reserve_buy
    monkeypatch.setattr(worker.client, "get_order_by_client_id", lookup_then_halt)
    monkeypatch.setattr(worker.ledger, "reserve_buy",
                        lambda coid, *a, **kw: reserved.append(coid) or reserve(coid, *a, **kw))
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert (entry.outcome, entry.reason, entry.deliveries) == ("skipped", "kill switch on: operator", 2)
    assert reserved == [] and rig.orders() == 0  # the checks read the cache after the lookup, not before it


def test_a_redis_that_lost_its_scripts_still_takes_orders(rig: Rig):
    worker = rig.worker(strategy="fixed", fixed_qty=Decimal(1))
    rig.signal("buy")
    assert worker.step() == [JOURNALED]
    rig.r.script_flush()  # a restart without persistence, a failover: the pipelined re-claim meets NOSCRIPT
    rig.signal("buy")
    assert worker.step() == [JOURNALED]
    assert [e.outcome for e in rig.journal()] == ["filled", "filled"] and rig.orders() == 2


# ---------------------------------------------------------------------- stopping


def test_no_order_is_sent_once_a_stop_is_requested(rig: Rig):
    entry_id = rig.signal("buy")
    stop = threading.Event()
    # SIGTERM arrives between the checks and the submit
    worker = rig.worker(strategy="fixed", fixed_qty=Decimal(1), wrap={"decide": _after_decide(stop.set)})
    assert worker.step(stop) == [PENDING]
    assert rig.orders() == 0 and rig.journal() == [] and rig.pending() == 1
    assert Ledger(rig.r, rig.keys).get(rig.coid(entry_id)) is not None  # kept for the replay


def test_a_stop_cancels_the_open_order_within_the_stop_grace(rig: Rig):
    rig.exchange.fill_delay = 60.0  # the order sits `new`; its own timeout is far away
    worker = rig.worker(order_timeout=60, cancel_timeout=1.0, stop_grace=1.5, strategy="fixed",
                        fixed_qty=Decimal(1))
    thread, stop = _run_in_thread(worker)
    try:
        rig.signal("buy")
        _wait(lambda: rig.orders() == 1, 10, "the order at the broker")
        stop.set()
        thread.join(timeout=10)  # without the grace it would follow the order for 60 s
    finally:
        stop.set()
        thread.join(timeout=70)
    assert not thread.is_alive()
    entry = only(rig.journal())
    assert (entry.outcome, entry.status) == ("canceled", "canceled")
    assert entry.reason == "canceled unfilled: the worker was stopping"


# ---------------------------------------------------------------------- following, timeouts, unknowns


def test_order_past_the_timeout_is_canceled_and_journaled(rig: Rig):
    rig.exchange.fill_delay = 30.0  # the order sits `new`
    worker = rig.worker(order_timeout=0.3, strategy="fixed", fixed_qty=Decimal(5))
    rig.signal("buy")
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert (entry.outcome, entry.status, entry.filled_qty) == ("canceled", "canceled", 0)
    assert "order timeout" in entry.reason
    assert Ledger(rig.r, rig.keys).reservations() == []
    assert rig.client.get_position(SYMBOL) is None


def test_a_cancel_that_loses_the_race_to_a_fill_is_journaled_as_filled(rig: Rig):
    import httpx

    order: dict[str, Any] = {}
    seen: list[str] = []

    def broker(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            body = json.loads(request.content)
            order.update(id="5f0c7a52-3d0e-4d57-9a0a-2f0b8f1d9e11", client_order_id=body["client_order_id"],
                         symbol=body["symbol"], side=body["side"], type=body["type"],
                         time_in_force=body["time_in_force"], qty=body["qty"], status="new", filled_qty="0",
                         created_at=datetime.now(timezone.utc).isoformat())
        elif request.method == "DELETE":  # cancel accepted... but the fill got there first
            order.update(status="filled", filled_qty=order["qty"], filled_avg_price="100.01")
            return httpx.Response(204)
        return httpx.Response(200, json=order)

    client = make_client(httpx.MockTransport(broker))
    worker = rig.worker(client=client, order_timeout=0.2, strategy="fixed", fixed_qty=Decimal(2))
    rig.signal("buy")
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    assert (entry.outcome, entry.status, entry.filled_qty) == ("filled", "filled", 2)
    assert "DELETE /v2/orders/5f0c7a52-3d0e-4d57-9a0a-2f0b8f1d9e11" in seen
    assert seen.count("POST /v2/orders") == 1
    polls = [s for s in seen if s.startswith("GET /v2/orders/")]
    assert 1 <= len(polls) <= 10  # backoff, not a busy loop
    assert Ledger(rig.r, rig.keys).get(entry.client_order_id).settled  # settled at the fill, not released
    client.close()


def test_extended_hours_sends_a_limit_day_order(rig: Rig):
    rig.exchange.clock.mode = "closed"
    rig.refresh()
    worker = rig.worker(extended_hours=True, order_timeout=0.2, strategy="fixed", fixed_qty=Decimal(1))
    rig.signal("buy")
    assert worker.step() == [JOURNALED]
    entry = only(rig.journal())
    order = rig.client.get_order(entry.order_id)
    assert (order.type, order.time_in_force, order.extended_hours) == ("limit", "day", True)
    assert order.limit_price == Decimal("100.12")  # the ask plus 10 bps, rounded up to a cent
    assert entry.outcome == "canceled"  # nothing executes while the paper market is closed


def test_unknown_outcome_leaves_the_entry_pending_until_the_order_is_found(rig: Rig):
    # every orders request answers 500 AFTER it took effect: the order lands, nobody can tell
    rig.broker_state.faults.update({"fault_500": {"orders": 1.0}, "fault_500_when": "after"})
    worker = rig.worker(claim_idle=0.05, strategy="fixed", fixed_qty=Decimal(2))
    entry_id = rig.signal("buy")
    assert worker.step() == [PENDING]
    assert rig.journal() == [] and rig.pending() == 1 and rig.orders() == 1
    coid = client_order_id("nvda", rig.r.xrange(rig.keys.signals)[0][1]["source_id"])
    assert Ledger(rig.r, rig.keys).get(coid) is not None  # the reservation stays with the entry

    rig.broker_state.faults.update({"fault_500": 0})
    rig.await_idle(60)
    assert worker.reclaim() == [JOURNALED]
    entry = only(rig.journal())
    assert (entry.outcome, entry.client_order_id, entry.deliveries) == ("filled", coid, 2)
    assert rig.orders() == 1 and rig.pending() == 0
    assert rig.r.xrange(rig.keys.signals)[0][0] == entry_id


def test_keeps_its_own_entry_fresh_so_no_living_worker_steals_it(rig: Rig):
    # the order stays open for twice the claim-idle: only the keeper's re-claims (every claim_idle / 4)
    # keep it from the thief; a claim-idle of seconds, not tenths, so a loaded machine's scheduling
    # pauses cannot pass for a dead worker
    rig.exchange.fill_delay = 4.0
    slow = rig.worker(claim_idle=2.0, order_timeout=10, strategy="fixed", fixed_qty=Decimal(1))
    thief = rig.worker(claim_idle=2.0)
    rig.signal("buy")
    handled: list[str] = []
    thread = threading.Thread(target=lambda: handled.extend(slow.step()), daemon=True)
    thread.start()
    stolen: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while thread.is_alive() and time.monotonic() < deadline:
            stolen += thief.reclaim()
            time.sleep(0.05)
    finally:
        thread.join(timeout=30)
    assert handled == [JOURNALED] and stolen == []
    assert only(rig.journal()).outcome == "filled" and rig.orders() == 1


def test_run_stops_on_request_and_leaves_the_group(rig: Rig):
    worker = rig.worker(strategy="fixed", fixed_qty=Decimal(1))
    stop = threading.Event()
    poller_stop = threading.Event()
    poller = threading.Thread(target=rig.poller.run, args=(poller_stop,), daemon=True)
    runner = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    poller.start()
    runner.start()
    try:
        for _ in range(3):
            rig.signal("buy")
        deadline = time.monotonic() + 10
        while len(rig.journal()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        runner.join(timeout=10)
        poller_stop.set()
        poller.join(timeout=10)
    assert not runner.is_alive()
    assert [e.outcome for e in rig.journal()] == ["filled"] * 3
    assert rig.pending() == 0
    assert "w1" not in [c["name"] for c in consumers(rig.r, rig.keys.signals, rig.keys.workers_group)]


def _run_in_thread(worker: Worker) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name=f"run-{worker.consumer}", daemon=True)
    thread.start()
    return thread, stop


def test_broker_outage_leaves_the_entry_pending_and_the_loop_running(rig: Rig):
    worker = rig.worker(claim_idle=0.3, backoff_max=0.2, strategy="fixed", fixed_qty=Decimal(1))
    rig.broker_state.faults.update({"fault_500": {"orders": 1.0}, "fault_500_when": "before"})
    thread, stop = _run_in_thread(worker)
    try:
        rig.signal("buy")
        _wait(lambda: worker.counts[PENDING] >= 2, 10, "two failed tries")  # retried, not dropped
        assert thread.is_alive() and rig.journal() == [] and rig.pending() == 1 and rig.orders() == 0
        rig.broker_state.faults.update({"fault_500": 0})
        _wait(lambda: len(rig.journal()) == 1, 10, "the journal entry", tick=rig.refresh)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    entry = only(rig.journal())
    assert entry.outcome == "filled" and entry.deliveries >= 3 and rig.orders() == 1 and rig.pending() == 0


def _deliveries(rig: Rig, entry_id: str) -> int:
    return delivery_count(rig.rb, rig.keys.signals, rig.keys.workers_group, entry_id)


def test_an_entry_left_pending_is_replayed_by_its_worker_long_before_claim_idle(rig: Rig):
    # claim_idle 300 s: no XAUTOCLAIM can deliver the entry again in this test, only the own replay
    worker = rig.worker(claim_idle=300.0, strategy="fixed", fixed_qty=Decimal(1))
    rig.broker_state.faults.update({"fault_500": {"orders": 1.0}, "fault_500_when": "before"})
    failed = rig.signal("buy")
    assert worker.step() == [PENDING]
    assert rig.journal() == [] and rig.orders() == 0 and rig.pending() == 1
    assert worker.step() == [] and _deliveries(rig, failed) == 1  # the backoff first: no instant replay
    rig.broker_state.faults.update({"fault_500": 0})
    # healthy flow meanwhile: a new signal is handled at once, not held up behind the pending one
    fresh = rig.signal("buy")
    assert worker.step() == [JOURNALED]
    assert [(e.source_id, e.deliveries) for e in rig.journal()] == [
        (rig.r.xrange(rig.keys.signals, fresh, fresh)[0][1]["source_id"], 1)]
    assert _deliveries(rig, failed) == 1
    rig.run_until(worker, lambda: len(rig.journal()) == 2)
    replayed = rig.journal()[1]
    assert (replayed.outcome, replayed.deliveries, replayed.consumer) == ("filled", 2, "w1")
    assert replayed.client_order_id == rig.coid(failed)
    assert rig.orders() == 2 and rig.pending() == 0
    assert worker.counts[PENDING] == 1 and worker.counts[JOURNALED] == 2 and len(worker.replays) == 0


class _RefusedPosts(httpx.BaseTransport):
    """The paper broker, except that every order POST is answered 503 (nothing placed)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v2/orders":
            self.posts += 1
            return httpx.Response(503, json={"code": 50300000, "message": "service unavailable"})
        return self.inner.handle_request(request)


def test_own_replays_reach_max_deliveries_only_at_the_backoff_pace_then_look_up_before_the_dlq(rig: Rig):
    refusing = _RefusedPosts(rig.transport)
    # the test's backoff: 1, 2 s (long enough that no scheduling pause between two statements reaches
    # it); one POST per delivery, no pauses between submit attempts
    # 503s: each POST's outcome is unknown; resolve_after (0.5 s) has passed by the third delivery
    worker = rig.worker(client=make_client(refusing, max_retries=0), claim_idle=300.0, max_deliveries=2,
                        strategy="fixed", fixed_qty=Decimal(1), own_replay_first=1.0, submit_attempts=1,
                        resolve_after=0.5)
    entry_id = rig.signal("buy")
    for delivery in (1, 2):
        rig.run_until(worker, lambda: worker.counts[PENDING] == delivery)
        assert _deliveries(rig, entry_id) == delivery
        assert worker.step() == [] and _deliveries(rig, entry_id) == delivery  # nothing before the backoff
    rig.run_until(worker, lambda: len(rig.dlq()) == 1)
    (dead,) = rig.dlq()
    assert dead["deliveries"] == "3" and "delivered 3 times (max 2)" in dead["reason"]
    assert "last error: broker: order" in dead["reason"] and "HTTP 503" in dead["reason"]
    assert "had an unknown outcome; no such order at the broker" in dead["reason"]
    assert rig.r.hlen(rig.keys.unresolved) == 0  # resolved: dead-lettered with no order
    assert refusing.posts == 2  # one POST per delivery; the third delivery only looked the order up
    assert rig.orders() == 0 and rig.pending() == 0 and rig.journal() == [] and len(worker.replays) == 0


def test_own_replay_leaves_an_entry_another_worker_took_alone(rig: Rig):
    worker = rig.worker(claim_idle=300.0, strategy="fixed", fixed_qty=Decimal(1), own_replay_first=0.05)
    rig.broker_state.faults.update({"fault_500": {"orders": 1.0}, "fault_500_when": "before"})
    entry_id = rig.signal("buy")
    assert worker.step() == [PENDING]
    # another worker reclaims it (as after claim-idle): it is that worker's now
    rig.r.xclaim(rig.keys.signals, rig.keys.workers_group, "other", 0, [entry_id])
    _wait(lambda: worker.step() == [] and len(worker.replays) == 0, 5, "the replay to be dropped")
    rows = rig.r.xpending_range(rig.keys.signals, rig.keys.workers_group, "-", "+", 10)
    assert [(row["consumer"], row["times_delivered"]) for row in rows] == [("other", 2)]
    assert rig.orders() == 0 and rig.journal() == []


def test_redis_restart_never_kills_the_loop(rig: Rig, tmp_path):
    from bot.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    own = redis.Redis.from_url(server.url, decode_responses=True)
    poller = Poller(make_client(rig.transport), own, rig.keys, [SYMBOL], interval=0.05, account_interval=0.05,
                    clock_interval=0.05, max_backoff=0.2)
    poller_stop = threading.Event()
    poller_thread = threading.Thread(target=poller.run, args=(poller_stop,), daemon=True)
    settings = replace(rig.settings, redis_url=server.url)
    worker = Worker(settings, WorkerConfig(consumer="survivor", block_ms=50, backoff_max=0.2, strategy="fixed",
                                           fixed_qty=Decimal(1)), client=rig.client)
    thread, stop = _run_in_thread(worker)
    poller_thread.start()
    try:
        own.xadd(rig.keys.signals, Signal(SYMBOL, "buy", None, "nvda", f"{int(time.time() * 1000)}-1",
                                          time.time()).to_fields())
        _wait(lambda: own.xlen(rig.keys.orders) == 1, 10, "the first journal entry")
        server.stop()
        _wait(lambda: worker.loop_errors >= 1, 10, "the worker to notice")
        server.start()
        own.xadd(rig.keys.signals, Signal(SYMBOL, "buy", None, "nvda", f"{int(time.time() * 1000)}-2",
                                          time.time()).to_fields())
        _wait(lambda: own.xlen(rig.keys.orders) == 2, 15, "the second journal entry")
        assert thread.is_alive()
        assert [e.outcome for e in read_journal(own, rig.keys)] == ["filled", "filled"]
    finally:
        stop.set()
        thread.join(timeout=10)
        poller_stop.set()
        poller_thread.join(timeout=10)
        own.close()
        server.stop()
    assert not thread.is_alive() and rig.orders() == 2


# ---------------------------------------------------------------------- concurrency


def test_fifty_buys_on_eight_workers_never_commit_more_than_the_cash(r: redis.Redis, redis_url: str):
    cash = Decimal(10000)
    with PaperBrokerServer(always_open=True, seed=5, cash=str(cash), symbols=(SYMBOL,), rate_limit=100000) as broker:
        broker.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
        settings = Settings(redis_url=redis_url, prefix="tbc", symbols=(SYMBOL,), alpaca_base_url=broker.base_url,
                            alpaca_data_url=broker.base_url, rate_limit_per_minute=60000)
        keys = settings.keys
        poller_client = make_client(base_url=broker.base_url)
        poller = Poller(poller_client, r, keys, [SYMBOL], interval=0.1, account_interval=0.1, clock_interval=1)
        poller.tick()
        workers, closers = [], []
        for n in range(8):
            # each worker: its own Redis clients (built from the URL) and its own AlpacaClient
            limiter_redis = redis.Redis.from_url(redis_url, decode_responses=True)
            closers.append(limiter_redis)
            client = make_client(base_url=broker.base_url, limiter=RateLimiter.from_settings(limiter_redis, settings))
            workers.append(Worker(settings, WorkerConfig(consumer=f"c{n}", block_ms=50, strategy="fixed",
                                                         fixed_qty=Decimal(7)), client=client))
        stop, poller_stop = threading.Event(), threading.Event()
        threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
        poller_thread = threading.Thread(target=poller.run, args=(poller_stop,), daemon=True)
        try:
            poller_thread.start()
            for thread in threads:
                thread.start()
            # every worker reading before the burst: the check that the work was shared does not
            # depend on how soon the threads are scheduled
            _wait(lambda: len(consumers(r, keys.signals, keys.workers_group)) == 8, 60, "8 workers in the group")
            now = time.time()
            pipe = r.pipeline()
            for n in range(50):
                signal = Signal(SYMBOL, "buy", None, "nvda", f"{int(now * 1000)}-{n}", now)
                pipe.xadd(keys.signals, signal.to_fields())
            pipe.execute()
            _wait(lambda: r.xlen(keys.orders) >= 50, 60, "50 journal entries")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
            poller_stop.set()
            poller_thread.join(timeout=10)
            for closable in [*(w.client for w in workers), *closers, poller_client]:
                closable.close()
        assert not any(t.is_alive() for t in threads), "a worker did not stop"
        journal = read_journal(r, keys, last=100)
        stats = broker.stats()
    outcomes = [e.outcome for e in journal]
    assert len(journal) == 50 and len({e.source_id for e in journal}) == 50
    spent = sum((e.filled_qty or 0) * (e.filled_avg_price or 0) for e in journal)
    # 7 x 100.01 (+ the ledger's 50 bps buffer) each: at most 14 fit in 10000. How many fewer fill
    # depends on timing (a fill the cache shows before its settle counts twice for a moment, longer
    # on a loaded machine), so the invariants are: never more than fit, never a 403, every skip a
    # cash skip, every signal journaled once
    assert 1 <= outcomes.count("filled") <= 14
    assert set(outcomes) == {"filled", "skipped"} and "rejected" not in outcomes
    assert all("no cash left to buy NVDA" in e.reason for e in journal if e.outcome == "skipped")
    assert spent <= cash
    assert "403" not in stats["by_status"] and stats["orders"] == outcomes.count("filled")
    assert len({e.consumer for e in journal}) > 1  # the work was shared


def test_cli_help_lists_the_worker_flags():
    from bot.cli import cli

    result = CliRunner().invoke(cli, ["worker", "--help"])
    assert result.exit_code == 0
    for flag in ("--claim-idle", "--max-deliveries", "--order-timeout", "--strategy", "--consumer",
                 "--order-type", "--slippage-bps", "--max-signal-age", "--extended-hours", "--block-ms"):
        assert flag in result.output


# ---------------------------------------------------------------------- Redis round trips per order


class _RoundTrips:
    """Counts Redis round trips: every packet a connection writes (one command, or one whole
    pipeline) is one wait for the server. Names the commands of each packet for the failure message."""

    def __init__(self) -> None:
        self.packets: list[list[str]] = []
        self.counting = False

    def connection_class(self) -> type:
        counter = self

        class CountingConnection(redis.Connection):
            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                if counter.counting:
                    counter.packets.append(_command_names(command))
                super().send_packed_command(command, check_health)

        return CountingConnection

    def client(self, url: str, decode: bool) -> redis.Redis:
        return redis.Redis.from_url(url, decode_responses=decode, connection_class=self.connection_class())

    def measure(self, action: Callable[[], Any]) -> list[list[str]]:
        self.packets, self.counting = [], True
        try:
            action()
        finally:
            self.counting = False
        return self.packets


def _command_names(command: Any) -> list[str]:
    """The commands of one packed RESP packet (``*n``, then ``$len``/value per argument), by name;
    a script call is named with the start of its sha (``EVALSHA:a5ca5ddb``)."""
    data = command.encode() if isinstance(command, str) else b"".join(bytes(part) for part in command)
    names, pos = [], 0
    while pos < len(data):
        assert data[pos:pos + 1] == b"*", data[pos:pos + 20]
        end = data.index(b"\r\n", pos)
        count, pos = int(data[pos + 1:end]), end + 2
        args = []
        for _ in range(count):
            end = data.index(b"\r\n", pos)
            size = int(data[pos + 1:end])
            args.append(data[end + 2:end + 2 + size])
            pos = end + 2 + size + 2
        name = args[0].decode().upper()
        names.append(f"{name}:{args[1][:8].decode()}" if name == "EVALSHA" else name)
    return names


def _counted_worker(rig: Rig, trips: _RoundTrips, **config: Any) -> Worker:
    """A worker as `tradebot worker` builds it (its Redis clients carry the fleet-wide rate limiter
    behind a BoundedLimiter), on counting clients; the keeper's own rounds are kept out of the count."""
    r, rb = trips.client(rig.redis_url, True), trips.client(rig.redis_url, False)
    limiter = BoundedLimiter(RateLimiter.from_settings(r, replace(rig.settings, rate_limit_per_minute=60000)))
    client = make_client(rig.transport, limiter=limiter)
    options: dict[str, Any] = dict(consumer="counted", block_ms=20, claim_idle=600.0, strategy="fixed",
                                   fixed_qty=Decimal(1))
    options.update(config)
    worker = Worker(rig.settings, WorkerConfig(**options), r=r, rb=rb, client=client, limiter=limiter)
    rig.workers.append(worker)
    worker.setup()
    return worker


# Per order, today: XREADGROUP; ONE pipeline with the done marker, the trading state, the cooldown,
# clock, price, account and position; the ledger reservation; ONE pipeline re-checking halt, clock and
# price with the entry's re-claim and the POST's rate-limit token; then ONE script settling the
# reservation, writing the journal entry with the XACK and asking the poller for a refresh. Before the
# pipelines a buy took 18, a sell 16; then 9, until the token joined the re-check and the settle, the
# journal and the refresh ask became one script (measured with this test).
ROUND_TRIPS_PER_ORDER = 5


@pytest.mark.parametrize("side", ["buy", "sell"])
def test_round_trips_per_order_are_pinned(rig: Rig, side: str):
    import hashlib

    from bot import lua

    trips = _RoundTrips()
    worker = _counted_worker(rig, trips)
    for warm_up in ("buy", "sell", "buy"):  # connections made, scripts loaded, own PEL replayed; 1 share held
        rig.signal(warm_up)
        assert worker.step() == [JOURNALED]
        rig.refresh()
    rig.signal(side)
    packets = trips.measure(worker.step)
    entries = rig.journal()
    assert [e.outcome for e in entries] == ["filled"] * 4 and entries[-1].side == side
    assert len(packets) <= ROUND_TRIPS_PER_ORDER, packets
    reads = [p for p in packets if "HGETALL" in p]
    assert len(reads) == 2, packets  # the pre-trade snapshot and the pre-submit re-check
    assert sum(name.startswith("EVALSHA") for name in reads[1]) == 2, packets  # the re-claim and the token
    record = hashlib.sha1(lua.source("journal_record").encode("utf-8")).hexdigest()[:8]
    assert packets[-1] == [f"EVALSHA:{record}"], packets  # settle + journal + XACK + refresh ask
    assert {"GET", "HGET", "HEXISTS"} <= set(reads[0]) and reads[0].count("HGETALL") == 3
