"""`tradebot notify`: alerts through apprise (Telegram, Discord, Slack, email, a JSON webhook...),
never on the order path: a process of its own that reads what the fleet wrote to Redis.

Each round reads what is new since its cursors (kept in ``tradebot:notify``, so a restart neither
repeats nor floods): journal entries (fills, partial fills, rejections), dead letters; and compares
states with the last round: the kill switch, stale heartbeats, the listener, position drift,
unresolved orders. Alerts are de-duplicated (the same text within ``dedupe`` seconds is sent once)
and rate-limited (at most ``per_minute``; the rest are counted in one summary). Every text is
scrubbed of secrets and URL passwords before it leaves.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from bot.codec import display_fields, text
from bot.heartbeat import read_heartbeats
from bot.journal import JournalEntry
from bot.keys import Keys
from bot.logs import redact_url, scrub, secrets_from_env
from bot.order_events import OrderEvents
from bot.trading import HALTED, REDUCE_ONLY, TradingState, read_state

log = logging.getLogger(__name__)

PAGE = 200


@dataclass(frozen=True)
class Alert:
    title: str
    body: str
    level: str = "info"  # info | warning | failure (apprise's notify types)


@dataclass
class NotifyConfig:
    every: float = 2.0
    per_minute: int = 20
    dedupe: float = 300.0
    secrets: tuple[str, ...] = ()


@dataclass
class _State:
    trading: TradingState | None = None  # None: not read yet (no alert for the state found at start)
    stale: set[str] = field(default_factory=set)
    listener_live: bool | None = None
    drift: str = ""
    unresolved: int = 0
    process_states: dict[str, str] = field(default_factory=dict)


class Notifier:
    def __init__(self, r: redis.Redis, keys: Keys, send: Callable[[Alert], bool],
                 config: NotifyConfig | None = None, now: Callable[[], float] = time.time,
                 processes: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.r, self.keys, self.send, self.now = r, keys, send, now
        self.processes = processes  # supervisord's view of the fleet's programs (None: not under supervisord)
        self.config = config or NotifyConfig()
        self._secrets = [s for s in (*self.config.secrets, *secrets_from_env()) if s and len(s) >= 4]
        self._state = _State()
        self._sent_at: deque[float] = deque()
        self._recent: dict[str, float] = {}
        self._held = 0  # alerts over the rate limit since the last summary
        self.sent = 0

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        log.info("notifier: every %.1fs, at most %d alerts a minute", self.config.every, self.config.per_minute)
        while not stop.is_set():
            try:
                self.round()
            except redis.RedisError as exc:
                log.warning("notifier: Redis error: %s", exc)
            stop.wait(self.config.every)

    def round(self) -> list[Alert]:
        alerts = [*self._journal(), *self._dead_letters(), *self._states(), *self._supervised()]
        return [alert for alert in alerts if self._deliver(alert)]

    # ------------------------------------------------------------------ sources

    def _journal(self) -> Iterable[Alert]:
        for _id, fields in self._new(self.keys.orders, "journal_at"):
            entry = JournalEntry.from_fields(fields)
            what = f"{entry.side} {entry.ticker}"
            adopted = " (adopted)" if entry.adopted else ""
            if entry.outcome in ("filled", "partially_filled"):
                yield Alert(f"tradebot: {entry.outcome.replace('_', ' ')} {what}{adopted}",
                            f"{what}: {entry.filled_qty} @ {entry.filled_avg_price} (order {entry.order_id})"
                            + (f"; {entry.reason}" if entry.reason else ""))
            elif entry.outcome == "rejected":
                yield Alert(f"tradebot: rejected {what}", f"{what}: {entry.reason}", "warning")

    def _dead_letters(self) -> Iterable[Alert]:
        for _id, fields in self._new(self.keys.dlq, "dlq_at"):
            text = display_fields(fields)
            yield Alert("tradebot: dead letter", f"{text.get('source_stream', '?')} {text.get('source_id', '?')}: "
                        f"{text.get('reason', '')}", "warning")

    def _states(self) -> Iterable[Alert]:
        state, now = self._state, self.now()
        trading = read_state(self.r, self.keys)
        if state.trading is not None and trading != state.trading:
            if trading.state == HALTED:
                yield Alert("tradebot: HALTED", f"no orders: {trading.reason}", "warning")
            elif trading.state == REDUCE_ONLY:
                yield Alert("tradebot: REDUCE-ONLY", f"sells and exits only: {trading.reason}", "warning")
            else:
                yield Alert("tradebot: resumed", f"trading active again (was {state.trading.describe()})")
        state.trading = trading
        stale = {beat.process: beat for beat in read_heartbeats(self.r, self.keys, now) if beat.stale}
        for process in sorted(set(stale) - state.stale):
            beat = stale[process]
            yield Alert(f"tradebot: {process} is not beating",
                        f"last heartbeat {beat.age:.0f}s ago" + (f"; last error: {beat.last_error}"
                                                                  if beat.last_error else ""), "failure")
        for process in sorted(state.stale - set(stale)):
            yield Alert(f"tradebot: {process} is back (or stopped)", "its heartbeat is fresh again or gone")
        state.stale = set(stale)
        health = OrderEvents(self.r, self.keys, now=lambda: now).listener_health()
        if state.listener_live is not None and health.live != state.listener_live:
            yield (Alert("tradebot: order events live again", health.why) if health.live
                   else Alert("tradebot: order events lost", f"{health.why}; workers poll REST", "warning"))
        state.listener_live = health.live
        drift = text(self.r.hget(self.keys.reconcile, "drift") or "")
        if drift != state.drift and drift not in ("", "[]"):
            rows = json.loads(drift)
            yield Alert("tradebot: POSITION DRIFT", "; ".join(f"{row['symbol']}: broker {row['broker']}, the books "
                                                              f"{row['expected']}" for row in rows), "failure")
        state.drift = drift
        unresolved = int(self.r.hlen(self.keys.unresolved))
        if unresolved > state.unresolved:
            yield Alert("tradebot: order outcome unknown", f"{unresolved} order(s) whose POST had an unknown "
                        "outcome; the workers wait for the broker to show them", "warning")
        state.unresolved = unresolved

    def _supervised(self) -> Iterable[Alert]:
        """A program that supervisord reports FATAL, BACKOFF or EXITED (a crash loop, given up)."""
        if self.processes is None:
            return
        try:
            infos = self.processes()
        except OSError:
            return  # supervisord is going away with the fleet
        states = {str(i.get("name")): str(i.get("statename")) for i in infos}
        for name, state in sorted(states.items()):
            before = self._state.process_states.get(name)
            if state in ("FATAL", "BACKOFF", "EXITED") and state != before:
                yield Alert(f"tradebot: {name} is {state}", f"supervisord reports {name} {state}; "
                            f"see `tradebot logs {name}`", "failure")
            elif before in ("FATAL", "BACKOFF", "EXITED") and state == "RUNNING":
                yield Alert(f"tradebot: {name} is running again", f"{name} was {before}")
        self._state.process_states = states

    def _new(self, stream: str, cursor: str) -> list[tuple[Any, Any]]:
        """Entries of ``stream`` after the stored cursor; the first round starts at the newest entry."""
        at = self.r.hget(self.keys.notify, cursor)
        if at is None:
            newest = self.r.xrevrange(stream, count=1)
            self.r.hset(self.keys.notify, cursor, text(newest[0][0]) if newest else "0-0")
            return []
        rows = self.r.xrange(stream, min=f"({text(at)}", count=PAGE) or []
        if rows:
            self.r.hset(self.keys.notify, cursor, text(rows[-1][0]))
        return [(entry_id, fields or {}) for entry_id, fields in rows]

    # ------------------------------------------------------------------ delivery

    def _deliver(self, alert: Alert) -> bool:
        alert = Alert(self._scrub(alert.title), self._scrub(alert.body), alert.level)
        now = self.now()
        key = f"{alert.title}\n{alert.body}"
        self._recent = {k: t for k, t in self._recent.items() if now - t < self.config.dedupe}
        if key in self._recent:
            return False
        self._recent[key] = now
        while self._sent_at and now - self._sent_at[0] >= 60:
            self._sent_at.popleft()
        if len(self._sent_at) >= self.config.per_minute:
            self._held += 1
            return False
        if self._held:
            summary = Alert("tradebot: alerts held back", f"{self._held} alert(s) over the limit of "
                            f"{self.config.per_minute} a minute were not sent; see `tradebot status`", "warning")
            self._held = 0
            self._post(summary, now)
        return self._post(alert, now)

    def _post(self, alert: Alert, now: float) -> bool:
        self._sent_at.append(now)
        try:
            ok = self.send(alert)
        except Exception as exc:
            log.warning("notifier: sending %r failed: %s", alert.title, self._scrub(str(exc)))
            return False
        self.sent += int(ok)
        return ok

    def _scrub(self, text: str) -> str:
        return scrub(text, self._secrets)


def apprise_sender(urls: Iterable[str]) -> Callable[[Alert], bool]:
    import apprise

    hub = apprise.Apprise()
    for url in urls:
        if not hub.add(url):
            raise ValueError(f"not an apprise URL: {redact_url(url)}")
    kinds = {"info": apprise.NotifyType.INFO, "warning": apprise.NotifyType.WARNING,
             "failure": apprise.NotifyType.FAILURE}

    def send(alert: Alert) -> bool:
        kind = kinds.get(alert.level, apprise.NotifyType.INFO)
        return bool(hub.notify(title=alert.title, body=alert.body, notify_type=kind))

    return send

