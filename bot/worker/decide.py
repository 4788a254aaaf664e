"""Decide: the gates, a fresh price, the strategy's size and the ledger's reservation -> an order to send."""
from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from bot.alpaca.models import OrderRequest
from bot.codec import decimal_text
from bot.config import ConfigError
from bot.keys import Keys
from bot.ledger import InsufficientCash, InsufficientShares, Ledger, LedgerError, Reservation
from bot.market import MarketCache, MarketDataError, MarketSnapshot, Price
from bot.risk import (
    RiskLimits,
    buy_cash_cap,
    check_order_notional,
    check_position_value,
    pre_trade_check,
    sell_qty_cap,
)
from bot.signals import FLATTEN, Signal
from bot.strategies import OrderPlan, checked_intent, limit_price_for
from bot.strategy import Intent, MarketView, Pass, SignalView, Strategies, StrategyMap, StrategySettings
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
        # a control signal (flatten) is the exit the halt exists for: the trading state does not hold it
        control = signal.control is not None
        refusal = pre_trade_check(halt_reason=None if control else market.value(self.keys.halt),
                                  source_at=signal.source_at, now=now,
                                  reduce_only_reason=None if control else market.value(self.keys.reduce_only),
                                  side=signal.side,
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
                 config: WorkerConfig, strategies: Strategies | None = None, market: MarketCache | None = None) -> None:
        self.gates, self.ledger, self.limits = gates, ledger, limits
        self.market = market if market is not None else MarketCache(ledger.r, gates.keys)
        self.weights = weights
        self.config = config
        self.strategies = strategies if strategies is not None else Strategies(StrategyMap.parse(config.strategy))

    def decide(self, job: Job) -> OrderRequest | Skip:
        """The order to send for ``job`` (its cash or shares reserved in the ledger), or why none."""
        try:
            return self._plan(job)
        except Refused as refused:
            return refused.skip

    def _plan(self, job: Job) -> OrderRequest:
        signal, market = job.signal, job.market
        extended = not self.gates.session_open(signal, market)  # only reached when extended hours are allowed
        if signal.control is None:  # an exit is never held back by these
            self._cooldown(job)
            if signal.side == "buy":
                self._open_positions(job)
        price = self.gates.fresh_price(market)
        quote = price.for_side(signal.side)
        if quote is None:
            raise Refused(f"no {'ask' if signal.side == 'buy' else 'bid'} and no last trade for {signal.ticker}")
        # outside the regular session Alpaca takes only limit orders (day, extended_hours=true); a
        # signal's own limit price makes one too
        order_type = "limit" if extended or signal.limit_price is not None else self.config.order_type
        try:
            if signal.side == "buy":
                plan, reservation = self._size_buy(job, quote, order_type)
            else:
                plan, reservation = self._size_sell(job, price.bid or quote, quote, order_type)
        except ValueError as exc:  # the strategy cannot size it (weight 0, no qty...)
            raise Refused(str(exc)) from None
        plan = plan.sized(reservation.qty)  # the ledger's qty: the strategy's, or what the cash buys
        legs = signal.stop_loss is not None or signal.take_profit is not None
        if legs:
            self._check_legs(signal, quote, plan.qty)
        # Alpaca takes bracket/OTO entries as DAY (or GTC) orders only, never IOC
        tif = "day" if extended or legs else plan.time_in_force
        return OrderRequest(symbol=signal.ticker, side=signal.side, client_order_id=job.coid, qty=plan.qty,
                            type=plan.order_type, time_in_force=tif, limit_price=plan.limit_price,
                            extended_hours=extended, stop_loss=signal.stop_loss, take_profit=signal.take_profit)

    @staticmethod
    def _check_legs(signal: Signal, quote: Decimal, qty: Decimal | None) -> None:
        """Alpaca's bracket rules against the price now: a whole-share entry, the take-profit above
        and the stop-loss below the price (a buy's legs), so the broker does not refuse the order."""
        if qty is None or qty != qty.to_integral_value():
            raise Refused(f"protective legs need a whole-share entry, got {qty}")
        if signal.take_profit is not None and signal.take_profit <= quote:
            raise Refused(f"take_profit {signal.take_profit} is not above the price {quote}")
        if signal.stop_loss is not None and signal.stop_loss >= quote:
            raise Refused(f"stop_loss {signal.stop_loss} is not below the price {quote}")

    def _size_buy(self, job: Job, ask: Decimal, order_type: str) -> tuple[OrderPlan, Reservation]:
        signal = job.signal
        account = job.market.account()
        if account is None:
            raise Refused("account not in the market cache: is the price poller running?")
        if account.trading_blocked or account.account_blocked:
            which = "account_blocked" if account.account_blocked else "trading_blocked"
            raise Refused(f"the broker reports the account {which}: no buys (see the Alpaca dashboard)", gate=True)
        held = _held_qty(job.market)
        limit_price = self._limit_price(job, "buy", ask, order_type)
        price = limit_price if limit_price is not None else ask
        name, intent = self._intent(job, price, account, held)
        qty: Decimal | None
        if intent.qty is None:
            # sized to the risk limits rather than stopped by them, unless not even one share fits
            cap = buy_cash_cap(self.limits, current_qty=held, price=price)
            if cap < self.ledger.buffered_price(price):
                raise Refused(check_order_notional(Decimal(1), price, self.limits)
                              or check_position_value(held, Decimal(1), price, self.limits)
                              or f"the risk limits leave {cap:.2f} for {signal.ticker}: less than one share")
            max_cash = cap if intent.max_cash is None else min(intent.max_cash, cap)
            qty = None
        else:
            qty, max_cash = intent.qty, None
            self._check_value(held, qty, price)
        # the position limit once every buy in flight fills, enforced inside the ledger's script:
        # `held` is the cached position, which does not show other workers' orders in flight
        target = self.limits.max_position_value
        if intent.max_position_value is not None:
            target = min(target, intent.max_position_value)
        try:
            reservation = self.ledger.reserve_buy(job.coid, signal.ticker, price, qty=qty, max_cash=max_cash,
                                                  max_position_qty=target / price)
        except InsufficientCash as exc:
            budget = f" ({name}: at most {decimal_text(max_cash)})" if max_cash is not None else ""
            raise Refused(f"no cash left to buy {signal.ticker}{budget}: {exc}") from None
        except LedgerError as exc:  # the position limit, no cached account, a corrupt cache entry
            raise Refused(str(exc)) from None
        if reservation.side != "buy" or reservation.qty <= 0:
            raise Refused(f"reservation {job.coid} does not fit a buy of {signal.ticker}")
        self._check_value(held, reservation.qty, price)  # a reused reservation is checked too
        return OrderPlan("buy", None, max_cash, order_type, "ioc", limit_price), reservation

    def _size_sell(self, job: Job, bid: Decimal, quote: Decimal, order_type: str) -> tuple[OrderPlan, Reservation]:
        signal, config = job.signal, self.config
        limit_price = self._limit_price(job, "sell", bid, order_type)
        # a sell limit below the bid fills at the bid: the notional caps count that, not the limit
        price = max(limit_price, quote) if limit_price is not None else quote
        account = job.market.account()
        if account is None:
            raise Refused("account not in the market cache: is the price poller running?")
        _name, intent = self._intent(job, price, account, _held_qty(job.market))
        max_qty = None
        if intent.qty is None:
            # every share available, in what one order may (max_order_notional), not nothing: a
            # position worth more than the limit is closed over several sell signals instead of never
            max_qty = sell_qty_cap(self.limits, price)
            if max_qty < 1:
                raise Refused(check_order_notional(Decimal(1), price, self.limits)
                              or f"max order notional allows no whole share of {signal.ticker}")
        try:
            reservation = self.ledger.reserve_sell(job.coid, signal.ticker, qty=intent.qty, max_qty=max_qty)
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
            log.info("worker %s: sell of every %s share capped at %s by the max order notional %s",
                     config.consumer, signal.ticker, reservation.qty, self.limits.max_order_notional)
        return OrderPlan("sell", None, None, order_type, "ioc", limit_price), reservation

    def _limit_price(self, job: Job, side: str, quote: Decimal, order_type: str) -> Decimal | None:
        """The signal's limit price, else the quote plus (buys) or less (sells) the slippage."""
        if order_type != "limit":
            return None
        if job.signal.limit_price is not None:
            return job.signal.limit_price
        return limit_price_for(side, quote, self.config.slippage_bps)

    def _cooldown(self, job: Job) -> None:
        """A symbol filled less than TRADEBOT_COOLDOWN ago takes no new order (the key's ttl is the rest)."""
        cooldown = self.config.breakers.cooldown
        filled_at = job.market.value(self.gates.keys.cooldown(job.signal.ticker)) if cooldown else None
        if filled_at is not None:
            ago = max(self.gates.clock() - float(filled_at), 0.0)
            raise Refused(f"cooldown: {job.signal.ticker} filled {ago:.0f}s ago (TRADEBOT_COOLDOWN {cooldown:g}s)",
                          gate=True)

    def _open_positions(self, job: Job) -> None:
        """A buy of a symbol not held when TRADEBOT_MAX_OPEN_POSITIONS are open already is skipped."""
        limit = self.config.breakers.max_open_positions
        if limit is None or _held_qty(job.market) > 0:
            return
        try:
            held = sorted(s for s, p in self.market.positions().items() if p.qty > 0)
        except MarketDataError as exc:
            raise Refused(str(exc)) from None
        if len(held) >= limit:
            raise Refused(f"max open positions {limit} reached ({', '.join(held)}): no new {job.signal.ticker} "
                          "position", gate=True)

    def _intent(self, job: Job, price: Decimal, account: Any, held: Decimal) -> tuple[str, Intent]:
        """The strategy's answer for this ticker, checked: an Intent, or Refused with its reason."""
        signal, market = job.signal, job.market
        if signal.control == FLATTEN:
            return FLATTEN, Intent()  # every share available, whatever the strategy
        try:
            strategy = (self.strategies.named(signal.strategy) if signal.strategy
                        else self.strategies.for_ticker(signal.ticker))
        except ConfigError as exc:
            raise Refused(str(exc)) from None
        position = market.position()
        quote = market.price()
        view = MarketView(ticker=signal.ticker, bid=quote.bid, ask=quote.ask, price=price, equity=account.equity,
                          cash=account.cash, buying_power=account.buying_power, position_qty=held,
                          position_available=max(position.qty_available, Decimal(0)) if position is not None
                          else Decimal(0), session_open=True)
        try:
            answer = strategy.size(SignalView(signal.ticker, signal.side, signal.qty, signal.target_weight,
                                              signal.notional), view, self.strategy_settings(signal.ticker))
        except Exception as exc:  # a plug-in's bug: this signal is skipped with it, the worker carries on
            log.exception("worker %s: strategy %r failed on %s", self.config.consumer, strategy.name, job.entry_id)
            raise Refused(f"strategy {strategy.name!r} failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        if isinstance(answer, Pass):
            raise Refused(answer.reason)
        if not isinstance(answer, Intent):
            raise Refused(f"strategy {strategy.name!r} answered {type(answer).__name__}, not an Intent or a Pass")
        try:
            return strategy.name, checked_intent(answer, signal.side)
        except ValueError as exc:
            raise Refused(f"strategy {strategy.name!r}: {exc}") from None

    def strategy_settings(self, ticker: str) -> StrategySettings:
        config = self.config
        return StrategySettings(weight=self.weights.get(ticker, Decimal(0)), fixed_qty=config.fixed_qty,
                                fixed_notional=config.fixed_notional, percent=config.percent,
                                options=config.strategy_options)

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
