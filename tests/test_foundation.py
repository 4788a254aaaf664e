from decimal import Decimal

import pytest

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

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key=%s url=%s", ("PKSECRETKEY123", "redis://u:pw12345@h:1"), None)
    SecretFilter(["PKSECRETKEY123"]).filter(record)
    assert record.getMessage() == "key=*** url=redis://u:***@h:1"
    assert redact_url("rediss://:pw@h:6380/0") == "rediss://:***@h:6380/0"
