"""Controls: the operator's cancel-all for one ticker, run by a worker like any signal (journaled
once, in any trading state). Flatten is a sell the decide stage sizes to every share available."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from bot.alpaca.errors import AlpacaError, NotFound
from bot.worker.records import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Canceled:
    """What a cancel-all did: the open orders it asked the broker to cancel, and those it could not."""

    ticker: str
    canceled: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        text = f"cancel-all: {len(self.canceled)} open {self.ticker} order(s) canceled"
        if self.canceled:
            text += f" ({', '.join(self.canceled[:10])}{', ...' if len(self.canceled) > 10 else ''})"
        if self.failed:
            text += "; not canceled: " + ", ".join(f"{oid} ({why})" for oid, why in list(self.failed.items())[:5])
        return text


class Controls:
    def __init__(self, *, client: Any, consumer: str) -> None:
        self.client, self.consumer = client, consumer

    def cancel_all(self, job: Job) -> Canceled:
        """Cancel every open order of the ticker at the broker (ours and others'). A failed listing
        raises (the entry stays pending and is tried again); a cancel the broker refuses because the
        order just finished is no failure. Running it twice is harmless."""
        ticker = job.signal.ticker
        open_orders = self.client.list_orders(status="open", symbols=[ticker])
        result = Canceled(ticker)
        for order in open_orders:
            try:
                self.client.cancel_order(order.id)
                result.canceled.append(order.id)
            except NotFound:
                continue  # gone meanwhile
            except AlpacaError as exc:
                result.failed[order.id] = str(exc)[:200]
        log.warning("worker %s: %s", self.consumer, result.reason)
        return result
