"""Fixtures of the stage tests: ``bench`` (Redis + paper broker + a filled market cache)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import redis

from bot.config import Settings
from bot.paper.testing import paper_transport
from bot.poller import Poller

from .bench import BASE, CASH, SYMBOL, Bench, make_client


@pytest.fixture
def bench(r: redis.Redis, rb: redis.Redis, redis_url: str) -> Iterator[Bench]:
    transport, exchange = paper_transport(always_open=True, seed=11, cash=str(CASH), symbols=(SYMBOL,))
    settings = Settings(redis_url=redis_url, prefix="tbs", symbols=(SYMBOL,), alpaca_base_url=BASE,
                        alpaca_data_url=BASE)
    # every tick polls everything: prices, account, positions and the clock
    poller = Poller(make_client(transport), r, settings.keys, [SYMBOL], interval=0.05, account_interval=1e-9,
                    clock_interval=1e-9)
    bench = Bench(r, rb, settings, transport, exchange, make_client(transport), poller)
    bench.closers += [transport, poller.client, bench.client]
    try:
        exchange.set_price(SYMBOL, "100.00", spread="0.02", bid_size=100000, ask_size=100000)
        bench.refresh()
        yield bench
    finally:
        for closable in reversed(bench.closers):  # workers first, the paper broker's loop thread last
            with contextlib.suppress(Exception):
                closable.close()
