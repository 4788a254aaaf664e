"""The fleet's Prometheus metrics, read from Redis at scrape time (prometheus_client custom collector).

Counters come from what Redis keeps: stream lengths (signals routed, dead letters) and the journal,
which the collector reads incrementally (only entries newer than the last scrape), counting orders
by outcome and filling the stage-latency histograms from each entry's stage times.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.config import Settings
from bot.heartbeat import read_heartbeats
from bot.journal import OUTCOMES, journal_entries
from bot.ledger import Ledger
from bot.order_events import OrderEvents
from bot.pnl import journal_pnl
from bot.trading import HALTED, STATES, read_state

log = logging.getLogger(__name__)

# stage -> (from, to) journal time fields; "total" is source -> final
STAGES = {"route": ("source_at", "routed_at"), "claim": ("routed_at", "claimed_at"),
          "submit": ("claimed_at", "submitted_at"), "follow": ("submitted_at", "final_at"),
          "total": ("source_at", "final_at")}
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1

    def buckets(self) -> list[tuple[str, float]]:
        return [*((repr(b), float(c)) for b, c in zip(BUCKETS, self.counts, strict=True)), ("+Inf", float(self.count))]


class FleetCollector(Collector):
    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.r, self.settings, self.keys = r, settings, settings.keys
        self._journal_at = "-"  # the last journal id counted
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._adopted = 0
        self._stages = {stage: _Histogram() for stage in STAGES}

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._collect(time.time())
        except redis.RedisError as exc:  # a scrape while Redis is away: say so, fail nothing
            log.warning("metrics: Redis error: %s", exc)
            up = GaugeMetricFamily("tradebot_redis_up", "1 when the fleet's Redis answered this scrape")
            up.add_metric([], 0)
            yield up

    def _collect(self, now: float) -> Iterator[Metric]:
        keys = self.keys
        up = GaugeMetricFamily("tradebot_redis_up", "1 when the fleet's Redis answered this scrape")
        up.add_metric([], 1)
        yield up
        self._read_journal()
        signals = CounterMetricFamily("tradebot_signals", "Signals by stage (routed: on tradebot:signals; "
                                      "dead_lettered: in the DLQ; journaled: in the journal)", labels=["stage"])
        signals.add_metric(["routed"], self.r.xlen(keys.signals))
        signals.add_metric(["dead_lettered"], self.r.xlen(keys.dlq))
        signals.add_metric(["journaled"], sum(self._outcomes.values()))
        yield signals
        orders = CounterMetricFamily("tradebot_orders", "Journal entries by outcome", labels=["outcome"])
        for outcome, count in self._outcomes.items():
            orders.add_metric([outcome], count)
        yield orders
        adopted = CounterMetricFamily("tradebot_orders_adopted", "Journal entries whose order was found at the "
                                      "broker rather than placed by that delivery")
        adopted.add_metric([], self._adopted)
        yield adopted
        stages = HistogramMetricFamily("tradebot_stage_seconds", "Time between a signal's stages "
                                       "(route, claim, submit, follow; total = source to final)", labels=["stage"])
        for stage, hist in self._stages.items():
            stages.add_metric([stage], hist.buckets(), hist.total)
        yield stages
        yield from self._groups()
        yield from self._market(now)
        yield from self._health(now)

    def _read_journal(self) -> None:
        for entry_id, entry in journal_entries(self.r, self.keys, after=self._journal_at):
            self._outcomes[entry.outcome] = self._outcomes.get(entry.outcome, 0) + 1
            self._adopted += int(entry.adopted)
            for stage, (start, end) in STAGES.items():
                a, b = getattr(entry, start), getattr(entry, end)
                if a is not None and b is not None and b >= a:
                    self._stages[stage].observe(b - a)
            self._journal_at = entry_id

    def _groups(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily("tradebot_group_pending", "Entries delivered, not acked",
                                    labels=["group", "stream"])
        lag = GaugeMetricFamily("tradebot_group_lag", "Entries not delivered yet", labels=["group", "stream"])
        consumers = GaugeMetricFamily("tradebot_group_consumers", "Consumers in the group", labels=["group", "stream"])
        for stream in (*self.settings.source_streams, self.keys.signals):
            try:
                groups = self.r.xinfo_groups(stream)
            except redis.ResponseError:
                continue  # no such stream yet
            for group in groups:
                labels = [str(group["name"]), stream]
                pending.add_metric(labels, group["pending"])
                consumers.add_metric(labels, group["consumers"])
                lag.add_metric(labels, _lag(self.r, stream, group))
        yield pending
        yield lag
        yield consumers

    def _market(self, now: float) -> Iterator[Metric]:
        ages = GaugeMetricFamily("tradebot_price_age_seconds", "Seconds since the poller cached the price",
                                 labels=["symbol"])
        for symbol in self.settings.symbols:
            polled = self.r.hget(self.keys.prices(symbol), "polled_at")
            ages.add_metric([symbol], now - float(polled) if polled else math.inf)
        yield ages
        account = self.r.hgetall(self.keys.account) or {}
        for name, field, doc in (("tradebot_equity_dollars", "equity", "Account equity (the cache)"),
                                 ("tradebot_cash_dollars", "cash", "Account cash (the cache)")):
            gauge = GaugeMetricFamily(name, doc)
            if account.get(field):
                gauge.add_metric([], float(account[field]))
            yield gauge
        positions = GaugeMetricFamily("tradebot_position_shares", "Shares held (the cache)", labels=["symbol"])
        for held_symbol, held in (self.r.hgetall(self.keys.positions) or {}).items():
            if not str(held_symbol).startswith("_"):
                try:
                    positions.add_metric([str(held_symbol)], float(json.loads(held).get("qty") or 0))
                except (ValueError, AttributeError):
                    continue
        yield positions
        pnl = journal_pnl(self.r, self.keys)
        realized = GaugeMetricFamily("tradebot_pnl_dollars", "P&L from the journal (average cost)", labels=["kind"])
        realized.add_metric(["realized"], float(pnl.realized))
        realized.add_metric(["unrealized"], float(pnl.unrealized))
        yield realized

    def _health(self, now: float) -> Iterator[Metric]:
        beats = GaugeMetricFamily("tradebot_heartbeat_age_seconds", "Seconds since the process's last heartbeat",
                                  labels=["process"])
        requests = CounterMetricFamily("tradebot_broker_requests", "Broker requests each process sent since it "
                                       "started, by route and answer (HTTP status, or error: no answer)",
                                       labels=["process", "route", "status"])
        for beat in read_heartbeats(self.r, self.keys, now):
            beats.add_metric([beat.process], beat.age)
            for row in _json_list(self.r.hget(self.keys.heartbeat(beat.process), "broker_requests")):
                requests.add_metric([beat.process, str(row.get("route")), str(row.get("status"))],
                                    float(row.get("count") or 0))
        yield beats
        yield requests
        listener = GaugeMetricFamily("tradebot_listener_live", "1 while the order-updates stream is live")
        listener.add_metric([], int(OrderEvents(self.r, self.keys, now=lambda: now).listener_health().live))
        yield listener
        unresolved = GaugeMetricFamily("tradebot_orders_unresolved", "Orders whose POST had an unknown outcome")
        unresolved.add_metric([], self.r.hlen(self.keys.unresolved))
        yield unresolved
        drift = GaugeMetricFamily("tradebot_position_drift_symbols", "Symbols whose broker position the books "
                                  "do not explain (last reconciliation)")
        drift_json = self.r.hget(self.keys.reconcile, "drift")
        drift.add_metric([], len(json.loads(drift_json)) if drift_json else 0)
        yield drift
        tokens = GaugeMetricFamily("tradebot_ratelimit_tokens", "Tokens left in the fleet-wide bucket (as of its "
                                   "last use)", labels=["bucket"])
        paused = GaugeMetricFamily("tradebot_ratelimit_paused_seconds", "Seconds the bucket stays paused (the "
                                   "broker reported its quota spent)", labels=["bucket"])
        for bucket in ("trading", "data"):
            state = self.r.hgetall(self.keys.ratelimit(bucket)) or {}
            if state.get("tokens"):
                tokens.add_metric([bucket], float(state["tokens"]))
            paused.add_metric([bucket], max(0.0, float(state.get("paused_until") or 0) - now))
        yield tokens
        yield paused
        reserved = GaugeMetricFamily("tradebot_ledger_reserved_dollars", "Cash committed to orders in flight "
                                     "(the ledger)")
        reserved.add_metric([], float(sum((res.cash for res in Ledger(self.r, self.keys).reservations()
                                           if res.side == "buy" and not res.settled), Decimal(0))))
        yield reserved
        trading = read_state(self.r, self.keys)
        halted = GaugeMetricFamily("tradebot_halted", "1 while the kill switch is on")
        halted.add_metric([], int(trading.state == HALTED))
        yield halted
        states = GaugeMetricFamily("tradebot_trading_state", "1 for the fleet's trading state", labels=["state"])
        for name in STATES:
            states.add_metric([name], int(trading.state == name))
        yield states


def _json_list(raw: Any) -> list[dict[str, Any]]:
    try:
        value = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else []


def _lag(r: redis.Redis, stream: str, group: dict[str, Any]) -> int:
    lag = group.get("lag")
    if isinstance(lag, int):
        return lag
    last = group.get("last-delivered-id") or "0-0"
    return len(r.xrange(stream, min=f"({last}", count=100_000) or [])  # Redis 6.2 has no lag field
