"""The Alpaca REST client: one sync httpx.Client per process, typed results, typed errors.

Retry policy, in one place:
- Reads (GET, and DELETE of an order) are retried on 429, 5xx and transport errors with
  exponential backoff plus jitter. A server hint replaces the backoff, capped at ``max_wait``:
  Retry-After on a 429 or 5xx; X-RateLimit-Reset only on a 429 or when X-RateLimit-Remaining is 0
  (a 5xx with budget left is a broker fault, not a rate window: it gets the backoff). A read makes
  at most ``1 + max_retries`` requests.
- An order submit (POST /v2/orders) is never re-sent blindly. When its outcome is unknown (timeout
  or transport error after the request may have left, 5xx, unreadable 2xx body) the order is looked
  up by client_order_id: found -> returned; 404 -> it did not land and may be sent again; lookup
  failed -> OrderOutcomeUnknown. A 429 or a failed connect means nothing was processed, so the POST
  is repeated after the wait. A duplicate client_order_id returns the existing order. At most
  ``max(1, max_retries)`` POSTs are sent per submit; if the last one's lookup says "not found" the
  submit ends with BrokerUnavailable (no order was placed as far as the broker can tell).
- A submit is bounded in time: no POST leaves later than ``submit_deadline`` seconds (or the call's
  ``deadline``) after submit_order was called. The rate-limit token is awaited at most until then
  and no wait is begun that would end past it; instead RateLimited / BrokerUnavailable is raised,
  and nothing was placed. (A lookup that settles an unknown outcome still runs to its end: it
  places nothing, and the caller needs its answer.)
- Once a POST of one submit had an unknown outcome, a later POST refused with 403 (insufficient
  funds or a trading refusal) or a non-duplicate 422 is not believed at once: the first POST may have landed and used
  the buying power, so the order is looked up again and returned when found.

Limiter: ``limiter.acquire(bucket)`` before every request (``acquire(bucket, timeout=...)`` for a
submit when the limiter takes a timeout, as bot.ratelimit.RateLimiter does). A limiter that gives up
(bot.ratelimit.RateLimitTimeout, also raised when its stop event is set) surfaces as RateLimited;
the request was not sent.

Rate-limit headers: X-RateLimit-Remaining/Reset of every response are kept in
``rate_limit_remaining``/``rate_limit_reset`` (and per bucket in ``rate_limits``) and passed to
``limiter.observe(bucket, remaining, reset)`` when the limiter has that method (either may be None).
X-RateLimit-Limit (the plan's requests per minute: 200, or 1,000 on higher trading tiers, 10,000 on
Algo Trader Plus data) is kept per bucket in ``announced_limits`` and passed as ``limit=`` to an
``observe`` that takes it (bot.ratelimit.RateLimiter does: the fleet's bucket then follows it).

403 refusals of an order keep the broker's words (``broker_message``, ``reason``, ``body``):
InsufficientFunds (kind ``buying_power`` | ``qty``) only for Alpaca's buying-power/qty refusals,
TradingForbidden(kind) for pattern-day-trading, wash-trade, shorting and account refusals. An order
that is later ``rejected`` carries no reason: Alpaca's Order object (spec) and trade_updates events
have no reason field, only ``status`` and ``failed_at``.

Market data: get_snapshots splits a batch Alpaca refuses with 400 "invalid symbol: X" (the whole
batch fails for one bad symbol) and goes on without X (fetch_snapshots reports it); a 403 for a feed
the plan does not cover switches to ``feed_fallback`` when one is set (TRADEBOT_DATA_FEED_FALLBACK),
else raises FeedNotPermitted with the fix.

Credentials travel only in the client's default headers: they are not in its repr, not in log
records and not in exception messages (wrapped httpx errors are re-raised ``from None`` with their
text scrubbed, so their requests and headers are not chained either).
"""
from __future__ import annotations

import email.utils
import functools
import inspect
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import InvalidOperation
from typing import Any, Protocol, TypeGuard, TypeVar
from urllib.parse import quote

import httpx

from bot.alpaca.errors import (
    AlpacaError,
    BrokerUnavailable,
    DuplicateClientOrderId,
    FeedNotPermitted,
    InsufficientFunds,
    InvalidOrder,
    NotFound,
    OrderOutcomeUnknown,
    RateLimited,
    TradingForbidden,
    Unauthorized,
)
from bot.alpaca.models import Account, Asset, Clock, Order, OrderRequest, Position, Snapshot
from bot.ratelimit import DATA, TRADING, RateLimitTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=15.0, write=10.0, pool=5.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=5, keepalive_expiry=30.0)
# Symbols per snapshot request; a longer list is split into several requests.
SNAPSHOT_SYMBOLS_PER_REQUEST = 100
# Alpaca refuses list limits above 500.
MAX_LIST_LIMIT = 500
USER_AGENT = "tradebot/0.1 (+httpx)"
# No POST of one submit_order call leaves later than this many seconds after the call: an order
# must reach the broker close to the risk checks that sized it.
DEFAULT_SUBMIT_DEADLINE = 5.0

