"""A bench for one worker stage at a time: a real Redis, the in-process paper broker and one Poller
tick filling the market cache; builders for the records the stages hand each other."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import redis

from bot.alpaca.client import AlpacaClient
from bot.alpaca.models import Order
from bot.config import Settings
from bot.journal import JournalEntry, read_journal
from bot.keys import Keys
from bot.ledger import Ledger
from bot.order_events import OrderEvents
from bot.market import MarketCache
from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY
from bot.poller import Poller
from bot.risk import RiskLimits
from bot.signals import Signal
from bot.streams import ensure_group
from bot.worker.config import WorkerConfig
from bot.worker.decide import Gates
from bot.signals import client_order_id
from bot.worker.records import Delivery, Job

SYMBOL = "NVDA"
BASE = "http://paper"
CASH = Decimal("100000")
ASK = Decimal("100.01")  # the pinned quote: 100.00 +- 0.01
BID = Decimal("99.99")
CONSUMER = "w1"


def make_client(transport: Any, **kw: Any) -> AlpacaClient:
    """An AlpacaClient on ``transport`` that never sleeps between its own retries."""
    return AlpacaClient(api_key=DEMO_API_KEY, secret_key=DEMO_SECRET_KEY, base_url=BASE, data_url=BASE,
                        transport=transport, sleep=lambda _s: None, **kw)


def make_order(status: str = "new", *, order_id: str = "o-1", coid: str = "tb-nvda-1-1", qty: str = "2",
               filled: str = "0", price: str | None = None, created_at: datetime | None = None,
               **extra: Any) -> Order:
    """An Order as the broker would return it (no broker involved)."""
    created = created_at if created_at is not None else datetime.now(timezone.utc)
    data: dict[str, Any] = dict(id=order_id, client_order_id=coid, symbol=SYMBOL, side="buy", type="market",
                                time_in_force="day", status=status, qty=qty, filled_qty=filled,
                                filled_avg_price=price, created_at=created.isoformat(), **extra)
    return Order.from_json(data)


def config(**options: Any) -> WorkerConfig:
    """A WorkerConfig for the bench: consumer w1, a fixed buy of 1 share unless told otherwise."""
    values: dict[str, Any] = dict(consumer=CONSUMER, strategy="fixed", fixed_qty=Decimal(1), block_ms=20)
    values.update(options)
    return WorkerConfig(**values)


@dataclass
class Bench:
    r: redis.Redis
    rb: redis.Redis
    settings: Settings
    transport: Any  # the paper broker's httpx transport
    exchange: Any  # its Exchange
    client: AlpacaClient
    poller: Poller
    seq: int = 0
    closers: list[Any] = field(default_factory=list)  # closed at teardown, last first

    def client_on(self, transport: Any, **kw: Any) -> AlpacaClient:
        """Another AlpacaClient (on a wrapped transport, say), closed at teardown."""
        client = make_client(transport, **kw)
        self.closers.append(client)
        return client

    @property
    def keys(self) -> Keys:
        return self.settings.keys

    @property
    def market(self) -> MarketCache:
        return MarketCache(self.r, self.keys, self.settings.max_price_age, max_quote_age=self.settings.max_quote_age)

    @property
    def events(self) -> OrderEvents:
        return OrderEvents(self.r, self.keys)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.r, self.keys)

    @property
    def limits(self) -> RiskLimits:
        return RiskLimits.from_settings(self.settings)

    def gates(self) -> Gates:
        return Gates(self.keys, self.limits, time.time)

    def refresh(self) -> None:
        """One poller tick: prices, account, positions and clock into the cache."""
        assert self.poller.tick(), self.poller.last_error

    # ------------------------------------------------------------------ signals and entries

    def signal(self, side: str = "buy", qty: str | None = None, age: float = 0.0) -> Signal:
        """A routed signal from source stream ``nvda`` whose source entry is ``age`` seconds old."""
        self.seq += 1
        now = time.time()
        return Signal(SYMBOL, side, None if qty is None else Decimal(qty), "nvda",
                      f"{int((now - age) * 1000)}-{self.seq}", now)

    def deliver(self, signal: Signal | None = None, *, fields: dict[Any, Any] | None = None,
                consumer: str = CONSUMER) -> Delivery:
        """XADD to tradebot:signals and read it as ``consumer`` (pending for it): its first Delivery,
        with the bytes fields intake hands over."""
        ensure_group(self.r, self.keys.signals, self.keys.workers_group, "0")
        raw = fields if fields is not None else (signal or self.signal()).to_fields()
        entry_id = self.rb.xadd(self.keys.signals, raw).decode()
        reply = self.rb.xreadgroup(self.keys.workers_group, consumer, {self.keys.signals: ">"}, count=1)
        [(_stream, [(read_id, read_fields)])] = reply
        assert read_id.decode() == entry_id
        return Delivery(entry_id, read_fields, 1)

    def job(self, delivery: Delivery | None = None, *, deliveries: int | None = None) -> Job:
        """A Job for ``delivery`` (a new one by default) with a fresh snapshot, as triage builds it."""
        delivery = delivery or self.deliver()
        signal = Signal.from_fields(delivery.fields)
        market = self.market.snapshot(signal.ticker, (self.keys.halt, self.keys.reduce_only,
                                                      self.keys.cooldown(signal.ticker)))
        return Job(delivery.entry_id, signal, client_order_id(signal.source_stream, signal.source_id),
                   deliveries if deliveries is not None else delivery.deliveries, time.time(), market)

    # ------------------------------------------------------------------ what is left behind

    def orders(self) -> int:
        """Orders the paper broker holds."""
        return sum(self.exchange.order_counts().values())

    def pending(self) -> int:
        return int(self.r.xpending(self.keys.signals, self.keys.workers_group)["pending"])

    def journal(self) -> list[JournalEntry]:
        return read_journal(self.r, self.keys, last=100)

    def dlq(self) -> list[dict[str, str]]:
        return [fields for _id, fields in self.r.xrange(self.keys.dlq)]
