"""The order worker: ``tradebot:signals`` -> one order at the broker -> one journal entry.

A package of stages with one job each: ``intake`` (read, reclaim, own replay) -> ``triage`` (parse,
done marker, over-delivered, redelivery lookup) -> ``decide`` (gates, price, sizing, reservation)
-> ``submit`` (re-check, ownership, bounded attempts) -> ``follow`` (to a final state) ->
``record`` (settle or release, journal + XACK, DLQ). ``Worker.process`` in ``pipeline`` runs them
for one signal; ``policy`` is the error table. The design, the crash windows and the round trips
are in docs/architecture.md.
"""
from bot.signals import client_order_id
from bot.worker.config import CLIENT_KNOBS, SUBMIT_DEADLINE, WorkerConfig
from bot.worker.limiter import BoundedLimiter
from bot.worker.pipeline import STAGES, Worker
from bot.worker.record import outcome_of
from bot.worker.records import DEAD, DUPLICATE, JOURNALED, LOST, PENDING, Delivery

__all__ = [
    "CLIENT_KNOBS",
    "DEAD",
    "DUPLICATE",
    "JOURNALED",
    "LOST",
    "PENDING",
    "STAGES",
    "SUBMIT_DEADLINE",
    "BoundedLimiter",
    "Delivery",
    "Worker",
    "WorkerConfig",
    "client_order_id",
    "outcome_of",
]
