"""What the stages hand each other: one frozen record per step of a signal's life."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bot.alpaca.models import Order
from bot.market import MarketSnapshot
from bot.signals import Signal

# What became of one entry (Worker.handle): journaled, dead-lettered, already recorded (acked),
# left pending (replayed later), or lost to another worker that reclaimed it (it finishes it).
JOURNALED, DEAD, DUPLICATE, PENDING, LOST = "journaled", "dead", "duplicate", "pending", "lost"



@dataclass(frozen=True)
class Delivery:
    """One entry of ``tradebot:signals`` as intake handed it over."""

    entry_id: str
    fields: Mapping[Any, Any]
    deliveries: int  # 1 for a first delivery


# ------------------------------------------------------------------ triage


@dataclass(frozen=True)
class Job:
    """A parsed signal in hand, with the cache as its checks see it (read in one round trip)."""

    entry_id: str
    signal: Signal
    coid: str
    deliveries: int
    claimed_at: float
    market: MarketSnapshot
    existing: Order | None = None  # found at the broker under coid: an earlier delivery placed it

    @property
    def seen_before(self) -> bool:
        """Its order may exist already: delivered before, or a replay that kept its original's order id."""
        return self.deliveries > 1 or self.signal.pinned_coid is not None


@dataclass(frozen=True)
class Duplicate:
    """Already journaled or dead-lettered (its done marker exists): only acked."""

    entry_id: str
    source_stream: str
    source_id: str


@dataclass(frozen=True)
class DeadLetter:
    """Goes to the DLQ; ``release``: a reservation of this client_order_id to drop first."""

    delivery: Delivery
    reason: str
    signal: Signal | None = None
    release: str | None = None


Verdict = Duplicate | DeadLetter


# ------------------------------------------------------------------ decide and submit


@dataclass(frozen=True)
class Skip:
    """No order for this signal: journaled ``skipped`` (once the broker was asked, see Triage)."""

    reason: str
    gate: bool = False  # the kill switch or the market clock said no (may say so for hours)
    qty: Decimal | None = None  # the order's size when the re-check before the submit said no


@dataclass(frozen=True)
class Placed:
    """An order at the broker under the job's client_order_id."""

    order: Order
    submitted_at: float
    qty: Decimal | None
    adopted: bool = False  # found at the broker rather than placed by this delivery
    after_unknown: bool = False  # an earlier POST of this submit had an unknown outcome (marked so)

    @classmethod
    def found(cls, order: Order, claimed_at: float) -> Placed:
        """An order found at the broker (an earlier delivery placed it)."""
        placed_at = order.submitted_at or order.created_at
        return cls(order, placed_at.timestamp() if placed_at is not None else claimed_at, order.qty, adopted=True)


@dataclass(frozen=True)
class Rejected:
    """The broker refused the order for good: journaled ``rejected``."""

    reason: str
    qty: Decimal | None
    submitted_at: float  # when the refused POST was sent


@dataclass(frozen=True)
class Unsent:
    """Nothing was placed and it may work later (stopping, broker busy): the entry stays pending."""

    why: str


@dataclass(frozen=True)
class Lost:
    """Another worker reclaimed the entry before this one sent anything: it is that worker's now."""


Sent = Placed | Rejected | Unsent | Lost | Skip


# ------------------------------------------------------------------ follow


@dataclass(frozen=True)
class Final:
    """The order in a final state."""

    order: Order
    final_at: float
    canceled_by_us: bool = False
    stopping: bool = False  # canceled because the worker was stopping


@dataclass(frozen=True)
class Unfinished:
    """The order is still open when following had to end: the entry stays pending."""

    why: str
