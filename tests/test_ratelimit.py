"""The fleet-wide token bucket, against the real Redis. Time is injected (a fake clock whose sleep
advances it), so the assertions are about counts and wait values, never wall time."""
from __future__ import annotations

import threading

import pytest
import redis

from bot.config import Settings
from bot.keys import Keys
from bot.ratelimit import MAX_PAUSE, STOPPING_MAX_WAIT, RateLimiter, RateLimitStopped, RateLimitTimeout

KEYS = Keys("t")
EPS = 1e-3


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiter(r, clock: FakeClock, per_minute: int = 60, burst: int = 5) -> RateLimiter:
    return RateLimiter(r, KEYS, {"trading": per_minute}, {"trading": burst}, sleep=clock.sleep, now=clock.now)


def test_grants_the_burst_then_spaces_tokens_at_the_rate(r, clock):
    lim = limiter(r, clock, per_minute=60, burst=5)  # one token a second
    assert [lim.try_acquire("trading") for _ in range(5)] == [0.0] * 5
    assert lim.try_acquire("trading") == pytest.approx(1.0, abs=EPS)
    clock.t += 0.25
    assert lim.try_acquire("trading") == pytest.approx(0.75, abs=EPS)
    clock.t += 0.75
    assert lim.try_acquire("trading") == 0.0
    for _ in range(3):
        lim.acquire("trading")
    assert clock.slept == pytest.approx([1.0, 1.0, 1.0], abs=EPS)


def test_a_simulated_minute_grants_burst_plus_rate(r, clock):
    lim = limiter(r, clock, per_minute=120, burst=10)
    start = clock.t
    granted = 0
    while clock.t - start < 60.0 - EPS:
        lim.acquire("trading")
        granted += 1
    # 10 at once, then 2 a second for the rest of the minute
    assert 10 + 119 <= granted <= 10 + 120


def test_refill_never_exceeds_the_burst(r, clock):
    lim = limiter(r, clock, per_minute=60, burst=3)
    clock.t += 3600
    assert [lim.try_acquire("trading") for _ in range(4)][-1] == pytest.approx(1.0, abs=EPS)


def test_two_limiters_on_two_clients_share_one_bucket(r, redis_url, clock):
    other_client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        a = limiter(r, clock, burst=4)
        b = limiter(other_client, clock, burst=4)
        assert [a.try_acquire("trading") for _ in range(2)] == [0.0, 0.0]
        assert [b.try_acquire("trading") for _ in range(2)] == [0.0, 0.0]
        assert a.try_acquire("trading") > 0
        assert b.try_acquire("trading") > 0
    finally:
        other_client.close()


def test_concurrent_takers_never_get_more_than_the_burst(redis_url, r, clock):
    # the clock stands still: exactly `burst` tokens exist, however many threads race for them
    granted: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            lim = limiter(client, clock, burst=7)
            mine = sum(1 for _ in range(20) if lim.try_acquire("trading") == 0.0)
            with lock:
                granted.append(mine)
        finally:
            client.close()

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert sum(granted) == 7


def test_observe_remaining_zero_pauses_every_process_until_reset(r, redis_url, clock):
    other_client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        a = limiter(r, clock, burst=5)
        b = limiter(other_client, clock, burst=5)
        a.observe("trading", remaining=0, reset=clock.t + 30)  # epoch seconds, as Alpaca sends
        assert b.try_acquire("trading") == pytest.approx(30.0, abs=EPS)
        # an older, shorter answer does not cut the pause short
        b.observe("trading", remaining=0, reset=5)  # small = seconds from now
        assert a.try_acquire("trading") == pytest.approx(30.0, abs=EPS)
        clock.t += 30
        assert b.try_acquire("trading") == 0.0
        b.acquire("trading")
        assert clock.slept == []  # the bucket refilled during the pause
    finally:
        other_client.close()


def test_observe_pause_is_capped_and_defaults_without_reset(r, clock):
    lim = limiter(r, clock)
    lim.observe("trading", remaining=0, reset=clock.t + 86400)
    assert lim.try_acquire("trading") == pytest.approx(MAX_PAUSE, abs=EPS)
    r.flushdb()
    lim.observe("trading", remaining=0, reset=None)
    assert 0 < lim.try_acquire("trading") <= MAX_PAUSE


def test_observe_lowers_tokens_to_the_brokers_remaining(r, clock):
    lim = limiter(r, clock, burst=5)
    lim.observe("trading", remaining=2, reset=clock.t + 60)
    assert [lim.try_acquire("trading") for _ in range(3)][:2] == [0.0, 0.0]
    assert lim.try_acquire("trading") > 0
    lim.observe("trading", remaining=None, reset=None)  # no headers: nothing changes
    lim.observe("other", remaining=0, reset=clock.t + 60)  # unknown bucket: ignored
    assert r.exists(KEYS.ratelimit("other")) == 0


