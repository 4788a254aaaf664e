"""The price poller loop: the one writer of the market cache (see bot/market.py).

Every ``interval`` seconds one market-data request for all symbols; account and positions on a
slower cadence and when a worker asks (MarketCache.request_refresh, after every fill); the market
clock on its own cadence. Asks are coalesced: at most one refresh per ``refresh_min_interval``
seconds; an ask that comes sooner waits, merged with any others, for the next refresh, which runs
as soon as the interval allows (never dropped). Serving every ask at once cost GET /v2/account +
GET /v2/positions per order on top of its POST (3 trading requests per order against the
account's 200/min); nothing needs the refresh to be immediate, since the ledger counts settled
reservations until a refresh reflects them.

Ticks are scheduled on the monotonic clock at ``start + k * interval``; a tick that overruns its
slot is logged and the missed slots are skipped, never stacked. Broker and Redis failures are
logged and retried with capped exponential backoff; the cache keeps the last values meanwhile
(their ``polled_at`` shows how old they are). A stop request is checked between the calls of a
tick too (a tick makes up to four requests), so SIGTERM waits for one request at most, never a
whole tick.

Symbols Alpaca refuses (400 "invalid symbol: X", which fails the whole batch; the client splits it
so the others still update) are logged at WARNING once, left out of the price request, and asked
again every ``invalid_symbol_retry`` seconds (one extra request each) so a symbol that becomes valid
comes back on its own (logged at INFO). A market-data feed the plan does not cover
(FeedNotPermitted) is logged at ERROR once, with the fix; the client falls back to
TRADEBOT_DATA_FEED_FALLBACK when it is set.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from bot.alpaca.errors import AlpacaError, FeedNotPermitted
from bot.breakers import Breakers
from bot.keys import Keys
from bot.market import record_prices, write_account, write_clock, write_positions, write_prices
from bot.pnl import EQUITY_EVERY, record_equity
from bot.runtime import capped_backoff

log = logging.getLogger(__name__)

# Failures the loop expects and rides out; anything else is logged with its traceback, and survived too.
EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    AlpacaError, httpx.HTTPError, redis.ConnectionError, redis.TimeoutError)
# Longest single BLPOP between ticks, so that a stop request is seen promptly.
STOP_CHECK_SECONDS = 0.25
# BLPOP's timeout 0 means "forever": waits shorter than this are not worth a blocking call.
MIN_BLOCK_SECONDS = 0.01
# A symbol Alpaca refused as invalid is asked for again this often (seconds).
INVALID_SYMBOL_RETRY = 300.0


@dataclass
class TickSchedule:
    """Slots at ``start + k * interval`` on the monotonic clock; never drifts, never stacks."""

    start: float
    interval: float
    slot: int = 0

    @property
    def deadline(self) -> float:
        return self.start + self.slot * self.interval

    def advance(self, finished: float) -> int:
        """After the current slot's tick ended at ``finished``: move to the next slot still ahead.

        Returns how many slots the tick overran (0 when the next slot is still ahead); those are
        skipped, not run back to back.
        """
        following = self.slot + 1
        self.slot = max(following, self._first_slot_at(finished))
        return self.slot - following

    def postpone(self, not_before: float) -> None:
        """Back off: move to the first slot at or after ``not_before`` (keeps the grid)."""
        self.slot = max(self.slot, self._first_slot_at(not_before))

    def _first_slot_at(self, t: float) -> int:
        return math.ceil((t - self.start) / self.interval - 1e-9)


class Poller:
    """One instance per fleet (the cache has one writer). ``tick()`` is one iteration."""

    def __init__(self, client: Any, r: redis.Redis, keys: Keys, symbols: Iterable[str], interval: float = 1.0,
                 account_interval: float = 5.0, clock_interval: float = 30.0,
                 now: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 max_backoff: float = 30.0, stop_event: threading.Event | None = None,
                 refresh_min_interval: float = 1.0, breakers: Breakers | None = None,
                 invalid_symbol_retry: float = INVALID_SYMBOL_RETRY, price_history: float = 0.0) -> None:
        if interval <= 0 or account_interval <= 0 or clock_interval <= 0:
            raise ValueError("poller intervals must be > 0")
        if not refresh_min_interval >= 0:
            raise ValueError(f"refresh_min_interval must be >= 0, got {refresh_min_interval!r}")
        self.client = client
        self.r = r
        self.keys = keys
        self.symbols = list(dict.fromkeys(s.strip().upper() for s in symbols if s.strip()))
        if not self.symbols:
            raise ValueError("the poller needs at least one symbol")
        self.interval = interval
        self.account_interval = account_interval
        self.clock_interval = clock_interval
        self.now = now
        self.monotonic = monotonic
        self.max_backoff = max_backoff
        self.refresh_min_interval = refresh_min_interval
        self.stop_event = stop_event  # set by run(); checked between the calls of a tick
        self.breakers = breakers  # the equity breakers, judged after every account poll
        self.price_history = price_history  # seconds of polled prices kept for `tradebot record` (0: none)
        self._account_due = -math.inf
        self._equity_at = -math.inf  # monotonic time of the last equity point
        self._clock_due = -math.inf
        self._skipped_symbols: set[str] = set()
        # symbols Alpaca refused as invalid: symbol -> its message; asked again at _invalid_retry_due
        self.invalid_symbols: dict[str, str] = {}
        self.invalid_symbol_retry = invalid_symbol_retry
        self._invalid_retry_due = math.inf
        self._feed_reported = False  # a FeedNotPermitted was logged with its fix (once per process)
        self._refresh_pending = False  # a worker asked for account+positions and has not had them yet
        self._refresh_started = -math.inf  # monotonic start of the last account+positions refresh
        # a refresh served between ticks failed: the next tick retries it (keeps the tick's backoff)
        self._refresh_deferred = False
        self.consecutive_failures = 0
        # stats for tests and benchmarks
        self.ticks = 0
        self.overruns = 0
        self.errors = 0
        self.refreshes = 0  # account+positions refreshes served on request
        self.last_tick_requests = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ one iteration

    def tick(self) -> bool:
        """Prices; account+positions when due or asked for; clock when due. True when nothing failed."""
        before = self.client.request_count
        ok = self._guard("prices", self.poll_prices)
        if not self.stopping and self._guard("refresh request", self._take_refresh_requests):
            self._refresh_pending = True
        self._refresh_deferred = False
        if not self.stopping and (self._ask_servable() or self.monotonic() >= self._account_due):
            ok &= self._refresh_account()
        if not self.stopping and self.monotonic() >= self._clock_due:
            ok &= self._guard("clock", self.poll_clock)
        self.ticks += 1
        self.last_tick_requests = self.client.request_count - before
        self._note_outcome(ok)
        return ok

    def poll_prices(self) -> None:
        sent = self.now()
        retry = bool(self.invalid_symbols) and self.monotonic() >= self._invalid_retry_due
        asked = [s for s in self.symbols if retry or s not in self.invalid_symbols]
        try:
            if hasattr(type(self.client), "fetch_snapshots"):
                batch = self.client.fetch_snapshots(asked)
                snapshots, invalid = batch.snapshots, batch.invalid
            else:  # a plain client (tests): no invalid-symbol report
                snapshots, invalid = self.client.get_snapshots(asked), {}
        except FeedNotPermitted as exc:
            if not self._feed_reported:
                log.error("market data refused: %s", exc)
                self._feed_reported = True
            raise
        self._note_invalid(asked, invalid, retried=retry)
        valid = [s for s in asked if s not in self.invalid_symbols]
        skipped = write_prices(self.r, self.keys, snapshots, self.now(), as_of=sent, symbols=valid,
                               log_skips=False)
        self._log_skip_changes(skipped)
        if self.price_history > 0:
            record_prices(self.r, self.keys, snapshots, self.now(), keep=self.price_history)

    def _note_invalid(self, asked: list[str], invalid: dict[str, str], retried: bool) -> None:
        """Warn once per symbol Alpaca refuses; note when one is accepted again."""
        for symbol, message in invalid.items():
            key = symbol.upper()
            if key not in self.invalid_symbols:
                log.warning("symbol %s refused by Alpaca market data (%s): its price is not polled; fix "
                            "TRADEBOT_SYMBOLS (asked again every %.0fs)", key, message, self.invalid_symbol_retry)
            self.invalid_symbols[key] = message
        for symbol in [s for s in asked if s in self.invalid_symbols and s not in invalid]:
            log.info("symbol %s is accepted by Alpaca market data again: polling its price", symbol)
            del self.invalid_symbols[symbol]
        if retried or (invalid and self._invalid_retry_due == math.inf):
            self._invalid_retry_due = self.monotonic() + self.invalid_symbol_retry
        if not self.invalid_symbols:
            self._invalid_retry_due = math.inf

    def poll_account(self) -> None:
        """Account then positions; each written with the time its own request was sent."""
        sent = self.now()
        account = self.client.get_account()
        write_account(self.r, self.keys, account, self.now(), as_of=sent)
        if self.breakers is not None:
            self.breakers.check_equity(account.equity, account.last_equity)
        if self.monotonic() - self._equity_at >= EQUITY_EVERY:  # the equity curve, at most every 10 s
            record_equity(self.r, self.keys, account.equity, account.cash, self.now())
            self._equity_at = self.monotonic()
        if self.stopping:
            return  # positions at the next start; the account is not marked refreshed
        sent = self.now()
        positions = self.client.list_positions()
        write_positions(self.r, self.keys, positions, self.now(), as_of=sent)
        self._account_due = self.monotonic() + self.account_interval

    def _refresh_account(self) -> bool:
        """poll_account, counting served requests; a failed one stays pending for the next tick."""
        requested = self._refresh_pending
        self._refresh_started = self.monotonic()  # an attempt counts: it spent requests too
        if not self._guard("account and positions", self.poll_account):
            return False
        self._refresh_pending = False
        self.refreshes += int(requested)
        return True

    def poll_clock(self) -> None:
        sent = self.now()
        clock = self.client.get_clock()
        write_clock(self.r, self.keys, clock, self.now(), as_of=sent)
        self._clock_due = self.monotonic() + self.clock_interval

    def _refresh_hold(self) -> float:
        """Seconds until a refresh asked for may run (<= 0: now)."""
        return self._refresh_started + self.refresh_min_interval - self.monotonic()

    def _ask_servable(self) -> bool:
        return self._refresh_pending and self._refresh_hold() <= 0

    def _take_refresh_requests(self) -> bool:
        # DEL consumes every pending request at once; they all ask for the same refresh
        return bool(self.r.delete(self.keys.refresh_request))

    # ------------------------------------------------------------------ the loop

    @property
    def stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    # called after every tick (a heartbeat's progress); a no-op unless the process sets it
    on_tick: Callable[[], None] = staticmethod(lambda: None)

    def run(self, stop_event: threading.Event) -> None:
        log.info("price poller: %d symbols every %.2fs, account every %.1fs, clock every %.1fs",
                 len(self.symbols), self.interval, self.account_interval, self.clock_interval)
        self.stop_event = stop_event
        schedule = TickSchedule(self.monotonic(), self.interval)
        while not stop_event.is_set():
            started = self.monotonic()
            self.tick()
            self.on_tick()
            finished = self.monotonic()
            overran = schedule.advance(finished)
            if overran:
                self.overruns += 1
                log.warning("tick took %.3fs, longer than the %.3fs interval: skipping %d missed tick(s)",
                            finished - started, self.interval, overran)
            if self.consecutive_failures:
                schedule.postpone(started + self.backoff_delay())
            self.wait_until(schedule.deadline, stop_event)
        log.info("price poller stopped after %d ticks (%d errors, %d overruns)", self.ticks, self.errors,
                 self.overruns)

    def wait_until(self, deadline: float, stop_event: threading.Event) -> None:
        """Wait for the next tick on the refresh-request list, serving asks as soon as
        ``refresh_min_interval`` allows. While an ask is held, the list is left alone: asks that
        arrive meanwhile pile up there and the one refresh takes them all."""
        while not stop_event.is_set():
            remaining = deadline - self.monotonic()
            if remaining < MIN_BLOCK_SECONDS:
                return
            if self._refresh_pending:
                if self._refresh_deferred or self.consecutive_failures:
                    stop_event.wait(min(remaining, STOP_CHECK_SECONDS))  # the next tick retries it
                    continue
                hold = self._refresh_hold()
                if hold <= 0:
                    self.serve_refresh()
                else:
                    stop_event.wait(min(remaining, hold, STOP_CHECK_SECONDS))
                continue
            block = min(remaining, STOP_CHECK_SECONDS)
            try:
                popped = self.r.blpop([self.keys.refresh_request], timeout=block)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Redis is down: the tick will report it; just don't spin
                log.debug("waiting on %s failed: %s", self.keys.refresh_request, exc)
                stop_event.wait(block)
                continue
            if popped:
                self._refresh_pending = True  # served on the next turn, now or when the interval allows

    def serve_refresh(self) -> bool:
        """Between ticks: take the workers' asks and, if ``refresh_min_interval`` has passed since the
        last refresh, refresh account and positions for all of them at once. An ask that is not
        served yet stays pending; a failed refresh is left to the next tick. True when one ran and
        succeeded."""
        if self._guard("refresh request", self._take_refresh_requests):
            self._refresh_pending = True
        if not self._ask_servable() or self._refresh_deferred:
            return False
        served = self._refresh_account()
        self._refresh_deferred = not served
        return served

    def backoff_delay(self) -> float:
        """Capped exponential gap between the starts of failed ticks: 1, 2, 4 ... intervals, up to max_backoff."""
        return capped_backoff(self.consecutive_failures, base=self.interval, cap=self.max_backoff)

    # ------------------------------------------------------------------ failures and logs

    def _guard(self, what: str, step: Callable[[], Any]) -> Any:
        """Run one step; a failure is counted and logged, never raised. False when it failed."""
        try:
            result = step()
        except EXPECTED_FAILURES as exc:
            # a feed refusal was just logged at ERROR with its fix: its repeats stay quiet
            self._failed(what, f"{type(exc).__name__}: {exc}", quiet=isinstance(exc, FeedNotPermitted))
            return False
        except Exception as exc:  # a bug or a broker surprise: keep polling, but show the traceback
            self._failed(what, f"{type(exc).__name__}: {exc}", trace=True)
            return False
        return True if result is None else result

    def _failed(self, what: str, reason: str, trace: bool = False, quiet: bool = False) -> None:
        self.errors += 1
        self.last_error = f"{what}: {reason}"
        # the first failure of a streak at WARNING, the rest quieter until it recovers
        level = logging.WARNING if (self.consecutive_failures == 0 and not quiet) or trace else logging.DEBUG
        log.log(level, "poll of %s failed: %s", what, reason, exc_info=trace)

    def _note_outcome(self, ok: bool) -> None:
        if ok:
            if self.consecutive_failures:
                log.info("price poller recovered after %d failed tick(s)", self.consecutive_failures)
            self.consecutive_failures = 0
            return
        self.consecutive_failures += 1
        if self.consecutive_failures in (1, 5) or self.consecutive_failures % 30 == 0:
            log.warning("price poller: %d failed tick(s) in a row (last: %s); next try in %.1fs",
                        self.consecutive_failures, self.last_error, self.backoff_delay())

    def _log_skip_changes(self, skipped: dict[str, str]) -> None:
        """Warn once when a symbol's price stops being written, note when it comes back."""
        for symbol, reason in skipped.items():
            if symbol not in self._skipped_symbols:
                log.warning("price of %s not written (the cached one ages): %s", symbol, reason)
        for symbol in self._skipped_symbols - skipped.keys():
            log.info("price of %s is written again", symbol)
        self._skipped_symbols = set(skipped)
