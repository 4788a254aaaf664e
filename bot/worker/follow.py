"""Follow: the order to a final state, by its broker events when the listener is live (no REST
request at all), by polling otherwise; cancel it past its order timeout or the stop grace."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from bot.alpaca.models import Order
from bot.order_events import OrderEvents, fresher
from bot.worker.config import WorkerConfig
from bot.worker.policy import CANCEL, FOLLOW, Action, rule_for
from bot.worker.records import Final, Unfinished
from bot.worker.stopping import StopGrace

log = logging.getLogger(__name__)

EVENT_SLICE = 1.0  # longest single wait on an order's doorbell: the stop grace and listener health are re-read
HEALTH_EVERY = 1.0  # seconds between looks at the listener's health while following one order


class Follower:
    def __init__(self, *, client: Any, grace: StopGrace, config: WorkerConfig, clock: Callable[[], float],
                 sleep: Callable[[float], None], events: OrderEvents | None = None) -> None:
        self.client, self.grace, self.config, self.clock, self.sleep = client, grace, config, clock, sleep
        self.events = events if config.follow_events else None
        self.requests = 0  # order reads this follower sent (the REST fallback), for benchmarks
        self._live: bool | None = None  # the listener's health as last read (None: not read yet)
        self._health_at = -HEALTH_EVERY

    def follow(self, order: Order) -> Final | Unfinished:
        """``order`` followed until final, canceled past order_timeout (counted from its creation) or
        by the stop grace minus the cancel timeout; Unfinished when even the cancel did not end it."""
        config = self.config
        age = 0.0
        if order.created_at is not None:
            age = min(max(0.0, self.clock() - order.created_at.timestamp()), config.order_timeout)
        order_deadline = time.monotonic() + config.order_timeout - age
        deadline, give_up = order_deadline, order_deadline + config.cancel_timeout
        watch = _Watch(self, order.client_order_id)
        canceled = stop_cancel = False
        while True:
            order = order if order.is_terminal else watch.seen(order)  # a final answer needs no second view
            if order.status == "replaced" and order.raw.get("replaced_by"):
                order = self._replacement(order)  # the order lives on under another id: follow that
                watch = _Watch(self, order.client_order_id)
                continue
            if order.done_for_today:  # final, or done for the day (no cancel loop on a 422)
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
                    watch.canceled()
            # never wait past the next decision point (the cancel, or giving up)
            order = watch.next(order, (deadline if now < deadline else give_up) - now)

    def read(self, order: Order) -> Order:
        """The order over REST (the fallback); on a failure the error policy may keep the old view."""
        self.requests += 1
        try:
            return self.client.get_order(order.id)
        except Exception as exc:
            if rule_for(exc, FOLLOW).action is not Action.RETRY:
                raise
            log.warning("worker %s: reading order %s failed: %s", self.config.consumer, order.id, exc)
            return order

    def _replacement(self, order: Order) -> Order:
        """The order that replaced ``order`` (replaced at the broker, e.g. by hand in the dashboard)."""
        replaced_by = str(order.raw.get("replaced_by"))
        log.info("worker %s: order %s (%s) was replaced by %s: following the replacement", self.config.consumer,
                 order.id, order.client_order_id, replaced_by)
        self.requests += 1
        return self.client.get_order(replaced_by)

    def listener_live(self) -> bool:
        """Whether the order-updates listener is live (read at most every HEALTH_EVERY seconds)."""
        if self.events is None:
            return False
        now = time.monotonic()
        if now - self._health_at >= HEALTH_EVERY:
            health = self.events.listener_health()
            if health.live != self._live:
                log.info("worker %s: following orders by %s (%s)", self.config.consumer,
                         "their events" if health.live else "polling", health.why)
            self._live, self._health_at = health.live, now
        return bool(self._live)

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


class _Watch:
    """Where the next view of one order comes from: its events while the listener is live (a REST
    read only when no event came for ``event_late`` seconds, doubling), polling with backoff while
    it is not."""

    def __init__(self, follower: Follower, client_order_id: str) -> None:
        self.f, self.coid = follower, client_order_id
        config = follower.config
        self.poll_delay = config.follow_initial
        self.late_after = config.event_late
        self.quiet_since = time.monotonic()

    def seen(self, order: Order) -> Order:
        """``order`` or what the events know beyond it (a state is never wrong, only maybe behind)."""
        events = self.f.events
        if events is None:
            return order
        newer = fresher(order, events.state(self.coid))
        if newer is not order:
            self.quiet_since = time.monotonic()
        return newer

    def canceled(self) -> None:
        self.poll_delay = self.f.config.follow_initial  # read it back promptly: a cancel is quick
        self.quiet_since = time.monotonic()

    def next(self, order: Order, until_decision: float) -> Order:
        """Wait for the order to move (at most ``until_decision`` seconds); the view after it."""
        events = self.f.events
        if events is not None and self.f.listener_live():
            late_in = self.quiet_since + self.late_after - time.monotonic()
            if late_in > 0:
                events.wait(self.coid, max(0.001, min(EVENT_SLICE, late_in, until_decision)))
                return order  # seen() reads the state the doorbell announced
            log.info("worker %s: no event for order %s in %.1fs: reading it over REST", self.f.config.consumer,
                     self.coid, self.late_after)
            self.late_after = min(self.late_after * 2, 4 * self.f.config.event_late)
            self.quiet_since = time.monotonic()
            return self.f.read(order)
        self.f.sleep(max(0.001, min(self.poll_delay, until_decision)))
        self.poll_delay = min(self.poll_delay * 2, self.f.config.follow_max)
        return self.f.read(order)
