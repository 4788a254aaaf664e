"""Submit: the order leaves only on fresh checks, while this worker still owns its entry, and a
submit that placed nothing is tried again a bounded number of times."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bot.alpaca.errors import OrderOutcomeUnknown
from bot.alpaca.models import OrderRequest
from bot.breakers import Breakers
from bot.keys import Keys
from bot.market import MarketCache
from bot.order_events import OrderEvents
from bot.ratelimit import TRADING, RateLimiter
from bot.worker.config import WorkerConfig
from bot.worker.decide import Gates, Refused
from bot.worker.keeper import EntryKeeper
from bot.worker.limiter import BoundedLimiter
from bot.worker.policy import SUBMIT, Action, rule_for
from bot.worker.records import Job, Lost, Placed, Rejected, Sent, Unsent
from bot.worker.stopping import StopGrace

log = logging.getLogger(__name__)


class Submitter:
    def __init__(self, *, client: Any, market: MarketCache, keys: Keys, keeper: EntryKeeper, gates: Gates,
                 grace: StopGrace, limiter: Any, config: WorkerConfig, clock: Callable[[], float],
                 events: OrderEvents, breakers: Breakers | None = None) -> None:
        self.client, self.market, self.keys, self.keeper, self.gates = client, market, keys, keeper, gates
        self.grace, self.limiter, self.config, self.clock, self.events = grace, limiter, config, clock, events
        self.breakers = breakers

    def submit(self, job: Job, request: OrderRequest) -> Sent:
        """Send ``request``: Placed, Rejected (refused for good), a Skip (a re-check said no),
        Unsent (stopping) or Lost (another worker took the entry). Raises what the error policy
        leaves pending: the last attempt's failure (an unknown outcome: marked as such first)."""
        attempts = self.config.submit_attempts
        unknown = False
        if self.breakers is not None:
            # one more order this minute; past the limit this trips the trading state, which the
            # re-check below then applies to this very order (an exit still goes)
            self.breakers.count_order(job.coid)
        for attempt in range(1, attempts + 1):
            if self.grace.stopping:  # no new order; the reservation stays with the entry, which is replayed
                return Unsent(f"stopping before order {job.coid} was sent")
            try:
                still_ours, token = self._recheck(job, request)
            except Refused as refused:
                return replace(refused.skip, qty=request.qty)
            if not still_ours:
                log.warning("worker %s: entry %s was reclaimed by another worker before order %s was sent; "
                            "leaving it to that worker (claim-idle too short for this worker's pauses?)",
                            self.config.consumer, job.entry_id, job.coid)
                return Lost()
            submitted_at = self.clock()
            try:
                with self._tight_limiter(token):
                    order = self.client.submit_order(request)
            except Exception as exc:
                if isinstance(exc, OrderOutcomeUnknown):
                    # it may exist, now or once a delayed POST lands: from here on no skip and no
                    # dead letter hides it (the pipeline waits for the broker to show it, or
                    # resolve_after); sending the same client_order_id again is safe (a duplicate
                    # is refused) and is how the broker is made to answer definitively
                    self.events.mark_unknown(job.coid)
                    unknown = True
                rule = rule_for(exc, SUBMIT)
                if rule.action is Action.REJECT:
                    log.warning("worker %s: order %s refused by the broker: %s", self.config.consumer, job.coid, exc)
                    return Rejected(_refusal(exc), request.qty, submitted_at)
                pause = self._retry_pause(exc, attempt) if rule.action is Action.RETRY else None
                if pause is None or attempt == attempts:
                    raise
                log.warning("worker %s: order %s not placed (%s); checking again in %.2fs (attempt %d/%d)",
                            self.config.consumer, job.coid, exc, pause, attempt + 1, attempts)
                self.grace.pause(pause)  # a stop ends the pause: the next round leaves it pending
                continue
            # DEBUG: the journal line (bot.worker.record) says it for every order, once
            log.debug("worker %s: submitted %s %s %s (%s) -> %s %s", self.config.consumer, request.side,
                      request.qty, request.symbol, job.coid, order.id, order.status)
            return Placed(order, submitted_at, request.qty, after_unknown=unknown)
        raise AssertionError("unreachable")  # pragma: no cover

    def _recheck(self, job: Job, request: OrderRequest) -> tuple[bool, bool]:
        """The cheap checks again, right before the submit: time may have passed since the plan
        (a rate-limit wait, a broker retry, a pause between attempts). The same round trip
        re-claims the entry and takes the POST's rate-limit token: (this worker still holds the
        entry, a token was taken). A token taken for a submit the checks then stop is spent unused:
        the checks passed a moment earlier on the snapshot, so that is the rare race, and it saves
        the round trip of every other submit."""
        limiter = self.limiter if isinstance(self.limiter, BoundedLimiter) else None
        queued: list[bool] = []

        def also(pipe: Any) -> None:
            self.keeper.queue_still_holds(pipe, job.entry_id)
            queued.append(limiter is not None and limiter.queue_token(pipe, TRADING))

        # the gates and the price only: the sizing (account, position) is done and reserved
        market = self.market.snapshot(job.signal.ticker, self.gates.state_keys, also=also, account=False)
        session_open = self.gates.session_open(job.signal, market)
        if not request.extended_hours and not session_open:
            raise Refused("market closed while the order was being sent", gate=True)
        self.gates.fresh_price(market)
        token = bool(queued and queued[0]) and RateLimiter.taken(market.more[1])
        return self.keeper.still_holds_after(job.entry_id, market.more[0]), token

    def _tight_limiter(self, token: bool = False) -> Any:
        if isinstance(self.limiter, BoundedLimiter):
            return self.limiter.tight(taken=TRADING if token else None)
        return contextlib.nullcontext()

    def _retry_pause(self, exc: Exception, attempt: int) -> float | None:
        """The pause before the next attempt; None when the broker asks for longer."""
        hint = getattr(exc, "retry_after", None) or getattr(exc, "wait", None) or 0.0
        pause = max(self.config.submit_retry_pause * attempt, float(hint))
        return pause if pause <= self.config.submit_retry_max_pause else None


def _refusal(exc: Exception) -> str:
    """The journal reason of a refused order: the broker's own words, and what kind of refusal."""
    said = getattr(exc, "reason", None)  # bot.alpaca.errors: the broker's words and its reject_reason
    message = said if isinstance(said, str) and said else getattr(exc, "message", "") or str(exc)
    kind = getattr(exc, "kind", None)
    return f"{kind.replace('_', ' ')}: {message}" if isinstance(kind, str) else message
