"""The signal generator: market hours, probability/rate/count on an injected clock, XADD fields."""
from __future__ import annotations

import math
import random
import threading
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import redis
from click.testing import CliRunner
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.cli import cli
from bot.embedded_redis import free_port
from bot.generator import (CLOSED_POLL_SECONDS, DEFAULT_PROBABILITY, GeneratorConfig, SignalGenerator,
                           is_market_open)

NY = ZoneInfo("America/New_York")
UTC = timezone.utc


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)


class FakeClock:
    """Monotonic time that advances only when the generator waits; wall time follows it."""

    def __init__(self, wall_start: datetime = datetime(2024, 3, 4, 15, 0, tzinfo=UTC), stop_after: int | None = None):
        self.t = 500.0
        self.start = self.t
        self.wall_start = wall_start
        self.waits: list[float] = []
        self.stop_after = stop_after
        self.on_wait = lambda: None

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return self.wall_start + timedelta(seconds=self.t - self.start)

    def wait(self, seconds: float) -> bool:
        assert seconds >= 0
        self.waits.append(seconds)
        self.on_wait()
        self.t += seconds
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def make(r: redis.Redis, clock: FakeClock, **config: object) -> SignalGenerator:
    options = {"symbols": ("NVDA", "AAPL"), "stream": "nvda", **config}
    return SignalGenerator(r, GeneratorConfig(**options), monotonic=clock.monotonic, now=clock.now,  # type: ignore[arg-type]
                           wait=clock.wait)


# ----------------------------------------------------------------------------- market hours

@pytest.mark.parametrize("instant, expected", [
    (ny(2024, 3, 4, 9, 29, 59), False),   # Monday, a second before the open
    (ny(2024, 3, 4, 9, 30, 0), True),     # the open
    (ny(2024, 3, 4, 12, 0, 0), True),
    (ny(2024, 3, 4, 15, 59, 59), True),   # last second of the session
    (ny(2024, 3, 4, 16, 0, 0), False),    # the close
    (ny(2024, 3, 8, 10, 0, 0), True),     # Friday
    (ny(2024, 3, 9, 12, 0, 0), False),    # Saturday
    (ny(2024, 3, 10, 12, 0, 0), False),   # Sunday
    (datetime(2024, 3, 8, 14, 30, tzinfo=UTC), True),    # 09:30 EST (UTC-5)
    (datetime(2024, 3, 8, 14, 29, tzinfo=UTC), False),
    (datetime(2024, 3, 11, 13, 30, tzinfo=UTC), True),   # 09:30 EDT (UTC-4), the Monday after the DST switch
    (datetime(2024, 3, 11, 20, 0, tzinfo=UTC), False),   # 16:00 EDT
    (datetime(2024, 3, 9, 2, 0, tzinfo=UTC), False),     # Friday 21:00 New York, Saturday in UTC
])
def test_market_hours_at_fixed_instants(instant: datetime, expected: bool) -> None:
    assert is_market_open(instant) is expected


def test_market_hours_need_an_aware_time() -> None:
    with pytest.raises(ValueError):
        is_market_open(datetime(2024, 3, 4, 12, 0))


# ----------------------------------------------------------------------------- config

def test_defaults_are_the_original_behaviour() -> None:
    config = GeneratorConfig(symbols=("NVDA",), stream="nvda")
    assert config.probability == DEFAULT_PROBABILITY == 0.005
    assert config.rate is None and config.count is None and not config.always_open


@pytest.mark.parametrize("bad", [{"probability": 1.5}, {"probability": -0.1}, {"rate": 0}, {"rate": -2},
                                 {"count": -1}, {"symbols": ()}, {"stream": ""}])
def test_bad_config_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        GeneratorConfig(**{"symbols": ("NVDA",), "stream": "nvda", **bad})


# ----------------------------------------------------------------------------- probability mode

def test_probability_one_sends_a_signal_per_ticker_per_second_and_stops_at_count(r: redis.Redis) -> None:
    clock = FakeClock()
    gen = make(r, clock, probability=1.0, count=5, always_open=True, seed=3)
    assert gen.run() == 5
    entries = r.xrange("nvda")
    assert len(entries) == 5
    for _, fields in entries:
        assert set(fields) == {"ticker", "direction"}
        assert fields["ticker"] in ("NVDA", "AAPL") and fields["direction"] in ("b", "s")
    # every second both tickers fire: NVDA, AAPL, NVDA, AAPL, NVDA (the 6th is cut by --count)
    assert [f["ticker"] for _, f in entries] == ["NVDA", "AAPL", "NVDA", "AAPL", "NVDA"]
    assert clock.waits == [1.0, 1.0]  # ticks on a one-second cadence; no wait after the last


