"""Alerts end to end: the notifier reads a real Redis and sends through apprise to a local HTTP
receiver (apprise's json:// webhook); de-duplication, the rate limit, no secrets, cursors."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import redis

from bot.trading import HALTED, REDUCE_ONLY, set_state
from bot.heartbeat import Heartbeat
from bot.journal import JournalEntry, record_outcome
from bot.keys import Keys
from bot.notify import Alert, Notifier, NotifyConfig, apprise_sender
from bot.streams import dead_letter
from waiting import wait_for

KEYS = Keys("tbn")
SECRET = "PKSECRET-very-secret-key"


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    built = Receiver()
    built.thread.start()
    try:
        yield built
    finally:
        built.server.shutdown()
        built.server.server_close()


def journal(r: redis.Redis, n: int, outcome: str, reason: str = "") -> None:
    if not r.exists(KEYS.signals):
        r.xgroup_create(KEYS.signals, KEYS.workers_group, id="0", mkstream=True)
    filled = outcome == "filled"
    entry = JournalEntry(source_stream="nvda", source_id=f"{1000 + n}-0", ticker="NVDA", side="buy", outcome=outcome,
                         reason=reason, order_id=f"o{n}", filled_qty=Decimal(2) if filled else Decimal(0),
                         filled_avg_price=Decimal("100.5") if filled else None)
    assert record_outcome(r, KEYS, entry, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id=f"0-{n}")


def test_fills_rejections_dead_letters_and_halts_reach_the_webhook(r: redis.Redis, receiver: Receiver) -> None:
    notifier = Notifier(r, KEYS, apprise_sender([receiver.url]), NotifyConfig(secrets=(SECRET,)))
    journal(r, 1, "filled")  # before the notifier's first round: history, not news
    assert notifier.round() == []
    journal(r, 2, "filled")
    journal(r, 3, "rejected", reason=f"insufficient buying power for key {SECRET}")
    dead_letter(r, KEYS, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id="0-9", source_stream="nvda",
                source_id="2000-0", reason="unusable signal: ticker missing", deliveries=1, raw_fields={"x": "1"})
    r.set(KEYS.halt, "news")
    sent = notifier.round()
    assert [a.title for a in sent] == ["tradebot: filled buy NVDA", "tradebot: rejected buy NVDA",
                                       "tradebot: dead letter", "tradebot: HALTED"]
    wait_for(lambda: len(receiver.posts) == 4, 30, "four webhook posts")
    assert receiver.posts[0]["title"] == "tradebot: filled buy NVDA" and "2 @ 100.5" in receiver.posts[0]["message"]
    assert SECRET not in json.dumps(receiver.posts) and "***" in receiver.posts[1]["message"]
    r.delete(KEYS.halt)
    assert [a.title for a in notifier.round()] == ["tradebot: resumed"]
    assert notifier.round() == []  # nothing new
    set_state(r, KEYS, REDUCE_ONLY, "daily loss limit")
    [alert] = notifier.round()
    assert alert.title == "tradebot: REDUCE-ONLY" and "daily loss limit" in alert.body
    set_state(r, KEYS, HALTED, "drawdown")
    assert [a.title for a in notifier.round()] == ["tradebot: HALTED"]


def test_a_restarted_notifier_neither_repeats_nor_floods(r: redis.Redis) -> None:
    sent: list[Alert] = []
    first = Notifier(r, KEYS, lambda a: sent.append(a) or True)
    first.round()
    journal(r, 1, "filled")
    first.round()
    again = Notifier(r, KEYS, lambda a: sent.append(a) or True)  # the cursor is in Redis
    again.round()
    assert [a.title for a in sent] == ["tradebot: filled buy NVDA"]


def test_alerts_are_deduplicated_and_rate_limited(r: redis.Redis) -> None:
    sent: list[Alert] = []
    notifier = Notifier(r, KEYS, lambda a: sent.append(a) or True, NotifyConfig(per_minute=3))
    notifier.round()
    for n in range(1, 8):
        journal(r, n, "rejected", reason="market closed")
    notifier.round()
    assert len(sent) == 1  # seven rejections with the same text: one alert
    for n in range(8, 16):
        journal(r, n, "rejected", reason=f"reason {n}")
    notifier.round()
    assert len(sent) == 3  # the limit: 3 a minute


def test_a_process_that_stops_beating_is_reported(r: redis.Redis) -> None:
    clock = [time.time()]
    sent: list[Alert] = []
    notifier = Notifier(r, KEYS, lambda a: sent.append(a) or True, now=lambda: clock[0])
    Heartbeat(r, KEYS, "worker-01@host").beat()
    notifier.round()
    clock[0] += 20  # no beat for 20 s
    notifier.round()
    assert [a.title for a in sent] == ["tradebot: worker-01@host is not beating"]


def test_a_program_supervisord_reports_fatal_is_alerted(r: redis.Redis) -> None:
    states = [{"name": "worker-00", "statename": "RUNNING"}]
    sent: list[Alert] = []
    notifier = Notifier(r, KEYS, lambda a: sent.append(a) or True, processes=lambda: states)
    notifier.round()
    states[0] = {"name": "worker-00", "statename": "FATAL"}
    notifier.round()
    states[0] = {"name": "worker-00", "statename": "RUNNING"}
    notifier.round()
    assert [a.title for a in sent] == ["tradebot: worker-00 is FATAL", "tradebot: worker-00 is running again"]
