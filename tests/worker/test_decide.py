"""Decider.decide: the gates, a fresh price, the size and the ledger's reservation -> an OrderRequest or a Skip."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from bot.alpaca.models import OrderRequest
from bot.breakers import BreakerLimits
from bot.trading import HALTED, REDUCE_ONLY, set_state
from bot.worker.decide import Decider
from bot.worker.records import Skip

from .bench import ASK, CASH, SYMBOL, Bench, config


def decider(bench: Bench, **options: Any) -> Decider:
    return Decider(gates=bench.gates(), ledger=bench.ledger, limits=bench.limits, weights=bench.settings.weights,
                   config=config(**options))


def test_a_fixed_qty_buy_is_that_qty_under_the_coid_with_its_cash_reserved(bench: Bench):
    job = bench.job()
    request = decider(bench, fixed_qty=Decimal(3)).decide(job)
    assert request == OrderRequest(symbol=SYMBOL, side="buy", client_order_id=job.coid, qty=Decimal(3),
                                   type="market", time_in_force="ioc", limit_price=None, extended_hours=False)
    reservation = bench.ledger.get(job.coid)
    assert reservation is not None and not reservation.settled
    assert (reservation.side, reservation.symbol, reservation.qty, reservation.price) == ("buy", SYMBOL, 3, ASK)
    assert reservation.cash == 3 * bench.ledger.buffered_price(ASK)
    assert bench.orders() == 0  # deciding sends nothing


def test_deciding_twice_reuses_the_reservation(bench: Bench):
    job = bench.job()
    first = decider(bench, fixed_qty=Decimal(3)).decide(job)
    again = decider(bench, fixed_qty=Decimal(3)).decide(job)  # a replay after a crash before the submit
    assert first == again and len(bench.ledger.reservations()) == 1


def test_an_all_in_buy_spends_the_cash_at_the_buffered_ask(bench: Bench):
    job = bench.job()
    request = decider(bench, strategy="all-in", fixed_qty=None).decide(job)
    assert isinstance(request, OrderRequest)
    expected = (CASH / (ASK * Decimal("1.005"))).to_integral_value(rounding=ROUND_FLOOR)
    assert request.qty == expected == bench.ledger.get(job.coid).qty


def test_a_sell_sells_the_shares_held(bench: Bench):
    bench.client.submit_order(OrderRequest(SYMBOL, "buy", "seed-buy", qty=Decimal(4)))
    bench.refresh()
    job = bench.job(bench.deliver(bench.signal("sell")))
    request = decider(bench, strategy="all-in", fixed_qty=None).decide(job)
    assert isinstance(request, OrderRequest)
    assert (request.side, request.qty, request.client_order_id) == ("sell", 4, job.coid)
    reservation = bench.ledger.get(job.coid)
    assert (reservation.side, reservation.qty, reservation.cash) == ("sell", 4, 0)


def test_the_kill_switch_is_a_gate_skip(bench: Bench):
    bench.r.set(bench.keys.halt, "maintenance window")
    job = bench.job()
    assert decider(bench).decide(job) == Skip("kill switch on: maintenance window", gate=True)
    assert bench.ledger.reservations() == []


def test_reduce_only_refuses_a_buy_and_passes_a_sell(bench: Bench):
    bench.client.submit_order(OrderRequest(SYMBOL, "buy", "seed-buy", qty=Decimal(4)))
    bench.refresh()
    set_state(bench.r, bench.keys, REDUCE_ONLY, "drawdown")
    assert decider(bench).decide(bench.job()) == Skip("reduce-only: drawdown: a buy would add exposure", gate=True)
    sell = decider(bench, strategy="all-in", fixed_qty=None).decide(bench.job(bench.deliver(bench.signal("sell"))))
    assert isinstance(sell, OrderRequest) and (sell.side, sell.qty) == ("sell", 4)
    set_state(bench.r, bench.keys, HALTED, "news")  # halted wins: not even the sell
    assert decider(bench).decide(bench.job(bench.deliver(bench.signal("sell")))) == Skip("kill switch on: news",
                                                                                           gate=True)


def test_a_cooldown_after_a_fill_holds_the_symbol_but_not_a_flatten(bench: Bench):
    bench.client.submit_order(OrderRequest(SYMBOL, "buy", "seed-buy", qty=Decimal(4)))
    bench.refresh()
    bench.r.set(bench.keys.cooldown(SYMBOL), repr(time.time() - 5), px=60_000)
    cooling = decider(bench, breakers=BreakerLimits(cooldown=60.0))
    skip = cooling.decide(bench.job())
    assert isinstance(skip, Skip) and skip.gate and skip.reason == "cooldown: NVDA filled 5s ago (TRADEBOT_COOLDOWN 60s)"
    flatten = bench.signal("sell")
    exit_job = bench.job(bench.deliver(replace(flatten, control="flatten")))
    request = cooling.decide(exit_job)
    assert isinstance(request, OrderRequest) and request.qty == 4


def test_max_open_positions_skips_a_buy_of_a_new_symbol_only(bench: Bench):
    bench.r.hset(bench.keys.positions, "AAPL", json.dumps({"qty": "3", "qty_available": "3", "avg_entry_price": "10",
                                                            "market_value": None, "side": "long"}))
    skip = decider(bench, breakers=BreakerLimits(max_open_positions=1)).decide(bench.job())
    assert isinstance(skip, Skip) and skip.reason == "max open positions 1 reached (AAPL): no new NVDA position"
    assert isinstance(decider(bench, breakers=BreakerLimits(max_open_positions=2)).decide(bench.job()), OrderRequest)


def test_a_signals_notional_limit_price_and_strategy_are_used(bench: Bench):
    notional = bench.job(bench.deliver(replace(bench.signal(), notional=Decimal("350"))))
    request = decider(bench, fixed_qty=None).decide(notional)
    assert isinstance(request, OrderRequest) and request.qty == 3  # $350 at the 100.01 ask: 3 whole shares
    limited = bench.job(bench.deliver(replace(bench.signal(qty="2"), limit_price=Decimal("99.50"))))
    request = decider(bench).decide(limited)
    assert isinstance(request, OrderRequest) and (request.type, request.limit_price) == ("limit", Decimal("99.50"))
    assert bench.ledger.get(limited.coid).cash == Decimal("199.00") * Decimal("1.005")  # reserved at its limit
    named = bench.job(bench.deliver(replace(bench.signal(), strategy="percent-of-equity")))
    skip = decider(bench).decide(named)  # no TRADEBOT_PERCENT configured: the named strategy says so
    assert isinstance(skip, Skip) and "percent-of-equity needs TRADEBOT_PERCENT" in skip.reason
    unknown = bench.job(bench.deliver(replace(bench.signal(), strategy="nope")))
    skip = decider(bench).decide(unknown)
    assert isinstance(skip, Skip) and skip.reason.startswith("unknown strategy 'nope'")


def test_a_blocked_account_takes_no_buy(bench: Bench):
    bench.r.hset(bench.keys.account, "trading_blocked", "1")
    skip = decider(bench).decide(bench.job())
    assert isinstance(skip, Skip) and skip.gate and "trading_blocked" in skip.reason
    assert bench.ledger.reservations() == []


def test_protective_legs_make_a_day_bracket_and_wrong_sides_are_refused(bench: Bench):
    legs = bench.job(bench.deliver(replace(bench.signal(qty="2"), stop_loss=Decimal(90), take_profit=Decimal(120))))
    request = decider(bench).decide(legs)
    assert isinstance(request, OrderRequest) and request.order_class == "bracket" and request.time_in_force == "day"
    assert request.to_json()["stop_loss"] == {"stop_price": "90"}
    one = bench.job(bench.deliver(replace(bench.signal(qty="1"), stop_loss=Decimal(95))))
    assert decider(bench).decide(one).order_class == "oto"  # type: ignore[union-attr]
    above = bench.job(bench.deliver(replace(bench.signal(qty="1"), stop_loss=Decimal(101))))
    skip = decider(bench).decide(above)
    assert isinstance(skip, Skip) and skip.reason == "stop_loss 101 is not below the price 100.01"


def test_an_old_signal_is_a_skip_but_not_a_gate(bench: Bench):
    job = bench.job(bench.deliver(bench.signal(age=120.0)))
    skip = decider(bench).decide(job)
    assert isinstance(skip, Skip) and not skip.gate and skip.qty is None
    assert skip.reason.startswith("signal is 120"), skip.reason
    assert bench.ledger.reservations() == []


def test_a_stale_price_is_a_skip(bench: Bench):
    bench.r.hset(bench.keys.prices(SYMBOL), "polled_at", repr(time.time() - 30))
    skip = decider(bench).decide(bench.job())
    assert isinstance(skip, Skip) and not skip.gate
    assert skip.reason.startswith("price of NVDA is 30"), skip.reason
    assert bench.ledger.reservations() == []


def test_a_closed_market_is_a_gate_skip(bench: Bench):
    bench.exchange.clock.mode = "closed"
    bench.refresh()
    skip = decider(bench).decide(bench.job())
    assert isinstance(skip, Skip) and skip.gate and "market is closed" in skip.reason, skip


def test_not_enough_cash_is_a_skip(bench: Bench):
    job = bench.job()
    skip = decider(bench, fixed_qty=Decimal(2000)).decide(job)  # 2000 x 100.01 > 100000
    assert isinstance(skip, Skip) and not skip.gate
    assert skip.reason.startswith("no cash left to buy NVDA: "), skip.reason
    assert bench.ledger.reservations() == []


def test_cash_reserved_by_other_orders_in_flight_counts(bench: Bench):
    bench.ledger.reserve_buy("tb-other", SYMBOL, ASK, qty=Decimal(900))  # another worker's buy in flight
    skip = decider(bench, fixed_qty=Decimal(100)).decide(bench.job())  # 900 + 100 shares > the cash
    assert isinstance(skip, Skip) and skip.reason.startswith("no cash left to buy NVDA"), skip
    assert [res.client_order_id for res in bench.ledger.reservations()] == ["tb-other"]


def test_a_sell_without_shares_is_a_skip(bench: Bench):
    job = bench.job(bench.deliver(bench.signal("sell")))
    assert decider(bench, strategy="all-in", fixed_qty=None).decide(job) == Skip("no NVDA shares to sell")
    assert bench.ledger.reservations() == []


def test_the_order_notional_limit_is_a_skip(bench: Bench):
    bench.settings = replace(bench.settings, max_order_notional=Decimal(500))
    skip = decider(bench, fixed_qty=Decimal(10)).decide(bench.job())
    assert skip == Skip("order notional 1000.10 (10 x 100.01) exceeds the max 500.00")
    assert bench.ledger.reservations() == []