def test_probability_draws_are_reproducible_with_a_seed(r: redis.Redis) -> None:
    ticks = 200
    clock = FakeClock(stop_after=ticks)
    gen = make(r, clock, probability=0.3, always_open=True, seed=42)
    sent = gen.run()
    # replay the same seeded draws: one random() per ticker per tick, a choice per hit
    rng = random.Random(42)
    expected = []
    for _ in range(ticks):
        for symbol in ("NVDA", "AAPL"):
            if rng.random() < 0.3:
                expected.append((symbol, rng.choice(("b", "s"))))
    assert sent == len(expected)
    assert [(f["ticker"], f["direction"]) for _, f in r.xrange("nvda")] == expected
    # 400 Bernoulli(0.3) draws: far inside 6 standard deviations of the mean 120
    assert abs(sent - 120) < 6 * math.sqrt(400 * 0.3 * 0.7)
    assert {d for _, d in expected} == {"b", "s"}


def test_ticks_keep_their_cadence_when_sending_takes_time(r: redis.Redis) -> None:
    clock = FakeClock(stop_after=3)
    gen = make(r, clock, probability=1.0, always_open=True, seed=1)
    real_send = gen.send

    def slow_send(signals: list) -> list:
        clock.t += 0.25  # XADD round trip
        return real_send(signals)

    gen.send = slow_send  # type: ignore[method-assign]
    gen.run()
    assert clock.waits == [0.75, 0.75, 0.75]


def test_nothing_is_sent_while_the_market_is_closed(r: redis.Redis) -> None:
    saturday = datetime(2024, 3, 9, 15, 0, tzinfo=UTC)
    clock = FakeClock(wall_start=saturday, stop_after=4)
    assert make(r, clock, probability=1.0, seed=1).run() == 0
    assert r.xlen("nvda") == 0
    assert clock.waits == [CLOSED_POLL_SECONDS] * 4


def test_always_open_ignores_market_hours(r: redis.Redis) -> None:
    saturday = datetime(2024, 3, 9, 15, 0, tzinfo=UTC)
    clock = FakeClock(wall_start=saturday)
    assert make(r, clock, probability=1.0, count=4, always_open=True, seed=1).run() == 4


def test_signals_stop_at_the_close(r: redis.Redis) -> None:
    # Monday 15:59:58 New York: ticks at :58 and :59 are in the session, 16:00:00 is not
    clock = FakeClock(wall_start=ny(2024, 3, 4, 15, 59, 58).astimezone(UTC), stop_after=4)
    assert make(r, clock, probability=1.0, seed=1).run() == 4  # 2 ticks x 2 tickers
    assert clock.waits == [1.0, 1.0, CLOSED_POLL_SECONDS, CLOSED_POLL_SECONDS]


def test_stop_event_ends_the_loop(r: redis.Redis) -> None:
    stop = threading.Event()
    clock = FakeClock()
    clock.on_wait = lambda: stop.set() if len(clock.waits) == 2 else None
    gen = SignalGenerator(r, GeneratorConfig(symbols=("NVDA",), stream="nvda", probability=1.0, always_open=True),
                          monotonic=clock.monotonic, now=clock.now, stop_event=stop,
                          wait=lambda s: clock.wait(s) or stop.is_set())
    assert gen.run() == 2
    stopped = threading.Event()
    stopped.set()
    assert SignalGenerator(r, GeneratorConfig(symbols=("NVDA",), stream="nvda", always_open=True),
                           stop_event=stopped).run() == 0


# ----------------------------------------------------------------------------- rate mode

def test_rate_sends_a_steady_flow_and_stops_at_count(r: redis.Redis) -> None:
    clock = FakeClock()
    observed: list[tuple[float, int]] = []
    gen = make(r, clock, rate=50.0, count=100, always_open=True, seed=7)
    clock.on_wait = lambda: observed.append((clock.t - clock.start, gen.sent))
    assert gen.run() == 100
    assert r.xlen("nvda") == 100
    # at every pause exactly the signals due by then were sent: 1 at once, then 50 per second
    for elapsed, sent in observed:
        assert sent == math.floor(elapsed * 50 + 1e-9) + 1
    assert clock.t - clock.start == pytest.approx(99 / 50)
    tickers = {f["ticker"] for _, f in r.xrange("nvda")}
    assert tickers == {"NVDA", "AAPL"}


