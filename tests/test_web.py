"""`tradebot web`: /metrics parsed by prometheus_client's own text parser, /healthz's answers,
the token, the status page; against a real Redis."""
from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal

import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from bot.config import Settings
from bot.heartbeat import Heartbeat
from bot.journal import JournalEntry, record_outcome
from bot.keys import Keys
from bot.order_events import OrderEvents
from bot.web.app import create_app

KEYS = Keys("tbw")


def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, prefix=KEYS.prefix, symbols=("NVDA",))


def journal(r: redis.Redis, n: int, outcome: str = "filled", adopted: bool = False) -> None:
    if not r.exists(KEYS.signals):
        r.xgroup_create(KEYS.signals, KEYS.workers_group, id="0", mkstream=True)
    now = time.time()
    entry = JournalEntry(source_stream="nvda", source_id=f"{1000 + n}-0", ticker="NVDA", side="buy", outcome=outcome,
                         client_order_id=f"tb-nvda-{1000 + n}-0", order_id=f"o{n}", status="filled",
                         qty=Decimal(1), filled_qty=Decimal(1) if outcome == "filled" else Decimal(0),
                         filled_avg_price=Decimal(100) if outcome == "filled" else None,
                         source_at=now - 0.5, routed_at=now - 0.49, claimed_at=now - 0.48, submitted_at=now - 0.47,
                         final_at=now, adopted=adopted)
    assert record_outcome(r, KEYS, entry, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id=f"0-{n + 1}")


def scrape(client: TestClient) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_count_the_journal_incrementally_and_parse(r: redis.Redis, redis_url: str) -> None:
    client = TestClient(create_app(settings(redis_url), r))
    journal(r, 1)
    journal(r, 2, "skipped")
    r.hset(KEYS.prices("NVDA"), mapping={"bid": "99", "ask": "101", "polled_at": repr(time.time())})
    r.hset(KEYS.account, mapping={"equity": "100000", "cash": "99900"})
    first = scrape(client)
    assert first["tradebot_orders_total"][(("outcome", "filled"),)] == 1
    assert first["tradebot_orders_total"][(("outcome", "skipped"),)] == 1
    assert first["tradebot_stage_seconds_count"][(("stage", "total"),)] == 2
    assert first["tradebot_stage_seconds_bucket"][(("le", "0.5"), ("stage", "total"))] >= 1
    assert first["tradebot_price_age_seconds"][(("symbol", "NVDA"),)] < 60
    assert first["tradebot_equity_dollars"][()] == 100000
    assert first["tradebot_pnl_dollars"][(("kind", "unrealized"),)] == 0  # bought at 100, marked at 100
    assert first["tradebot_ledger_reserved_dollars"][()] == 0
    assert first["tradebot_ratelimit_paused_seconds"][(("bucket", "trading"),)] == 0
    journal(r, 3, adopted=True)
    second = scrape(client)
    assert second["tradebot_orders_total"][(("outcome", "filled"),)] == 2  # only the new entry was counted
    assert second["tradebot_orders_adopted_total"][()] == 1
    assert second["tradebot_signals_total"][(("stage", "journaled"),)] == 3


def test_healthz_says_what_is_wrong_then_200(r: redis.Redis, redis_url: str) -> None:
    client = TestClient(create_app(settings(redis_url), r))
    response = client.get("/healthz")
    assert response.status_code == 503
    reasons = response.json()["reasons"]
    assert "no process writes a heartbeat to this Redis" in reasons
    assert any("no price of NVDA" in reason for reason in reasons)
    Heartbeat(r, KEYS, "worker-00@host").beat()
    OrderEvents(r, KEYS).mark_listener("listener@host", "live", heard=True)
    r.hset(KEYS.prices("NVDA"), mapping={"bid": "99", "ask": "101", "polled_at": repr(time.time())})
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"healthy": True, "reasons": []}


def test_a_token_guards_every_page(r: redis.Redis, redis_url: str) -> None:
    client = TestClient(create_app(settings(redis_url), r, token="t0ken-abc"))
    assert client.get("/metrics").status_code == 401
    assert client.get("/healthz").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer t0ken-abc"}).status_code == 200
    assert client.get("/?token=t0ken-abc").status_code == 200
    assert client.get("/?token=wrong").status_code == 401


def test_the_status_page_shows_the_fleet(r: redis.Redis, redis_url: str) -> None:
    page = TestClient(create_app(settings(redis_url), r)).get("/text")
    assert page.status_code == 200 and "tradebot status" in page.text and "<pre" in page.text


def test_binding_beyond_loopback_needs_a_token() -> None:
    done = subprocess.run([sys.executable, "-m", "bot.cli", "web", "--host", "0.0.0.0", "--port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--token" in done.stderr


def test_the_grafana_dashboard_uses_only_metrics_that_exist(r: redis.Redis, redis_url: str) -> None:
    import json
    import re
    from pathlib import Path

    journal(r, 1)  # and one of everything a gauge reads: account, heartbeat, rate-limit bucket
    r.hset(KEYS.account, mapping={"equity": "1", "cash": "1"})
    Heartbeat(r, KEYS, "worker-00@host").beat()
    r.hset(KEYS.ratelimit("trading"), mapping={"tokens": "10", "ts": "0"})
    served = set(scrape(TestClient(create_app(settings(redis_url), r))))
    dashboard = json.loads((Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"tradebot_[a-z_]+", target["expr"])}
    assert used and used <= served, used - served


def test_broker_requests_by_route_come_from_the_processes_heartbeats(r: redis.Redis, redis_url: str) -> None:
    import httpx

    from bot.alpaca.client import AlpacaClient
    from bot.heartbeat import broker_requests_extra

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v2/orders/"):
            return httpx.Response(404, json={"code": 40410000, "message": "order not found"})
        return httpx.Response(200, json={"cash": "1", "equity": "1", "buying_power": "1", "status": "ACTIVE"})

    client = AlpacaClient(api_key="k", secret_key="s", base_url="http://broker", data_url="http://broker",
                          transport=httpx.MockTransport(answer), max_retries=0)
    client.get_account()
    try:
        client.get_order("904837e3-3b76-47ec-b432-046db621571b")
    except Exception:  # noqa: BLE001 - the 404 is the point
        pass
    Heartbeat(r, KEYS, "worker-00@host", extra=broker_requests_extra(client)).beat()
    samples = scrape(TestClient(create_app(settings(redis_url), r)))["tradebot_broker_requests_total"]
    assert samples[(("process", "worker-00@host"), ("route", "GET /v2/account"), ("status", "200"))] == 1
    assert samples[(("process", "worker-00@host"), ("route", "GET /v2/orders/{id}"), ("status", "404"))] == 1
    client.close()


def test_the_dashboards_data_has_the_newest_dead_letters(r: redis.Redis, redis_url: str) -> None:
    from bot.streams import dead_letter

    r.xgroup_create(KEYS.signals, KEYS.workers_group, id="0", mkstream=True)
    for n in range(12):
        dead_letter(r, KEYS, ack_stream=KEYS.signals, group=KEYS.workers_group, entry_id=f"0-{n + 1}",
                    source_stream="nvda", source_id=f"{2000 + n}-0", reason=f"bad {n}", deliveries=1,
                    raw_fields={"x": "1"})
    data = TestClient(create_app(settings(redis_url), r)).get("/api/status").json()
    assert [d["reason"] for d in data["dead_letters"]] == [f"bad {n}" for n in range(11, 1, -1)]
    assert data["dlq"] == 12 and "healthy" in data["health"]
