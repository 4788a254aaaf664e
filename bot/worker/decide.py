"""Decide: the gates, a fresh price, the strategy's size and the ledger's reservation -> an order to send."""
from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal

from bot.alpaca.models import OrderRequest
from bot.codec import decimal_text
from bot.keys import Keys
from bot.ledger import InsufficientCash, InsufficientShares, Ledger, LedgerError, Reservation
from bot.market import MarketDataError, MarketSnapshot, Price
from bot.risk import (
    RiskLimits,
    buy_cash_cap,
    check_order_notional,
    check_position_value,
    pre_trade_check,
    sell_qty_cap,
)
from bot.signals import Signal
from bot.strategies import ALL_IN, OrderPlan, plan_buy, plan_sell
from bot.worker.config import WorkerConfig
from bot.worker.records import Job, Skip

log = logging.getLogger(__name__)


class Refused(Exception):
    """Raised inside a stage when a check says no; the stage returns its ``skip``."""

    def __init__(self, reason: str, *, gate: bool = False) -> None:
        super().__init__(reason)
        self.skip = Skip(reason, gate=gate)


class Gates:
    """The pre-trade gates (their order is ``bot.risk.pre_trade_check``'s) and the price's freshness,
    as one snapshot of the cache shows them. Used by decide, and by submit right before the POST."""

    def __init__(self, keys: Keys, limits: RiskLimits, clock: Callable[[], float]) -> None:
        self.keys, self.limits, self.clock = keys, limits, clock
        self.state_keys = (keys.halt, keys.reduce_only)  # what a snapshot must read for these gates

    def session_open(self, signal: Signal, market: MarketSnapshot) -> bool:
        """True when the regular session is open (False: closed, extended hours allowed); Refused if not."""
        now = self.clock()
        clock_error = None
        try:
            clock = market.clock()
        except MarketDataError as exc:  # a corrupt clock hash counts as no clock
            clock, clock_error = None, str(exc)
        session_open = clock.open_at(now) if clock is not None else None
        refusal = pre_trade_check(halt_reason=market.value(self.keys.halt), source_at=signal.source_at, now=now,
                                  reduce_only_reason=market.value(self.keys.reduce_only), side=signal.side,
                                  clock_is_open=session_open, limits=self.limits,
                                  clock_age=clock.age if clock is not None else None, clock_error=clock_error)
        if refusal is not None:
            raise Refused(refusal.reason, gate=refusal.gate)
        return bool(session_open)

    @staticmethod
    def fresh_price(market: MarketSnapshot) -> Price:
        try:
            return market.price()
        except MarketDataError as exc:  # StalePrice, StaleQuote, NoPrice, a corrupt hash
            raise Refused(str(exc)) from None


