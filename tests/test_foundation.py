import logging
import os
import signal
import socket
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from waiting import wait_for

from bot.config import ConfigError, Settings, parse_weights
from bot.keys import Keys
from bot.logs import SecretFilter, redact_url


def test_redis_fixture_is_a_real_server(r):
    info = r.info("server")
    assert info["redis_version"]
    r.xadd("nvda", {"ticker": "NVDA", "direction": "b"})
    assert r.xlen("nvda") == 1


def test_keys_follow_prefix():
    keys = Keys("tb")
    assert keys.signals == "tb:signals"
    assert keys.prices("nvda") == "tb:prices:NVDA"
    assert keys.workers_group == "tb:workers"


def test_settings_from_env_and_overrides():
    s = Settings.from_env({"TRADEBOT_SYMBOLS": "nvda, aapl", "TRADEBOT_WORKERS": "4"}, workers=None, prefix="x")
    assert s.symbols == ("NVDA", "AAPL")
    assert s.workers == 4
    assert s.keys.signals == "x:signals"
    assert s.weights == {"NVDA": Decimal("0.5"), "AAPL": Decimal("0.5")}


@pytest.mark.parametrize("text,needle", [
    ("NVDA=0.7,AAPL=0.4", "sum to"),
    ("TSLA=0.1", "not in TRADEBOT_SYMBOLS"),
    ("NVDA=abc", "not a number"),
    ("NVDA", "SYMBOL=WEIGHT"),
])
def test_bad_weights_are_refused(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_weights(text, ("NVDA", "AAPL"))


def test_quote_age_and_data_rate_limit_settings():
    defaults = Settings.from_env({})
    assert (defaults.max_quote_age, defaults.data_rate_limit_per_minute) == (60.0, 200)
    given = Settings.from_env({"TRADEBOT_MAX_QUOTE_AGE": "2.5", "TRADEBOT_DATA_RATE_LIMIT": "10000"})
    assert (given.max_quote_age, given.data_rate_limit_per_minute) == (2.5, 10000)
    assert Settings.from_env({"TRADEBOT_MAX_QUOTE_AGE": "2.5"}, max_quote_age=9.0).max_quote_age == 9.0  # a flag wins
    assert Settings.from_env({"TRADEBOT_MAX_QUOTE_AGE": "2.5"}, max_quote_age=None).max_quote_age == 2.5
    view = given.public_view()
    assert (view["max_quote_age"], view["data_rate_limit_per_minute"]) == (2.5, 10000)


@pytest.mark.parametrize("env, needle", [
    ({"TRADEBOT_MAX_QUOTE_AGE": "old"}, "TRADEBOT_MAX_QUOTE_AGE='old' is not a number"),
    ({"TRADEBOT_MAX_QUOTE_AGE": "0"}, "TRADEBOT_MAX_QUOTE_AGE=0 must be > 0"),
    ({"TRADEBOT_DATA_RATE_LIMIT": "lots"}, "TRADEBOT_DATA_RATE_LIMIT='lots' is not an integer"),
    ({"TRADEBOT_DATA_RATE_LIMIT": "0"}, "TRADEBOT_DATA_RATE_LIMIT=0 must be >= 1"),
])
def test_bad_quote_age_and_data_rate_limit_are_refused(env, needle):
    with pytest.raises(ConfigError, match=needle):
        Settings.from_env(env)


def test_bad_worker_count_is_refused():
    with pytest.raises(ConfigError, match="TRADEBOT_WORKERS"):
        Settings.from_env({"TRADEBOT_WORKERS": "zero"})


def test_secrets_never_in_public_view():
    s = Settings.from_env({"ALPACA_API_KEY": "PKSECRETKEY123", "ALPACA_SECRET_KEY": "shh-very-secret",
                           "REDIS_URL": "redis://:hunter2pass@localhost:1/0"})
    text = repr(s) + repr(s.public_view())
    for secret in ("PKSECRETKEY123", "shh-very-secret", "hunter2pass"):
        assert secret not in text


def test_secret_filter_scrubs_messages():
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key=%s url=%s",
                               ("PKSECRETKEY123", "redis://u:pw12345@h:1"), None)
    SecretFilter(["PKSECRETKEY123"]).filter(record)
    assert record.getMessage() == "key=*** url=redis://u:***@h:1"
    assert redact_url("rediss://:pw@h:6380/0") == "rediss://:***@h:6380/0"


