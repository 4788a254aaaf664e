"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): it loads, shows a fill within seconds of a signal, and a halt from the page stops the
next order. The fleet is real in-process: Redis, the paper broker, poller, router and a worker in
threads, `tradebot web`'s app served by uvicorn on a free port."""
from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.alpaca.client import AlpacaClient
from bot.config import Settings
from bot.embedded_redis import free_port
from bot.journal import read_journal
from bot.keys import Keys
from bot.paper.testing import PaperBrokerServer
from bot.poller import Poller
from bot.router import Router
from bot.web.app import create_app
from bot.worker import Worker, WorkerConfig
from waiting import wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
KEYS = Keys("tbd")
SYMBOL = "NVDA"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="no Chromium here: install Debian's chromium and chromium-driver (.ci/run does) to test the dashboard")


class WebServer:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    access_log=False, lifespan="off", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> WebServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "the web server")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def fleet(r: redis.Redis, rb: redis.Redis, redis_url: str) -> Iterator[Settings]:
    with PaperBrokerServer(always_open=True, seed=4, symbols=(SYMBOL,), rate_limit=100000) as broker:
        broker.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
        settings = Settings(redis_url=redis_url, prefix=KEYS.prefix, symbols=(SYMBOL,), source_streams=("nvda",),
                            alpaca_base_url=broker.base_url, alpaca_data_url=broker.base_url,
                            alpaca_api_key=broker.api_key, alpaca_secret_key=broker.secret_key,
                            rate_limit_per_minute=60000)
        client = AlpacaClient(api_key=broker.api_key, secret_key=broker.secret_key, base_url=broker.base_url,
                              data_url=broker.base_url)
        stop = threading.Event()
        loops = [Poller(client, r, KEYS, [SYMBOL], interval=0.3, account_interval=0.5, clock_interval=1),
                 Router(settings, client=rb, consumer="router-1", block_ms=50, from_start=True),
                 Worker(settings, WorkerConfig(consumer="w1", block_ms=50, strategy="fixed", fixed_qty=Decimal(1)))]
        threads = [threading.Thread(target=loop.run, args=(stop,), daemon=True) for loop in loops]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: r.exists(KEYS.prices(SYMBOL)), what="the market cache")
            yield settings
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            client.close()


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def test_the_dashboard_shows_a_fill_and_halts_the_fleet(browser: Any, fleet: Settings, r: redis.Redis) -> None:
    from selenium.webdriver.common.by import By

    with WebServer(create_app(fleet, r)) as web:
        browser.get(web.url)
        wait_for(lambda: text_of(browser, "state") not in ("connecting…", "reconnecting…"), 30, "the first update")
        r.xadd("nvda", {"ticker": SYMBOL, "direction": "b"})
        wait_for(lambda: "filled" in text_of(browser, "orders"), 30, "the fill on the page")
        wait_for(lambda: SYMBOL in text_of(browser, "positions"), 30, "the position's P&L on the page")
        if os.environ.get("TRADEBOT_SCREENSHOT"):
            browser.save_screenshot(os.environ["TRADEBOT_SCREENSHOT"])

        browser.find_element(By.ID, "reason").send_keys("stop from the page")
        browser.find_element(By.ID, "halt").click()
        wait_for(lambda: r.get(KEYS.halt) == "stop from the page", 30, "the halt")
        wait_for(lambda: "HALTED" in text_of(browser, "state"), 30, "the page to show the halt")
        r.xadd("nvda", {"ticker": SYMBOL, "direction": "b"})
        wait_for(lambda: len(read_journal(r, KEYS)) == 2, 30, "the next signal journaled")
        halted = read_journal(r, KEYS)[-1]
        assert halted.outcome == "skipped" and "stop from the page" in halted.reason  # no order placed

        browser.find_element(By.ID, "resume").click()
        wait_for(lambda: not r.exists(KEYS.halt), 30, "the resume")


def test_a_post_without_the_pages_csrf_token_is_refused(fleet: Settings, r: redis.Redis) -> None:
    import httpx

    with WebServer(create_app(fleet, r)) as web:
        answer = httpx.post(web.url + "api/halt", json={"reason": "forged"}, timeout=10)
        assert answer.status_code == 403 and not r.exists(KEYS.halt)
