"""Follow: poll the order to a final state; cancel it past its order timeout or the stop grace."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from bot.alpaca.models import Order
from bot.worker.config import WorkerConfig
from bot.worker.policy import CANCEL, FOLLOW, Action, rule_for
from bot.worker.records import Final, Unfinished
from bot.worker.stopping import StopGrace

log = logging.getLogger(__name__)


class Follower:
    def __init__(self, *, client: Any, grace: StopGrace, config: WorkerConfig, clock: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self.client, self.grace, self.config, self.clock, self.sleep = client, grace, config, clock, sleep

    def follow(self, order: Order) -> Final | Unfinished:
        """``order`` polled until final, canceled past order_timeout (counted from its creation) or
        by the stop grace minus the cancel timeout; Unfinished when even the cancel did not end it."""
        config = self.config
        age = 0.0
        if order.created_at is not None:
            age = min(max(0.0, self.clock() - order.created_at.timestamp()), config.order_timeout)
        order_deadline = time.monotonic() + config.order_timeout - age
        deadline, give_up = order_deadline, order_deadline + config.cancel_timeout
        delay = config.follow_initial
        canceled = stop_cancel = False
        while True:
            if order.is_terminal:
                return Final(order, self.clock(), canceled, stop_cancel)
            now = time.monotonic()
            left = self.grace.left()
            if left is not None:  # stopping: cancel and give up within the stop grace
                deadline = min(deadline, now + left - config.cancel_timeout)
                give_up = min(give_up, now + left)
            if now >= give_up:
                if not canceled and left is not None:
                    self._cancel(order, "the worker is stopping")  # best effort; the replay reads it back
                log.error("worker %s: order %s (%s) still %s at the end of the %s; leaving it pending",
                          config.consumer, order.id, order.client_order_id, order.status,
                          "stop grace" if left is not None else f"{config.cancel_timeout:g}s cancel timeout")
                return Unfinished(f"order {order.id} ({order.client_order_id}) did not reach a final state")
            if not canceled and now >= deadline:
                stop_cancel = now < order_deadline  # the stop grace, not the order timeout, ends it
                canceled = self._cancel(order, "the worker is stopping" if stop_cancel else "")
                if canceled:
                    delay = config.follow_initial  # read it back promptly: a cancel is quick
            # never sleep past the next decision point (the cancel, or giving up)
            target = deadline if now < deadline else give_up
            self.sleep(max(0.001, min(delay, target - now)))
            delay = min(delay * 2, config.follow_max)
            try:
                order = self.client.get_order(order.id)
            except Exception as exc:
                if rule_for(exc, FOLLOW).action is not Action.RETRY:
                    raise
                log.warning("worker %s: reading order %s failed: %s", config.consumer, order.id, exc)

    def _cancel(self, order: Order, why: str = "") -> bool:
        log.info("worker %s: order %s (%s) %s (%s): canceling", self.config.consumer, order.id, order.client_order_id,
                 why or f"not final after {self.config.order_timeout:g}s", order.status)
        try:
            self.client.cancel_order(order.id)
        except Exception as exc:
            if rule_for(exc, CANCEL).action is not Action.RETRY:
                raise
            log.warning("worker %s: cancel of order %s failed (retrying): %s", self.config.consumer, order.id, exc)
            return False
        return True