# ---------------------------------------------------------------------------- redaction


def test_redact_url_hides_a_password_given_as_a_query_parameter(monkeypatch):
    from bot.logs import secrets_from_env

    url = "redis://127.0.0.1:6390/0?password=qu3ry-secret&socket_timeout=5"
    assert redact_url(url) == "redis://127.0.0.1:6390/0?password=***&socket_timeout=5"
    assert redact_url("rediss://h/1?db=2&PASSWORD=x1y2z3") == "rediss://h/1?db=2&PASSWORD=***"
    monkeypatch.setenv("REDIS_URL", url)
    assert "qu3ry-secret" in secrets_from_env()  # so the log filter scrubs it wherever it appears
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "pw %s", ("qu3ry-secret",), None)
    SecretFilter(secrets_from_env()).filter(record)
    assert record.getMessage() == "pw ***"


# ---------------------------------------------------------------------------- settings


def test_a_base_url_flag_brings_its_data_url_unless_one_was_given():
    local = "http://127.0.0.1:9"
    # click passes ALPACA_BASE_URL from the environment as the flag value: same result either way
    assert Settings.from_env({}, alpaca_base_url=local + "/").alpaca_data_url == local
    assert Settings.from_env({"ALPACA_BASE_URL": local}).alpaca_data_url == local
    assert Settings.from_env({"ALPACA_BASE_URL": local}, alpaca_base_url=local).alpaca_data_url == local
    given = Settings.from_env({"ALPACA_DATA_URL": "http://data:1/"}, alpaca_base_url=local)
    assert (given.alpaca_base_url, given.alpaca_data_url) == (local, "http://data:1")
    flagged = Settings.from_env({}, alpaca_base_url=local, alpaca_data_url="http://data:2")
    assert flagged.alpaca_data_url == "http://data:2"
    real = Settings.from_env({"ALPACA_BASE_URL": local}, alpaca_base_url="https://api.alpaca.markets")
    assert real.alpaca_data_url == "https://data.alpaca.markets"
    assert "data_url_given" not in Settings().public_view()


def test_demo_credentials_only_for_a_local_broker():
    from bot.paper import DEMO_API_KEY, DEMO_SECRET_KEY

    local = Settings.from_env({"ALPACA_BASE_URL": "http://127.0.0.1:9"}).with_demo_credentials()
    assert (local.alpaca_api_key, local.alpaca_secret_key) == (DEMO_API_KEY, DEMO_SECRET_KEY)
    keyed = Settings.from_env({"ALPACA_API_KEY": "PKREAL", "ALPACA_SECRET_KEY": "real-secret"})
    assert keyed.with_demo_credentials() is keyed
    with pytest.raises(ConfigError, match=r"required to trade on https://paper-api\.alpaca\.markets"):
        Settings.from_env({}).with_demo_credentials("to trade on")
    with pytest.raises(ConfigError, match="not an http"):
        Settings.from_env({"ALPACA_BASE_URL": "ftp://x"}).with_demo_credentials()


# ---------------------------------------------------------------------------- Redis connections