def test_rate_catches_up_in_one_batch_after_a_stall(r: redis.Redis) -> None:
    clock = FakeClock()
    gen = make(r, clock, rate=10.0, count=30, always_open=True, seed=7)
    batches: list[int] = []
    real_send = gen.send

    def recording_send(signals: list) -> list:
        batches.append(len(signals))
        return real_send(signals)

    gen.send = recording_send  # type: ignore[method-assign]
    stalls = iter([0.0, 1.0])  # the second pause lasts a whole second longer than asked

    def stall() -> None:
        clock.t += next(stalls, 0.0)

    clock.on_wait = stall
    assert gen.run() == 30
    # 1 at once, 1 after 0.1 s, then 1.2 s in: the 11 due by then go out together, none dropped
    assert batches[:3] == [1, 1, 11]
    assert sum(batches) == 30 and r.xlen("nvda") == 30


def test_rate_overrides_probability(r: redis.Redis) -> None:
    clock = FakeClock()
    gen = make(r, clock, rate=1000.0, probability=0.0, count=20, always_open=True, seed=1)
    assert gen.run() == 20


def test_an_unreachable_redis_is_retried_not_fatal() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    clock = FakeClock(stop_after=2)
    gen = make(client, clock, rate=10.0, always_open=True)
    assert gen.run() == 0
    assert clock.waits == [1.0, 1.0]


# ----------------------------------------------------------------------------- the command

@pytest.fixture
def env(redis_url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("TRADEBOT_SYMBOLS", "NVDA,AAPL")
    monkeypatch.setenv("TRADEBOT_SOURCE_STREAMS", "alpha,beta")
    return {}


def test_generate_command_writes_to_the_first_source_stream(env: dict, r: redis.Redis) -> None:
    result = CliRunner().invoke(cli, ["generate", "--count", "5", "--rate", "1000", "--always-open", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "sent 5 signals to alpha" in result.output
    assert r.xlen("alpha") == 5 and r.xlen("beta") == 0


def test_generate_command_stream_flag(env: dict, r: redis.Redis) -> None:
    result = CliRunner().invoke(cli, ["generate", "--count", "2", "--rate", "1000", "--always-open", "--stream", "beta"])
    assert result.exit_code == 0, result.output
    assert r.xlen("beta") == 2


@pytest.mark.parametrize("args, message", [
    (["--probability", "2"], "probability"),
    (["--rate", "0"], "rate"),
    (["--count", "-1"], "count"),
    (["--symbols", "NV DA!"], "not a ticker"),
])
def test_generate_command_bad_input(env: dict, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["generate", "--always-open", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_generate_command_unreachable_redis_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:hunter2pw@127.0.0.1:{free_port()}/0")
    result = CliRunner().invoke(cli, ["generate", "--count", "1", "--always-open"])
    assert result.exit_code == 1
    assert "unreachable" in result.output and "***" in result.output
    assert "hunter2pw" not in result.output


def test_generate_command_reports_a_stream_key_of_the_wrong_type(env: dict, r: redis.Redis) -> None:
    r.set("alpha", "not a stream")
    result = CliRunner().invoke(cli, ["generate", "--count", "1", "--rate", "1000", "--always-open"])
    assert result.exit_code == 1
    assert "Redis error on stream alpha" in result.output and "WRONGTYPE" in result.output


def test_first_buy_sends_one_buy_per_ticker_at_once_and_logs_each_signal(r: redis.Redis, caplog) -> None:
    clock = FakeClock()
    gen = make(r, clock, probability=0.0, count=2, always_open=True, seed=1, first_buy=True)
    with caplog.at_level("INFO", logger="bot.generator"):
        assert gen.run() == 2
    assert [(f["ticker"], f["direction"]) for _, f in r.xrange("nvda")] == [("NVDA", "b"), ("AAPL", "b")]
    assert clock.waits == []  # at once, before any tick
    assert sum("signal NVDA b -> nvda" in m for m in caplog.messages) == 1


def test_wait_for_group_sends_nothing_before_the_routers_group_exists(r: redis.Redis) -> None:
    clock = FakeClock()
    gen = make(r, clock, probability=0.0, count=1, always_open=True, seed=1, first_buy=True,
               wait_for_group="tradebot:router")
    assert gen.step() > 0 and r.xlen("nvda") == 0  # no group yet (no stream even): nothing sent
    r.xgroup_create("nvda", "tradebot:router", id="$", mkstream=True)
    gen.step()
    assert [f["direction"] for _, f in r.xrange("nvda")] == ["b"]  # now the first buy goes