class Decider:
    def __init__(self, *, gates: Gates, ledger: Ledger, limits: RiskLimits, weights: dict[str, Decimal],
                 config: WorkerConfig) -> None:
        self.gates, self.ledger, self.limits = gates, ledger, limits
        self.weights = weights
        self.config = config

    def decide(self, job: Job) -> OrderRequest | Skip:
        """The order to send for ``job`` (its cash or shares reserved in the ledger), or why none."""
        try:
            return self._plan(job)
        except Refused as refused:
            return refused.skip

    def _plan(self, job: Job) -> OrderRequest:
        signal, market = job.signal, job.market
        extended = not self.gates.session_open(signal, market)  # only reached when extended hours are allowed
        price = self.gates.fresh_price(market)
        quote = price.for_side(signal.side)
        if quote is None:
            raise Refused(f"no {'ask' if signal.side == 'buy' else 'bid'} and no last trade for {signal.ticker}")
        # outside the regular session Alpaca takes only limit orders (day, extended_hours=true)
        order_type = "limit" if extended else self.config.order_type
        try:
            if signal.side == "buy":
                plan, reservation = self._size_buy(job, quote, order_type)
            else:
                plan, reservation = self._size_sell(job, price.bid or quote, quote, order_type)
        except ValueError as exc:  # the strategy cannot size it (weight 0, no qty...)
            raise Refused(str(exc)) from None
        plan = plan.sized(reservation.qty)
        return OrderRequest(symbol=signal.ticker, side=signal.side, client_order_id=job.coid, qty=plan.qty,
                            type=plan.order_type, time_in_force="day" if extended else plan.time_in_force,
                            limit_price=plan.limit_price, extended_hours=extended)

    def _size_buy(self, job: Job, ask: Decimal, order_type: str) -> tuple[OrderPlan, Reservation]:
        signal, config = job.signal, self.config
        account = job.market.account()
        if account is None:
            raise Refused("account not in the market cache: is the price poller running?")
        held = _held_qty(job.market)
        all_in = config.strategy == ALL_IN
        weight = self.weights.get(signal.ticker, Decimal(0))
        plan = plan_buy(config.strategy, weight=weight, equity=account.equity, ask=ask, signal_qty=signal.qty,
                        fixed_qty=config.fixed_qty, fixed_notional=config.fixed_notional, order_type=order_type,
                        slippage_bps=config.slippage_bps, position_value=held * ask if all_in else None)
        price = plan.reserve_price(ask)
        qty: Decimal | None
        if all_in:
            # sized to the risk limits rather than stopped by them, unless not even one share fits
            cap = buy_cash_cap(self.limits, current_qty=held, price=price)
            if cap < self.ledger.buffered_price(price):
                raise Refused(check_order_notional(Decimal(1), price, self.limits)
                              or check_position_value(held, Decimal(1), price, self.limits)
                              or f"the risk limits leave {cap:.2f} for {signal.ticker}: less than one share")
            max_cash = cap if plan.max_cash is None else min(plan.max_cash, cap)
            qty = None
        else:
            qty, max_cash = plan.qty, None
            self._check_value(held, qty, price)
        # the position limit once every buy in flight fills, enforced inside the ledger's script:
        # `held` is the cached position, which does not show other workers' orders in flight
        target = self.limits.max_position_value
        if all_in:
            target = min(target, weight * account.equity)
        try:
            reservation = self.ledger.reserve_buy(job.coid, signal.ticker, price, qty=qty, max_cash=max_cash,
                                                  max_position_qty=target / price)
        except InsufficientCash as exc:
            budget = (f" (all-in: weight {decimal_text(weight)} x equity {decimal_text(account.equity)}, less the "
                      f"{decimal_text((held * ask).quantize(Decimal('0.01')))} held)" if all_in else "")
            raise Refused(f"no cash left to buy {signal.ticker}{budget}: {exc}") from None
        except LedgerError as exc:  # the position limit, no cached account, a corrupt cache entry
            raise Refused(str(exc)) from None
        if reservation.side != "buy" or reservation.qty <= 0:
            raise Refused(f"reservation {job.coid} does not fit a buy of {signal.ticker}")
        self._check_value(held, reservation.qty, price)  # a reused reservation is checked too
        return plan, reservation

    def _size_sell(self, job: Job, bid: Decimal, quote: Decimal, order_type: str) -> tuple[OrderPlan, Reservation]:
        signal, config = job.signal, self.config
        plan = plan_sell(config.strategy, bid=bid, signal_qty=signal.qty, fixed_qty=config.fixed_qty,
                         order_type=order_type, slippage_bps=config.slippage_bps)
        max_qty = None
        price = plan.reserve_price(quote)
        if plan.qty is None:
            # all-in: sell what one order may (max_order_notional), not nothing: a position worth more
            # than the limit is closed over several sell signals instead of never
            max_qty = sell_qty_cap(self.limits, price)
            if max_qty < 1:
                raise Refused(check_order_notional(Decimal(1), price, self.limits)
                              or f"max order notional allows no whole share of {signal.ticker}")
        try:
            reservation = self.ledger.reserve_sell(job.coid, signal.ticker, qty=plan.qty, max_qty=max_qty)
        except InsufficientShares as exc:
            if exc.available <= 0:
                raise Refused(f"no {signal.ticker} shares to sell") from None
            raise Refused(f"not enough {signal.ticker} shares to sell: {exc}") from None
        except LedgerError as exc:
            raise Refused(str(exc)) from None
        reason = check_order_notional(reservation.qty, price, self.limits)
        if reason:
            raise Refused(reason)
        if max_qty is not None and reservation.qty == max_qty:
            log.info("worker %s: all-in sell of %s capped at %s shares by the max order notional %s",
                     config.consumer, signal.ticker, reservation.qty, self.limits.max_order_notional)
        return plan, reservation

    def _check_value(self, held: Decimal, qty: Decimal | None, price: Decimal) -> None:
        reason = (check_order_notional(qty, price, self.limits)
                  or check_position_value(held, qty, price, self.limits))
        if reason:
            raise Refused(reason)


def _held_qty(market: MarketSnapshot) -> Decimal:
    try:
        position = market.position()
    except MarketDataError as exc:
        raise Refused(str(exc)) from None
    return max(position.qty, Decimal(0)) if position is not None else Decimal(0)