class ReplyHoldingProxy:
    """A TCP proxy to Redis. After ``hold_replies()`` the connections open at that moment still
    carry commands to Redis, but its replies are dropped: a command runs and its answer is lost."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.held_below = 0  # replies of connections numbered below this are dropped
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def hold_replies(self) -> None:
        self.held_below = self.connections

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(self.target)
            number, self.connections = self.connections, self.connections + 1
            for sock in (downstream, upstream):
                sock.settimeout(0.05)
                self._sockets.append(sock)
            for source, sink, replies in ((downstream, upstream, False), (upstream, downstream, True)):
                thread = threading.Thread(target=self._pump, args=(source, sink, replies, number), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool, number: int) -> None:
        while not self._closed.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            if replies and number < self.held_below:
                continue
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()


def test_a_command_whose_reply_timed_out_is_not_sent_again(redis_url, r):
    from urllib.parse import urlsplit, urlunsplit

    from bot.redisconn import connect

    parts = urlsplit(redis_url)
    proxy = ReplyHoldingProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    auth = parts.netloc.rpartition("@")[0]
    via_proxy = urlunsplit(parts._replace(netloc=f"{auth + '@' if auth else ''}127.0.0.1:{proxy.port}"))
    # the handshake and the PING go through the proxy's threads: on a busy machine a reply can take
    # far more than a few hundred ms; the held XADD reply never comes, so it times out all the same
    client = connect(via_proxy, socket_timeout=2.0)
    try:
        assert client.ping()  # connected and handshaken through the proxy
        proxy.hold_replies()
        with pytest.raises(redis.TimeoutError):
            client.xadd("once", {"ticker": "NVDA", "direction": "b"})  # runs; its reply is lost
        wait_for(lambda: r.xlen("once") > 0, what="the XADD whose reply was lost to run")
        assert r.xlen("once") == 1  # a retried XADD would have added a second signal
        assert proxy.connections == 1
    finally:
        client.close()
        proxy.close()


# ---------------------------------------------------------------------------- runtime helpers


def test_capped_backoff():
    from bot.runtime import capped_backoff

    assert [capped_backoff(n, base=0.1, cap=0.5) for n in range(6)] == [0.0, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert capped_backoff(10_000, cap=5.0) == 5.0


def test_stop_on_signals_sets_the_event_and_restores_the_handlers():
    from bot.runtime import stop_on_signals

    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals("test process") as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_probe_redis_logs_an_outage_and_refuses_wrong_credentials(tmp_path, caplog):
    from bot.embedded_redis import EmbeddedRedis, free_port
    from bot.redisconn import RedisAuthError, connect
    from bot.runtime import probe_redis

    url = f"redis://:probe-pw-1234@127.0.0.1:{free_port()}/0"
    client = connect(url, socket_timeout=1.0)
    try:
        with caplog.at_level(logging.WARNING, logger="bot.runtime"):
            assert probe_redis(client, url) is False
    finally:
        client.close()
    assert "is unreachable" in caplog.text and "starting anyway" in caplog.text
    assert "probe-pw-1234" not in caplog.text

    server = EmbeddedRedis(data_dir=tmp_path / "pw", password="right-pw-5678", appendonly=False)
    server.start()
    try:
        wrong = server.url.replace("right-pw-5678", "wrong-pw-9012")
        client = connect(wrong, socket_timeout=1.0)
        with pytest.raises(RedisAuthError, match="refused the credentials") as caught:
            probe_redis(client, wrong)
        assert "wrong-pw-9012" not in str(caught.value) and "right-pw-5678" not in str(caught.value)
        client.close()
        right = connect(server.url, socket_timeout=1.0)
        assert probe_redis(right, server.url) is True
        right.close()
    finally:
        server.stop()


def test_processes_ride_out_an_unreachable_redis_at_start_and_stop_on_sigterm(tmp_path):
    """Exiting would make supervisord give up after startretries (FATAL) while Redis restarts."""
    import subprocess
    import sys

    from bot.embedded_redis import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "TRADEBOT_", "REDIS_"))}
    env.update(REDIS_URL=f"redis://:startup-pw-3456@127.0.0.1:{free_port()}/0",
               ALPACA_BASE_URL=f"http://127.0.0.1:{free_port()}")
    commands = {"poller": ["poller"], "router": ["router", "--block-ms", "100"],
                "worker": ["worker", "--block-ms", "100"], "generator": ["generate", "--always-open"]}
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for name, args in commands.items():
            log_path = tmp_path / f"{name}.log"
            with open(log_path, "wb") as log_file:
                procs[name] = (subprocess.Popen([sys.executable, "-m", "bot.cli", *args], env=env,
                                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file),
                               log_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                "starting anyway" in path.read_text(errors="replace") or proc.poll() is not None
                for proc, path in procs.values()):
            time.sleep(0.05)
        for name, (proc, path) in procs.items():
            text = path.read_text(errors="replace")
            assert proc.poll() is None, f"{name} exited at start:\n{text[-2000:]}"
            assert "is unreachable" in text and "redis://:***@127.0.0.1" in text, f"{name}:\n{text[-2000:]}"
            proc.send_signal(signal.SIGTERM)
        for name, (proc, path) in procs.items():
            assert proc.wait(timeout=30) == 0, f"{name}:\n{path.read_text(errors='replace')[-2000:]}"
            assert "startup-pw-3456" not in path.read_text(errors="replace")
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_processes_exit_at_start_when_redis_refuses_the_credentials(tmp_path):
    import subprocess
    import sys

    from bot.embedded_redis import EmbeddedRedis, free_port

    server = EmbeddedRedis(data_dir=tmp_path / "pw", password="right-pw-7777", appendonly=False)
    server.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "TRADEBOT_", "REDIS_"))}
        env.update(REDIS_URL=server.url.replace("right-pw-7777", "wrong-pw-8888"),
                   ALPACA_BASE_URL=f"http://127.0.0.1:{free_port()}")
        procs = {name: subprocess.Popen([sys.executable, "-m", "bot.cli", *args], env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for name, args in {"poller": ["poller"], "router": ["router"], "worker": ["worker"],
                                    "generator": ["generate", "--always-open"]}.items()}
        try:
            for name, proc in procs.items():
                output, _ = proc.communicate(timeout=30)
                assert proc.returncode == 1, f"{name}:\n{output[-2000:]}"
                assert "refused the credentials" in output and "Traceback" not in output, f"{name}:\n{output}"
                assert "wrong-pw-8888" not in output and "right-pw-7777" not in output
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        server.stop()


def test_redact_url_hides_a_password_that_contains_an_at_sign():
    # redis-py reads the password up to the last "@": all of it must be hidden
    assert redact_url("redis://:S3cr@tPW@host:6379/0") == "redis://:***@host:6379/0"


# ---------------------------------------------------------------------------- Lua scripts and errors

def _lua_names() -> list[str]:
    from importlib import resources

    return sorted(p.name[:-len(".lua")] for p in resources.files("bot.lua").iterdir() if p.name.endswith(".lua"))


def test_every_lua_script_loads_by_name_and_redis_accepts_it(r):
    import hashlib
    import re

    from bot import lua

    names = _lua_names()
    assert {"stream_autoclaim", "stream_record_once", "stream_first_kept", "stream_delete_consumer_if_idle",
            "market_replace_if_newer", "ledger_common", "ledger_reserve_buy", "ledger_reserve_sell",
            "ledger_settle", "ledger_totals", "ratelimit_prelude", "ratelimit_take",
            "ratelimit_observe"} <= set(names)
    for name in names:
        text = lua.source(name)
        assert not re.search(r"^--!include", text, re.MULTILINE), f"{name}: an include was not expanded"
        # SCRIPT LOAD compiles the script: a syntax error is refused here, not at the first call
        assert r.script_load(text) == hashlib.sha1(text.encode("utf-8")).hexdigest(), name
    assert lua.source("ledger_common") in lua.source("ledger_reserve_buy")
    assert lua.source("ratelimit_prelude") in lua.source("ratelimit_take")


def test_the_project_errors_share_one_root_and_keep_their_old_bases():
    from bot.alpaca.errors import AlpacaError, OrderOutcomeUnknown
    from bot.embedded_redis import RedisServerNotFound
    from bot.errors import InputError, TradebotError
    from bot.ledger import InsufficientCash, LedgerError
    from bot.market import MarketDataError, StaleQuote
    from bot.paper.faults import SettingError
    from bot.ratelimit import RateLimitStopped, RateLimitTimeout
    from bot.redisconn import RedisAuthError, RedisUnavailable
    from bot.signals import SignalError

    expected: dict[type, tuple[type, ...]] = {
        ConfigError: (InputError, ValueError),
        SettingError: (InputError, ValueError),
        SignalError: (TradebotError, ValueError),
        MarketDataError: (TradebotError,),
        LedgerError: (TradebotError,),
        AlpacaError: (TradebotError,),
        RateLimitTimeout: (TradebotError, TimeoutError),
        RedisUnavailable: (TradebotError, RuntimeError),
        RedisServerNotFound: (TradebotError, RuntimeError),
    }
    for cls, bases in expected.items():
        assert all(issubclass(cls, base) for base in bases), cls
    assert ConfigError("x").exit_code == SettingError("x").exit_code == 2
    assert SignalError("x").exit_code == RedisAuthError("x").exit_code == 1
    # the subclasses' own constructors still work under the new root
    assert isinstance(StaleQuote("NVDA", None, 1.0), TradebotError)
    assert isinstance(InsufficientCash("short", Decimal(1)), LedgerError)
    assert isinstance(OrderOutcomeUnknown("lost", client_order_id="c1"), TradebotError)
    with pytest.raises(TimeoutError, match="stopping"):
        raise RateLimitStopped("trading", 3.0)
    with pytest.raises(ValueError, match="empty"):
        raise SignalError("ticker is empty")