def test_acquire_times_out_without_sleeping_in_vain(r, clock):
    lim = limiter(r, clock, per_minute=6, burst=1)  # a token every 10 s
    lim.acquire("trading")
    with pytest.raises(RateLimitTimeout, match="trading") as caught:
        lim.acquire("trading", timeout=1.0)
    assert caught.value.wait == pytest.approx(10.0, abs=EPS)
    assert clock.slept == []


def test_a_stop_request_ends_a_fleet_pause_wait(r, clock):
    stop = threading.Event()
    lim = RateLimiter(r, KEYS, {"trading": 60}, {"trading": 5}, now=clock.now, stop=stop)  # real sleep: stop.wait
    lim.observe("trading", remaining=0, reset=clock.t + 100)  # the broker says: budget spent for 100 s
    outcome: list[BaseException | None] = []

    def take() -> None:
        try:
            lim.acquire("trading")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=take, daemon=True)
    waiter.start()
    try:
        stop.set()
        waiter.join(timeout=10)
        assert not waiter.is_alive(), "acquire kept waiting for the pause after the stop request"
    finally:
        stop.set()
        waiter.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], RateLimitStopped)
    assert isinstance(outcome[0], RateLimitTimeout)  # callers that catch timeouts handle it too


def test_while_stopping_long_waits_raise_at_once_and_short_ones_are_served(r, clock):
    stop = threading.Event()
    stop.set()
    lim = RateLimiter(r, KEYS, {"trading": 60}, {"trading": 1}, sleep=clock.sleep, now=clock.now, stop=stop)
    lim.acquire("trading")  # a token that is there is granted: the order in hand can still be followed
    lim.acquire("trading")  # the next comes in 1 s (<= STOPPING_MAX_WAIT): still waited for
    assert clock.slept == pytest.approx([1.0], abs=EPS) and STOPPING_MAX_WAIT >= 1.0
    lim.observe("trading", remaining=0, reset=clock.t + 60)
    with pytest.raises(RateLimitStopped, match="stopping"):
        lim.acquire("trading")
    assert clock.slept == pytest.approx([1.0], abs=EPS)  # no sleep begun for the pause


def test_unknown_bucket_is_unlimited(r, clock):
    lim = limiter(r, clock, burst=1)
    assert all(lim.try_acquire("data") == 0.0 for _ in range(50))
    lim.acquire("data", timeout=0)
    assert r.keys("*") == []


def test_server_clock_is_used_when_no_clock_is_injected(r):
    slept: list[float] = []
    # a token every 10 s: the third try finds the bucket empty even when this process is not
    # scheduled for a few seconds between the calls (at one a second, a 1 s stall refilled it)
    lim = RateLimiter(r, KEYS, {"data": 6}, {"data": 2}, sleep=slept.append)
    assert lim.try_acquire("data") == 0.0
    assert lim.try_acquire("data") == 0.0
    wait = lim.try_acquire("data")
    assert 0 < wait <= 10.0
    # an idle bucket expires once it would be full again (2 tokens: 20 s, plus a second)
    assert 0 < r.pttl(KEYS.ratelimit("data")) <= 21000


def test_from_settings_and_validation(r):
    lim = RateLimiter.from_settings(r, Settings(rate_limit_per_minute=150))
    assert lim.per_minute == {"trading": 150, "data": 200}
    assert lim.burst == {"trading": 10, "data": 10}
    assert RateLimiter(r, KEYS, {"trading": 3}).burst == {"trading": 3}
    with pytest.raises(ValueError, match="per minute"):
        RateLimiter(r, KEYS, {"trading": 0})
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(r, KEYS, {"trading": 10}, {"trading": 0})
    with pytest.raises(ValueError, match="without a rate"):
        RateLimiter(r, KEYS, {"trading": 10}, {"data": 5})


def test_from_settings_takes_the_data_budget_of_the_plan(r):
    # Alpaca's market-data budget depends on the plan: 200/min free, 10,000/min Algo Trader Plus
    plus = RateLimiter.from_settings(r, Settings.from_env({"TRADEBOT_DATA_RATE_LIMIT": "10000"}))
    assert plus.per_minute == {"trading": 200, "data": 10000}
    assert RateLimiter.from_settings(r, Settings.from_env({})).per_minute["data"] == 200


def test_observe_with_more_remaining_than_the_burst_costs_no_redis_write(r, clock):
    lim = limiter(r, clock, per_minute=60, burst=5)
    lim.observe("trading", remaining=150, reset=None)  # the usual answer: nothing to lower or pause
    assert not r.exists(KEYS.ratelimit("trading"))
    assert [lim.try_acquire("trading") for _ in range(2)] == [0.0, 0.0]  # 3 of the burst left
    lim.observe("trading", remaining=1, reset=None)  # no more than the burst: still applied
    assert lim.try_acquire("trading") == 0.0 and lim.try_acquire("trading") > 0