# Alpaca's error codes (alpaca-api.md, section 4).
CODE_UNAUTHORIZED = 40110000
CODE_INSUFFICIENT = 40310000
CODE_VALIDATION = 40010001
_AUTH_MESSAGES = ("forbidden", "not authorized", "unauthorized", "access key", "api key", "authenticat")
_DUPLICATE_MESSAGES = ("client_order_id must be unique", "client order id must be unique")
# Transport errors raised before any byte of the request left: a POST that failed so is safe to repeat.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Transport errors worth another try (the rest, e.g. UnsupportedProtocol, are configuration faults).
_RETRYABLE_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)


@dataclass
class SnapshotBatch:
    """fetch_snapshots' answer: the snapshots, and the symbols Alpaca refused (symbol -> its message)."""

    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)


class Limiter(Protocol):
    def acquire(self, bucket: str) -> None: ...


class TimedLimiter(Protocol):
    """A limiter whose ``acquire`` can give up after ``timeout`` seconds (bot.ratelimit.RateLimiter)."""

    def acquire(self, bucket: str, timeout: float | None = None) -> None: ...


@dataclass(frozen=True)
class _Api:
    bucket: str  # limiter bucket: "trading" or "data"
    base_url: str


class _OutcomeUnknown(Exception):
    """Internal: a submit whose fate the response does not tell (reason is already scrubbed)."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class _NotProcessed(Exception):
    """Internal: a POST the broker did not process (429, or it failed before it was sent)."""

    def __init__(self, reason: str, server_delay: float | None, error: AlpacaError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.server_delay = server_delay
        self.error = error


def random_jitter(spread: float) -> float:
    """Random extra delay in [0, spread]."""
    return random.uniform(0.0, spread)


class AlpacaClient:
    """Alpaca Trading API v2 and Market Data API v2 (stocks) over one keep-alive httpx.Client.

    Create one per process and share it; it is safe to call from several threads.
    """

    def __init__(
        self,
        *,
        api_key: str,
        secret_key: str,
        base_url: str,
        data_url: str,
        feed: str = "iex",
        feed_fallback: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
        limiter: Limiter | None = None,
        max_retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_wait: float = 30.0,
        jitter: Callable[[float], float] = random_jitter,
        clock: Callable[[], float] = time.time,
        snapshot_batch: int = SNAPSHOT_SYMBOLS_PER_REQUEST,
        submit_deadline: float | None = DEFAULT_SUBMIT_DEADLINE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_header_value("api_key", api_key)
        _check_header_value("secret_key", secret_key)
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if snapshot_batch < 1:
            raise ValueError(f"snapshot_batch must be >= 1, got {snapshot_batch}")
        if submit_deadline is not None and not submit_deadline > 0:
            raise ValueError(f"submit_deadline must be > 0 seconds or None, got {submit_deadline}")
        self._secrets = tuple(s for s in (api_key, secret_key) if s)
        self.trading = _Api(TRADING, base_url.rstrip("/"))
        self.data = _Api(DATA, data_url.rstrip("/"))
        self.feed = feed
        self.configured_feed = feed
        # the feed used instead once Alpaca refuses ``feed`` for the plan (403 "subscription does not permit")
        self.feed_fallback = feed_fallback or None
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_wait = max_wait
        self.snapshot_batch = snapshot_batch
        self.submit_deadline = submit_deadline
        self._limiter = limiter
        self._timed_limiter: TimedLimiter | None = limiter if _takes_timeout(limiter) else None
        observe = getattr(limiter, "observe", None)
        self._observe: Callable[..., Any] | None = observe if callable(observe) else None
        self._observe_takes_limit = self._observe is not None and _takes_keyword(self._observe, "limit")
        self._monotonic = monotonic
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock
        self._lock = threading.Lock()
        self.request_count = 0
        self.route_counts: dict[tuple[str, str], int] = {}  # (route, status) -> requests
        # X-RateLimit-Remaining / -Reset of the last response that carried them, and per bucket
        self.rate_limit_remaining: int | None = None
        self.rate_limit_reset: float | None = None
        self.rate_limits: dict[str, tuple[int | None, float | None]] = {}
        # X-RateLimit-Limit (requests per minute) last announced per bucket
        self.announced_limits: dict[str, int] = {}
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        elif not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(float(timeout))
        self._http = httpx.Client(
            headers={"APCA-API-KEY-ID": api_key, "APCA-API-SECRET-KEY": secret_key, "User-Agent": USER_AGENT,
                     "Accept": "application/json"},
            timeout=timeout,
            limits=DEFAULT_LIMITS,
            transport=transport,
            follow_redirects=False,  # a redirect would be a misconfigured base URL; never re-send keys elsewhere
        )

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> AlpacaClient:
        options: dict[str, Any] = dict(
            api_key=settings.alpaca_api_key,
            secret_key=settings.alpaca_secret_key,
            base_url=settings.alpaca_base_url,
            data_url=settings.alpaca_data_url,
            feed=settings.data_feed,
            feed_fallback=getattr(settings, "data_feed_fallback", "") or None,
        )
        options.update(kw)
        return cls(**options)

    def __repr__(self) -> str:
        return (f"AlpacaClient(base_url={self.trading.base_url!r}, data_url={self.data.base_url!r}, "
                f"feed={self.feed!r}, requests={self.request_count})")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AlpacaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ account and positions

    def get_account(self) -> Account:
        return self._parse(Account.from_json, self._get_json(self.trading, "/v2/account"), "account")

    def list_positions(self) -> list[Position]:
        rows = self._get_json(self.trading, "/v2/positions")
        return [self._parse(Position.from_json, row, "position") for row in _as_list(rows, "positions")]

    def get_position(self, symbol: str) -> Position | None:
        """The open position in ``symbol``, or None when flat (Alpaca answers 404)."""
        try:
            data = self._get_json(self.trading, f"/v2/positions/{_seg(symbol)}")
        except NotFound:
            return None
        return self._parse(Position.from_json, data, "position")

    # ------------------------------------------------------------------ orders

    def submit_order(self, request: OrderRequest, *, deadline: float | None = None) -> Order:
        """Place an order exactly once; see the module docstring for how unknown outcomes are settled.

        ``deadline``: seconds from now after which no POST may leave (default ``submit_deadline``).
        """
        if not request.client_order_id:
            raise ValueError("submit_order needs a client_order_id: without one a lost response cannot be resolved")
        body = request.to_json()
        coid = request.client_order_id
        budget = self.submit_deadline if deadline is None else deadline
        not_after = None if budget is None else self._monotonic() + budget
        max_posts = max(1, self.max_retries)
        maybe_landed = False  # an earlier POST of this call had an unknown outcome
        reason = ""
        refusal: AlpacaError | None = None  # what to raise when a 'not processed' POST cannot be re-sent
        for post in range(1, max_posts + 1):
            if post > 1 and self._past(not_after):
                raise self._unsent(coid, maybe_landed, f"{reason}; the submit deadline ({budget:.1f}s) passed "
                                                       "before it could be sent again")
            try:
                return self._post_order(body, not_after)
            except _OutcomeUnknown as unknown:
                maybe_landed = True
                landed = self._settle_unknown_submit(coid, unknown)
                if landed is not None:
                    return landed
                reason = f"{unknown.reason}; lookup by client_order_id {coid}: not found"
                delay = self._backoff(post)
                refusal = None
            except _NotProcessed as refused:
                reason = refused.reason
                delay = refused.server_delay if refused.server_delay is not None else self._backoff(post)
                refusal = refused.error
                if post == max_posts:
                    raise refused.error from None
            except DuplicateClientOrderId as duplicate:
                return self._existing_order(request, duplicate)
            except (InsufficientFunds, TradingForbidden, InvalidOrder) as refused_order:
                if maybe_landed:
                    return self._landed_despite_refusal(coid, refused_order)
                raise
            if post < max_posts:
                try:
                    self._wait_to_resend(coid, reason, delay, not_after, refusal)
                except BrokerUnavailable as unsent:
                    raise self._unsent(coid, maybe_landed, str(unsent)) from None
                self._log_retry("POST", "/v2/orders", reason, delay, post + 1, max_posts)
                self._sleep(delay)
        raise self._unsent(coid, maybe_landed, f"{reason} ({max_posts} attempts)")

    @staticmethod
    def _unsent(coid: str, maybe_landed: bool, reason: str) -> AlpacaError:
        """The error for a submit that ends without an order: BrokerUnavailable when no POST of it
        can have landed; OrderOutcomeUnknown when one had an unknown outcome, even though the lookup
        said "not found": the POST may still be on its way to the broker (a 404 is not proof)."""
        if maybe_landed:
            return OrderOutcomeUnknown(f"order {coid}: outcome unknown ({reason}); it may still appear at the "
                                       "broker", client_order_id=coid)
        return BrokerUnavailable(f"order {coid} was not placed: {reason}")

    def get_order(self, order_id: str) -> Order:
        return self._parse(Order.from_json, self._get_json(self.trading, f"/v2/orders/{_seg(order_id)}"), "order")

    def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        """The order with this client_order_id, or None when the broker has none (404)."""
        try:
            data = self._get_json(self.trading, "/v2/orders:by_client_order_id",
                                  params={"client_order_id": client_order_id})
        except NotFound:
            return None
        return self._parse(Order.from_json, data, "order")

    def cancel_order(self, order_id: str) -> None:
        """Ask for a cancel (204). An order that is no longer cancelable (422) is not an error.

        Accepted means requested: the order may still fill first, so read it back.
        """
        response = self._call(self.trading, "DELETE", f"/v2/orders/{_seg(order_id)}", allow=(422,))
        if response.status_code == 422:
            log.info("order %s is no longer cancelable: %s", order_id, _error_body(response)[1])

    def list_orders(self, status: str = "all", limit: int | None = None, symbols: Iterable[str] | None = None,
                    direction: str = "desc", after: datetime | None = None,
                    until: datetime | None = None) -> list[Order]:
        """GET /v2/orders over as many pages as it takes: every matching order (``limit`` None), or
        the first ``limit`` of them in ``direction`` order. ``after``/``until`` bound the submission
        time (exclusive, as at Alpaca).

        Alpaca serves at most 500 a page; the next page moves ``until`` (desc) or ``after`` (asc) to
        the last submission time seen, one microsecond past it so that orders of that instant come
        again and are skipped by id (as orders_since does)."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        if direction not in ("asc", "desc"):
            raise ValueError(f"direction must be 'asc' or 'desc', got {direction!r}")
        wanted = list(symbols) if symbols else None
        result: list[Order] = []
        seen: set[str] = set()
        overlap = 0  # orders of the last page's edge instant, which the next page brings again
        while True:
            page = MAX_LIST_LIMIT if limit is None else min(MAX_LIST_LIMIT, limit - len(result) + overlap)
            rows = self._orders_page(status, page, wanted, direction, after, until)
            fresh = [order for order in rows if order.id not in seen]
            result.extend(fresh)
            seen.update(order.id for order in fresh)
            if limit is not None and len(result) >= limit:
                return result[:limit]
            times = [order.submitted_at or order.created_at for order in rows]
            known = [at for at in times if at is not None]
            if len(rows) < page or not fresh or not known:
                return result
            edge = min(known) if direction == "desc" else max(known)
            overlap = times.count(edge)
            if direction == "desc":
                until = edge + timedelta(microseconds=1)
            else:
                after = edge - timedelta(microseconds=1)

    def _orders_page(self, status: str, limit: int, symbols: list[str] | None, direction: str,
                     after: datetime | None, until: datetime | None) -> list[Order]:
        """One page of GET /v2/orders (at most 500)."""
        params: dict[str, Any] = {"status": status, "limit": min(max(1, limit), MAX_LIST_LIMIT),
                                  "direction": direction}
        if symbols:
            params["symbols"] = ",".join(symbols)
        for name, at in (("after", after), ("until", until)):
            if at is not None:
                params[name] = at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
        rows = self._get_json(self.trading, "/v2/orders", params=params)
        return [self._parse(Order.from_json, row, "order") for row in _as_list(rows, "orders")]

    def orders_since(self, after: datetime, status: str = "all", page: int = MAX_LIST_LIMIT) -> Iterator[Order]:
        """Every order submitted after ``after``, oldest first, over as many pages as it takes.

        Pages move on by submission time; orders of the page's last instant come again on the next
        page and are skipped by id, so none is lost between pages (a page of nothing new ends it;
        only more than a page of orders within one microsecond could hide some, which Alpaca's
        request rate rules out)."""
        seen: set[str] = set()
        while True:
            rows = self._orders_page(status, page, None, "asc", after, None)
            fresh = [order for order in rows if order.id not in seen]
            yield from fresh
            seen.update(order.id for order in fresh)
            times = [order.submitted_at or order.created_at for order in rows]
            last = max((at for at in times if at is not None), default=None)
            if len(rows) < page or not fresh or last is None:
                return
            after = last - timedelta(microseconds=1)

    # ------------------------------------------------------------------ market

    def get_clock(self) -> Clock:
        return self._parse(Clock.from_json, self._get_json(self.trading, "/v2/clock"), "clock")

    def get_asset(self, symbol: str) -> Asset:
        return self._parse(Asset.from_json, self._get_json(self.trading, f"/v2/assets/{_seg(symbol)}"), "asset")

    def get_snapshots(self, symbols: Iterable[str]) -> dict[str, Snapshot]:
        """Latest quote and trade per symbol: one request per ``snapshot_batch`` symbols.

        Symbols the feed has no data for are simply absent from the result, and so are symbols
        Alpaca refuses as invalid (see fetch_snapshots, which reports them).
        """
        return self.fetch_snapshots(symbols).snapshots

    def fetch_snapshots(self, symbols: Iterable[str]) -> SnapshotBatch:
        """get_snapshots, also telling which symbols Alpaca refused as invalid.

        Alpaca answers 400 ``{"message":"invalid symbol: X"}`` for a whole batch when one of its
        symbols is invalid. The batch is then sent again without X (Alpaca names it), or split in
        halves when the message names no symbol of the batch, until every valid symbol is answered;
        each refused symbol costs one more request. A 400 whose message is not about symbols (a bad
        feed, say) is raised as before.
        """
        wanted = list(dict.fromkeys(s.strip() for s in symbols if s and s.strip()))
        result = SnapshotBatch()
        pending = [wanted[start:start + self.snapshot_batch] for start in range(0, len(wanted), self.snapshot_batch)]
        pending.reverse()  # a stack: batches in order, the halves of a split batch before the rest
        while pending:
            batch = pending.pop()
            try:
                data = self._snapshot_request(batch)
            except InvalidOrder as refused:
                message = refused.broker_message or ""
                if refused.status != 400 or "symbol" not in message.lower():
                    raise
                named = _named_symbol(message, batch)
                if named is not None or len(batch) == 1:
                    bad = named if named is not None else batch[0]
                    result.invalid[bad] = message
                    rest = [s for s in batch if s != bad]
                    if rest:
                        pending.append(rest)
                else:
                    half = len(batch) // 2
                    pending.extend([batch[half:], batch[:half]])
                continue
            for symbol in batch:
                entry = data.get(symbol)
                if isinstance(entry, dict):
                    result.snapshots[symbol] = self._parse(functools.partial(Snapshot.from_json, symbol), entry,
                                                           "snapshot")
        if result.invalid:
            log.debug("market data refused as invalid: %s", ", ".join(sorted(result.invalid)))
        return result

    def _snapshot_request(self, batch: list[str]) -> dict[str, Any]:
        """One GET /v2/stocks/snapshots; a feed the plan does not cover switches to ``feed_fallback``
        once (logged at WARNING with the fix), else FeedNotPermitted."""
        while True:
            try:
                data = self._get_json(self.data, "/v2/stocks/snapshots",
                                      params={"symbols": ",".join(batch), "feed": self.feed})
                break
            except FeedNotPermitted as refused:
                if refused.feed != self.feed:
                    continue  # another thread switched the feed meanwhile: ask again on the new one
                fallback = self.feed_fallback
                if not fallback or fallback == refused.feed:
                    raise
                log.warning("market data: %s; falling back to feed %r (TRADEBOT_DATA_FEED_FALLBACK) for the rest "
                            "of this process", refused, fallback)
                self.feed = fallback
        if not isinstance(data, dict):
            raise AlpacaError(f"GET /v2/stocks/snapshots: expected a JSON object, got {type(data).__name__}")
        if isinstance(data.get("snapshots"), dict) and "snapshots" not in batch:
            data = data["snapshots"]  # tolerate the wrapped shape some Alpaca versions return
        return data

    # ------------------------------------------------------------------ submit internals

    def _post_order(self, body: Mapping[str, Any], not_after: float | None = None) -> Order:
        """One POST (not sent after ``not_after``, monotonic). Raises _OutcomeUnknown, _NotProcessed,
        RateLimited (no token in time: not sent) or the typed refusal."""
        path = "/v2/orders"
        try:
            response = self._send(self.trading, "POST", path, json=body, not_after=not_after)
        except _NOT_SENT as exc:
            raise _NotProcessed(self._describe(exc), None, self._transport_error("POST", path, exc)) from None
        except httpx.RequestError as exc:
            raise _OutcomeUnknown(self._describe(exc)) from None
        status = response.status_code
        if response.is_success:
            try:
                return Order.from_json(response.json())
            except (ValueError, KeyError, TypeError, InvalidOperation):
                # it was accepted, but we cannot read what: ask for it by client_order_id
                raise _OutcomeUnknown(f"unreadable HTTP {status} body", status) from None
        if status >= 500:
            raise _OutcomeUnknown(f"HTTP {status}", status)
        error = self._error_for("POST", path, response)
        if status == 429:
            # refused before processing: safe to send again once the window allows
            raise _NotProcessed(f"HTTP {status}", self._server_delay(response), error)
        raise error

    def _settle_unknown_submit(self, coid: str, unknown: _OutcomeUnknown) -> Order | None:
        """Did the POST land? The order if it did, None if not; OrderOutcomeUnknown if we cannot tell."""
        log.warning("order %s: outcome unknown after POST /v2/orders (%s); looking it up", coid, unknown.reason)
        try:
            return self.get_order_by_client_id(coid)
        except AlpacaError as exc:
            raise OrderOutcomeUnknown(
                f"order {coid}: POST /v2/orders ended with {unknown.reason} and the lookup failed: {exc}",
                client_order_id=coid, status=unknown.status) from None

    def _wait_to_resend(self, coid: str, reason: str, delay: float, not_after: float | None,
                        refusal: AlpacaError | None) -> None:
        """Raise (nothing was placed) when waiting ``delay`` before the next POST would pass ``not_after``."""
        if not_after is None or self._monotonic() + delay < not_after:
            return
        log.warning("order %s: not sent again after %s: waiting %.2fs would pass the submit deadline",
                    coid, reason, delay)
        if refusal is not None:
            raise refusal from None
        raise BrokerUnavailable(f"order {coid} was not placed: {reason}; waiting {delay:.2f}s to send it "
                                "again would pass the submit deadline")

    def _landed_despite_refusal(self, coid: str, refusal: AlpacaError) -> Order:
        """A re-sent POST was refused (403/422) after an earlier POST's outcome was unknown: the
        earlier one may have landed late (and used the buying power). The order if found, else the refusal."""
        log.warning("order %s: POST /v2/orders refused (%s) after an earlier POST's outcome was unknown; "
                    "looking it up again", coid, refusal)
        try:
            existing = self.get_order_by_client_id(coid)
        except AlpacaError as exc:
            raise OrderOutcomeUnknown(
                f"order {coid}: a POST with an unknown outcome was followed by the refusal {refusal} and the "
                f"lookup failed: {exc}", client_order_id=coid, status=refusal.status) from None
        if existing is None:
            raise refusal
        log.info("order %s: the earlier POST landed (id %s, %s): returning it", coid, existing.id, existing.status)
        return existing

    def _existing_order(self, request: OrderRequest, duplicate: DuplicateClientOrderId) -> Order:
        """A duplicate client_order_id means an earlier submit landed: return that order."""
        coid = request.client_order_id
        try:
            existing = self.get_order_by_client_id(coid)
        except AlpacaError as exc:
            raise OrderOutcomeUnknown(f"order {coid} exists (duplicate client_order_id) but the lookup failed: {exc}",
                                      client_order_id=coid, status=duplicate.status) from None
        if existing is None:
            raise duplicate  # the broker contradicts itself; surface its refusal rather than guess
        if (existing.symbol, existing.side) != (request.symbol, request.side):
            # the id was reused for a different order: still the broker's truth, but worth a loud note
            log.warning("order %s already exists as %s %s, not the requested %s %s", coid, existing.side,
                        existing.symbol, request.side, request.symbol)
        else:
            log.info("order %s already exists (id %s, %s): returning it", coid, existing.id, existing.status)
        return existing

    # ------------------------------------------------------------------ request plumbing

    def _get_json(self, api: _Api, path: str, params: Mapping[str, Any] | None = None) -> Any:
        response = self._call(api, "GET", path, params=params)
        try:
            return response.json()
        except ValueError:
            raise AlpacaError(f"GET {path}: response is not JSON (HTTP {response.status_code})",
                              status=response.status_code) from None

    def _call(self, api: _Api, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              allow: tuple[int, ...] = ()) -> httpx.Response:
        """A retried read: a 2xx response (or one with a status in ``allow``), else a typed error."""
        attempts = 1 + self.max_retries
        for attempt in range(1, attempts + 1):
            last = attempt == attempts
            try:
                response = self._send(api, method, path, params=params)
            except httpx.RequestError as exc:
                if last or not isinstance(exc, _RETRYABLE_TRANSPORT):
                    raise self._transport_error(method, path, exc) from None
                delay = self._backoff(attempt)
                self._log_retry(method, path, self._describe(exc), delay, attempt + 1, attempts)
                self._sleep(delay)
                continue
            status = response.status_code
            if response.is_success or status in allow:
                return response
            if last or not (status == 429 or status >= 500):
                raise self._error_for(method, path, response, params)
            asked = self._server_delay(response)
            delay = self._backoff(attempt) if asked is None else asked
            self._log_retry(method, path, f"HTTP {status}", delay, attempt + 1, attempts)
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, api: _Api, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              json: Any = None, not_after: float | None = None) -> httpx.Response:
        """Exactly one HTTP request, after the limiter allows it; never sent after ``not_after`` (monotonic)."""
        self._acquire(api.bucket, not_after)
        with self._lock:
            self.request_count += 1
        route = f"{method} {route_of(path)}"
        try:
            response = self._http.request(method, api.base_url + path, params=params, json=json)
        except httpx.RequestError:
            self._count(route, "error")
            raise
        self._count(route, str(response.status_code))
        self._observe_rate_headers(api.bucket, response)
        return response

    def _count(self, route: str, status: str) -> None:
        with self._lock:
            key = (route, status)
            self.route_counts[key] = self.route_counts.get(key, 0) + 1

    def requests_by_route(self) -> list[dict[str, Any]]:
        """Requests sent so far, by route and answer (``error``: no answer), for metrics."""
        with self._lock:
            return [{"route": route, "status": status, "count": count}
                    for (route, status), count in sorted(self.route_counts.items())]

    def _acquire(self, bucket: str, not_after: float | None) -> None:
        """A request token from the limiter; RateLimited (nothing sent) when none comes by ``not_after``."""
        if self._limiter is not None:
            try:
                if not_after is not None and self._timed_limiter is not None:
                    self._timed_limiter.acquire(bucket, timeout=max(0.0, not_after - self._monotonic()))
                else:
                    self._limiter.acquire(bucket)
            except RateLimitTimeout as exc:
                raise RateLimited(f"request not sent: {exc}", retry_after=exc.wait) from None
        if self._past(not_after):
            raise RateLimited(f"request not sent: no {bucket!r} request token before the submit deadline")

    def _past(self, not_after: float | None) -> bool:
        return not_after is not None and self._monotonic() >= not_after

    def _observe_rate_headers(self, bucket: str, response: httpx.Response) -> None:
        remaining = _header_number(response, "X-RateLimit-Remaining")
        reset = _header_number(response, "X-RateLimit-Reset")
        limit = _announced_limit(response)
        if remaining is None and reset is None and limit is None:
            return
        remaining_int = None if remaining is None else int(remaining)
        with self._lock:
            if remaining is not None or reset is not None:
                self.rate_limit_remaining, self.rate_limit_reset = remaining_int, reset
                self.rate_limits[bucket] = (remaining_int, reset)
            changed = limit is not None and self.announced_limits.get(bucket) != limit
            if limit is not None:
                self.announced_limits[bucket] = limit
        if changed:
            log.debug("Alpaca announces %d requests/min for the %s API (X-RateLimit-Limit)", limit, bucket)
        if self._observe is not None:
            if limit is not None and self._observe_takes_limit:
                self._observe(bucket, remaining_int, reset, limit=limit)
            elif remaining is not None or reset is not None:
                self._observe(bucket, remaining_int, reset)

    # ------------------------------------------------------------------ waits

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: between half and all of base * 2^(attempt-1)."""
        nominal = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return nominal / 2 + self._jitter(nominal / 2)

    def _server_delay(self, response: httpx.Response) -> float | None:
        """The wait the server asks for, plus jitter, capped at max_wait: Retry-After; else the rate
        window's X-RateLimit-Reset, but only when the window is the problem (a 429, or 0 remaining)."""
        wait = _retry_after(response, self._clock)
        remaining = _header_number(response, "X-RateLimit-Remaining")
        if wait is None and (response.status_code == 429 or (remaining is not None and remaining <= 0)):
            reset = _header_number(response, "X-RateLimit-Reset")
            if reset is not None:
                # Alpaca sends epoch seconds; a small number can only be "seconds from now"
                wait = reset - self._clock() if reset > 1e9 else reset
        if wait is None:
            return None
        # spread the wake-ups of the workers that all saw the same reset time
        return min(self.max_wait, max(0.0, wait) + self._jitter(self.backoff_base))

    def _log_retry(self, method: str, path: str, reason: str, delay: float, next_attempt: int, attempts: int) -> None:
        log.warning("retrying %s %s after %s in %.2fs (attempt %d/%d)", method, path, reason, delay,
                    next_attempt, attempts)

    # ------------------------------------------------------------------ errors

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _describe(self, exc: BaseException) -> str:
        detail = self._scrub(str(exc))[:200]
        return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__

    def _transport_error(self, method: str, path: str, exc: httpx.RequestError) -> AlpacaError:
        return BrokerUnavailable(f"{method} {path}: {self._describe(exc)}")

    def _error_for(self, method: str, path: str, response: httpx.Response,
                   params: Mapping[str, Any] | None = None) -> AlpacaError:
        status = response.status_code
        code, message, body = _error_body(response)
        message = self._scrub(message)
        text = f"{method} {path}: {message}" if message else f"{method} {path}"
        kw: dict[str, Any] = {"status": status, "code": code, "body": body, "broker_message": message or None}
        if status == 401:
            return Unauthorized(text, **kw)
        if status == 403:
            if _is_feed_refusal(message):
                feed = (params or {}).get("feed")
                return FeedNotPermitted(f"{text}; {_feed_fix(feed)}", feed=feed, **kw)
            account_code = code is not None and 40300000 <= code < 40400000
            if method != "GET" and account_code:
                return _order_refusal(text, code, message, kw)  # refused by the account's state or the order's size
            if _is_auth_refusal(code, message, body) or method == "GET":
                # a refused read is about the keys or their permissions (e.g. the SIP feed on a free plan)
                return Unauthorized(text, **kw)
            # Alpaca documents 403 on the order path as "buying power or shares not sufficient"
            return _order_refusal(text, code, message, kw)
        if status in (400, 422):
            if _is_duplicate(message):
                return DuplicateClientOrderId(text, **kw)
            return InvalidOrder(text, **kw)
        if status == 404:
            return NotFound(text, **kw)
        if status == 429:
            return RateLimited(text, retry_after=_retry_after(response, self._clock), **kw)
        if status >= 500:
            return BrokerUnavailable(text, **kw)
        return AlpacaError(text, **kw)

    def _parse(self, build: Callable[[Any], T], data: Any, what: str) -> T:
        try:
            return build(data)
        except (KeyError, TypeError, ValueError, AttributeError, InvalidOperation) as exc:
            raise AlpacaError(f"unexpected {what} in broker response: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------- helpers


_ROUTE_IDS = re.compile(r"/(v2/orders|v2/positions|v2/assets)/[^/]+")


def route_of(path: str) -> str:
    """``path`` with its ids and symbols replaced (/v2/orders/<uuid> -> /v2/orders/{id}), so routes
    can be counted without one series per order."""
    path = re.sub(r"/v2/stocks/[^/]+/", "/v2/stocks/{symbol}/", path) if "/v2/stocks/" in path \
        and not path.startswith(("/v2/stocks/snapshots", "/v2/stocks/quotes", "/v2/stocks/trades",
                                 "/v2/stocks/bars")) else path
    return _ROUTE_IDS.sub(lambda m: f"/{m.group(1)}/{{id}}", path)


def _check_header_value(name: str, value: str) -> None:
    # checked here so that httpx/h11 never echo the offending (secret) value in an error message
    if not isinstance(value, str) or any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in value):
        raise ValueError(f"{name} must be printable ASCII without spaces (value not shown)")


