"""Heartbeats in a real Redis: beat, loop progress, last error (secrets scrubbed), expiry, and a
real process's heartbeat appearing and going away."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import redis

from bot.heartbeat import Heartbeat, read_heartbeats
from bot.keys import Keys
from bot.ops.render import _heartbeat_lines
from bot.ops.report import StatusReport
from bot.paper.testing import PaperBrokerServer
from waiting import wait_for

KEYS = Keys("tbh")
SECRET = "s3cr3t-value-that-must-not-leak"


def test_a_heartbeat_carries_progress_and_the_last_error_without_secrets(r: redis.Redis) -> None:
    with Heartbeat(r, KEYS, "worker-00@host", every=0.05, secrets=[SECRET]) as heartbeat:
        heartbeat.progress()
        logging.getLogger("bot.worker").warning("broker refused key %s", SECRET)
        wait_for(lambda: r.hget(KEYS.heartbeat("worker-00@host"), "last_error"), what="the error beaten")
        (beat,) = read_heartbeats(r, KEYS)
        assert beat.process == "worker-00@host" and not beat.stale and beat.pid == str(os.getpid())
        assert "broker refused key ***" in beat.last_error and SECRET not in beat.last_error
        assert beat.progress_age is not None and beat.progress_age < 30
        assert 0 < r.pttl(KEYS.heartbeat("worker-00@host")) <= 30_000  # a dead process's beat expires
    assert read_heartbeats(r, KEYS) == []  # stopped on purpose: gone, not stale


def test_an_old_beat_is_stale_and_status_says_so(r: redis.Redis) -> None:
    Heartbeat(r, KEYS, "poller@host").beat()
    (beat,) = read_heartbeats(r, KEYS, now=time.time() + 60)
    assert beat.stale and beat.age >= 59
    report = StatusReport(generated_at=time.time(), settings={}, fleet={}, redis={"ok": True})
    report.heartbeats = [{**beat.__dict__, "stale": True}]
    assert "STALE" in "\n".join(_heartbeat_lines(report))


def test_a_running_process_beats_and_its_beat_goes_when_it_stops(r: redis.Redis, redis_url: str) -> None:
    with PaperBrokerServer(always_open=True, seed=2) as broker:
        env = {**os.environ, "REDIS_URL": redis_url, "TRADEBOT_PREFIX": KEYS.prefix,
               "ALPACA_API_KEY": broker.api_key, "ALPACA_SECRET_KEY": broker.secret_key,
               "ALPACA_BASE_URL": broker.base_url}
        process = subprocess.Popen([sys.executable, "-m", "bot.cli", "listener", "--name", "listener@test"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: [b.process for b in read_heartbeats(r, KEYS)] == ["listener@test"], 60,
                     "the listener's heartbeat")
            process.terminate()
            assert process.wait(30) == 0
            assert read_heartbeats(r, KEYS) == []
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