def _takes_timeout(limiter: Limiter | None) -> TypeGuard[TimedLimiter]:
    """Does ``limiter.acquire`` accept ``timeout=`` (bot.ratelimit.RateLimiter does; simple test doubles don't)?"""
    acquire = getattr(limiter, "acquire", None)
    return acquire is not None and _takes_keyword(acquire, "timeout")


def _takes_keyword(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


# An X-RateLimit-Limit outside this range is a garbage header, not a plan (Algo Trader Plus: 10,000/min).
MAX_ANNOUNCED_LIMIT = 100_000


def _announced_limit(response: httpx.Response) -> int | None:
    """X-RateLimit-Limit as a whole number of requests per minute, None when absent or implausible."""
    value = _header_number(response, "X-RateLimit-Limit")
    if value is None or not math.isfinite(value) or not 1 <= value <= MAX_ANNOUNCED_LIMIT:
        return None
    return int(value)


def _seg(value: str) -> str:
    """One URL path segment."""
    return quote(str(value), safe="")


def _as_list(data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise AlpacaError(f"unexpected {what} in broker response: expected a JSON array, got {type(data).__name__}")
    return data


def _error_body(response: httpx.Response) -> tuple[int | None, str, dict[str, Any]]:
    """(code, message, body) of an error response; tolerant of non-JSON and code-less bodies."""
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()
        return None, (text[:200] or response.reason_phrase or ""), {}
    if not isinstance(data, dict):
        return None, str(data)[:200], {}
    code = data.get("code")
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    message = str(data.get("message") or data.get("error") or "")
    return code, message, data


def _is_auth_refusal(code: int | None, message: str, body: Mapping[str, Any]) -> bool:
    if code == CODE_UNAUTHORIZED:
        return True
    lowered = message.lower()
    return not body or any(marker in lowered for marker in _AUTH_MESSAGES)


CODE_PATTERN_DAY_TRADING = 40310100
_FEED_MESSAGES = ("subscription does not permit",)


def _is_feed_refusal(message: str) -> bool:
    """Market data's 403 for a feed the plan does not cover ("subscription does not permit querying
    recent SIP data"; the body has only ``message``)."""
    lowered = message.lower()
    return any(marker in lowered for marker in _FEED_MESSAGES)


def _feed_fix(feed: Any) -> str:
    shown = f"feed {feed!r}" if feed else "the requested feed"
    return (f"{shown} is not covered by the account's market-data subscription: set ALPACA_DATA_FEED=iex "
            "(free real-time feed) or TRADEBOT_DATA_FEED_FALLBACK=iex, or subscribe to a plan that includes it "
            "(Algo Trader Plus for sip)")


def _order_refusal(text: str, code: int | None, message: str, kw: dict[str, Any]) -> AlpacaError:
    """A 403 refusing an order: InsufficientFunds (buying power or shares) or TradingForbidden(kind)."""
    kind = _forbidden_kind(code, message)
    if kind is None:
        lowered = message.lower()
        short = "qty" if "qty" in lowered or "shares" in lowered or "available" in lowered else "buying_power"
        return InsufficientFunds(text, kind=short, **kw)
    return TradingForbidden(text, kind=kind, **kw)


def _forbidden_kind(code: int | None, message: str) -> str | None:
    """What a 403 on the order path refuses: None for buying power or shares (InsufficientFunds),
    else the account reason Alpaca gives (its code, or words of its message). Wash-trade refusals
    come with code 40310000 too: the message decides, not the code."""
    text = message.lower()
    if code == CODE_PATTERN_DAY_TRADING or "pattern day" in text:
        return "pattern_day_trading"
    if "wash trade" in text:
        return "wash_trade"
    if "not allowed to short" in text or ("short selling" in text and "not" in text):
        return "shorting_not_allowed"
    if any(words in text for words in ("not authorized", "not allowed", "blocked", "suspended", "restricted",
                                      "not permitted")):
        return "account_restricted"
    if code in (CODE_INSUFFICIENT, None) or any(words in text for words in ("insufficient", "buying power",
                                                                             "qty available", "cost basis")):
        return None
    return "forbidden"


_INVALID_SYMBOL = re.compile(r"invalid symbols?:?\s*([A-Za-z0-9.\-/_^$=+*]+)", re.IGNORECASE)


def _named_symbol(message: str, batch: list[str]) -> str | None:
    """The batch symbol a 400 names ("invalid symbol: X"), if it names one of them."""
    match = _INVALID_SYMBOL.search(message)
    if match is None:
        return None
    raw = match.group(1).strip()
    for named in (raw, raw.rstrip(",.;")):
        for symbol in batch:
            if symbol.upper() == named.upper():
                return symbol
    return None


def _is_duplicate(message: str) -> bool:
    # Code 40010001 alone is not enough: Alpaca uses it for every validation failure.
    lowered = message.lower()
    return any(marker in lowered for marker in _DUPLICATE_MESSAGES) or (
        "client_order_id" in lowered and "unique" in lowered)


def _header_number(response: httpx.Response, name: str) -> float | None:
    value = response.headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _retry_after(response: httpx.Response, clock: Callable[[], float]) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - clock())
