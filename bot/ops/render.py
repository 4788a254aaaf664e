"""The operator's text: the status screen, the journal listing and the DLQ listing."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from bot.ops.dlq import DlqEntry
from bot.ops.report import StatusReport
from bot.ops.stream_status import has_xinfo_lag
from bot.ops.times import unix_time


def _fmt_age(age: float | None) -> str:
    if age is None:
        return "age ?"
    if age < 120:
        return f"age {age:.1f}s"
    if age < 7200:
        return f"age {age / 60:.0f}m"
    return f"age {age / 3600:.1f}h"


def _when(stamp: Any) -> str:
    value = unix_time(stamp)
    if value is None:
        return "----------  --:--:--"
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _clock(stamp: Any) -> str:
    value = unix_time(stamp)
    if value is None:
        return "--:--:--"
    return datetime.fromtimestamp(value, timezone.utc).strftime("%H:%M:%S")


def pnl_lines(pnl: dict[str, Any]) -> list[str]:
    """P&L from the journal (average cost), open shares marked at the cached price."""
    if not pnl or not pnl.get("symbols"):
        return ["p&l       no fills journaled yet"]
    lines = [f"p&l       realized {pnl['realized']}  unrealized {pnl['unrealized']}  total {pnl['total']}"]
    for row in pnl["symbols"]:
        lines.append(f"  {row['symbol']:<8} qty {row['qty']:<10} avg cost {row['avg_cost']:<12} mark "
                     f"{row['mark'] or '?':<12} realized {row['realized']:<10} unrealized {row['unrealized']}")
    return lines


def _heartbeat_lines(report: StatusReport) -> list[str]:
    if not report.heartbeats:
        return ["", "heartbeats  none (no process of this fleet writes to this Redis)"]
    lines = ["", f"{'heartbeats':<22}{'beat':>7}{'loop':>7}  last error"]
    for beat in report.heartbeats:
        loop = "" if beat["progress_age"] is None else f"{beat['progress_age']:.0f}s"
        error = beat["last_error"]
        if error and beat["last_error_age"] is not None:
            error = f"{beat['last_error_age']:.0f}s ago: {error}"
        flag = "  STALE (gone or frozen)" if beat["stale"] else ""
        lines.append(f"  {beat['process']:<20}{beat['age']:>6.0f}s{loop:>7}  {error[:100]}{flag}")
    return lines


def _truth_lines(report: StatusReport) -> list[str]:
    """The listener, the last reconciliation (drift shown loudly) and unresolved orders."""
    listener = report.listener
    if listener.get("live"):
        lines = [f"  orders  followed by events ({listener.get('state')})"]
    else:
        lines = [f"  orders  POLLED over REST: {listener.get('state', 'no order-updates listener')}"]
    rec = report.reconcile
    if rec.get("at"):
        at = datetime.fromtimestamp(float(rec["at"]), timezone.utc).strftime("%H:%M:%S UTC")
        lines.append(f"  reconciled {at}: adopted {rec.get('adopted', 0)}, external {rec.get('external', 0)}, "
                     f"released {rec.get('released', 0)}")
        for drift in rec.get("drift") or []:
            lines.append(f"  POSITION DRIFT {drift['symbol']}: broker {drift['broker']}, "
                         f"the books {drift['expected']} (see `tradebot reconcile`)")
    else:
        lines.append("  reconciled never (run `tradebot reconcile`)")
    if report.unresolved:
        lines.append(f"  UNRESOLVED {report.unresolved} order(s) whose POST had an unknown outcome: "
                     "the workers wait for the broker to show them")
    return lines


def render_status(report: StatusReport) -> str:
    """One screen, readable at a glance."""
    lines: list[str] = []
    when = datetime.fromtimestamp(report.generated_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    settings = report.settings
    lines.append(f"tradebot status  {when}")
    lines.append(f"  redis   {report.redis['url']}"
                 + ("" if report.redis["ok"] else f"  UNREACHABLE: {report.redis['error']}"))
    if report.fleet.get("paper_broker"):
        lines.append(f"  broker  {report.fleet.get('broker_url')}  (the fleet's paper broker, demo key pair)")
    else:
        credentials = report.fleet.get("alpaca_credentials") or settings.get("alpaca_credentials")
        lines.append(f"  broker  {report.fleet.get('broker_url') or settings.get('alpaca_base_url')}"
                     f"  (credentials: {credentials})")
    halt_state = report.halt
    if report.trading_state == "active":
        lines.append("  trading active (orders allowed)")
    else:
        lines.append(f"  {report.trading_state.upper()}: {halt_state['reason']}"
                     + ("" if halt_state["on"] else " (sells and exits only)"))
    if report.breakers.get("tripped"):
        lines.append(f"  breaker tripped {report.breakers.get('tripped_day', '')}: {report.breakers['tripped']}")
    if report.redis["ok"]:
        lines += _truth_lines(report)
    lines.append("")
    fleet = report.fleet
    if fleet["running"]:
        lines.append(f"processes  (supervisord pid {fleet.get('supervisord_pid') or '?'}, {fleet['var_dir']})")
        for proc in fleet["processes"]:
            lines.append(f"  {proc['name']:<14} {proc['state']:<9} {proc['description']}")
    else:
        lines.append(f"processes  supervisord not running (var dir {fleet['var_dir']})")
    if not report.redis["ok"]:
        if not fleet["running"]:
            lines.append(f"no fleet is running in {fleet['var_dir']}: start one with `make run` (or `tradebot up`), "
                         "or point REDIS_URL / --redis-url at a running fleet's Redis")
        return "\n".join(lines)
    lines += _heartbeat_lines(report)
    lines.append("")
    lines.append(f"{'streams':<22}{'length':>8}  {'group':<18}{'pending':>8}{'lag':>8}  consumers (pending, idle)")
    for stream in report.streams:
        head = f"  {stream.name:<20}{stream.length:>8}"
        if not stream.groups:
            lines.append(head)
        for i, group in enumerate(stream.groups):
            if group.lag is None:
                lag = "?"
            else:
                lag = f">={group.lag}" if group.lag_method == "at-least-xrange" else str(group.lag)
            consumers = ", ".join(f"{c.name} ({c.pending}, {c.idle_s:.1f}s)" for c in group.consumers) or "none"
            lines.append(f"{head if i == 0 else ' ' * len(head)}  {group.name:<18}{group.pending:>8}{lag:>8}"
                         f"  {consumers}")
    methods = {g.lag_method for s in report.streams for g in s.groups}
    if methods - {"xinfo"}:
        if has_xinfo_lag(report.redis.get("version", "")):  # 7+: only where XINFO's lag is null
            lines.append("  (some lag counted from the stream: XINFO GROUPS has none for a group with entries "
                         "deleted after its last-delivered-id)")
        else:
            lines.append("  (lag counted with XRANGE after each group's last-delivered-id: this Redis has no "
                         "XINFO lag)")
    lines.append("")
    lines.append("prices")
    for price in report.prices:
        if len(price) <= 2:
            lines.append(f"  {price['symbol']:<8} no price yet")
            continue
        lines.append(f"  {price['symbol']:<8} bid {price.get('bid', '-'):<10} ask {price.get('ask', '-'):<10} "
                     f"last {price.get('last', '-'):<10} {_fmt_age(price.get('age_s'))}")
    account = report.account
    if account:
        lines.append(f"account   cash {account.get('cash', '-')}  buying power {account.get('buying_power', '-')}  "
                     f"equity {account.get('equity', '-')}  {account.get('status', '')}"
                     f"  {_fmt_age(account.get('age_s'))}")
    else:
        lines.append("account   not polled yet")
    if report.clock:
        lines.append(f"market    {'open' if str(report.clock.get('is_open')).lower() in ('1', 'true') else 'closed'}"
                     f"  next open {report.clock.get('next_open', '?')}"
                     f"  next close {report.clock.get('next_close', '?')}")
    if report.positions:
        shown = []
        for symbol, value in sorted(report.positions.items()):
            if isinstance(value, dict):
                shown.append(f"{symbol} {value.get('qty', '?')} @ {value.get('avg_entry_price', '?')}")
            else:
                shown.append(f"{symbol} {value}")
        lines.append("positions " + ", ".join(shown) + f"  {_fmt_age(report.positions_age_s)}")
    elif report.positions_age_s is not None:
        lines.append(f"positions none (flat)  {_fmt_age(report.positions_age_s)}")
    else:
        lines.append("positions not polled yet")
    lines += pnl_lines(report.pnl)
    lines.append("")
    lines.append(f"last orders (journal {next(s.length for s in report.streams if s.role == 'orders')} entries, "
                 f"DLQ {report.dlq} entries)")
    if not report.orders:
        lines.append("  none yet")
    for entry in report.orders:
        filled = ""
        if entry.get("filled_qty") not in (None, "", "0"):
            filled = f" {entry.get('filled_qty')} @ {entry.get('filled_avg_price', '?')}"
        reason = f"  ({entry['reason']})" if entry.get("reason") else ""
        lines.append(f"  {_clock(entry.get('final_at'))}  {entry.get('ticker', '?'):<6} {entry.get('side', '?'):<4} "
                     f"{entry.get('outcome', '?'):<16}{filled}{reason}")
    return "\n".join(lines)


def render_orders(entries: Iterable[Mapping[str, str]]) -> str:
    rows = []
    for entry in entries:
        filled = f"{entry.get('filled_qty', '-')} @ {entry.get('filled_avg_price', '-')}"
        rows.append(f"{entry['id']:<16} {_when(entry.get('final_at'))}  {entry.get('ticker', '?'):<6} "
                    f"{entry.get('side', '?'):<4} {entry.get('outcome', '?'):<16} qty {entry.get('qty', '-'):<8} "
                    f"filled {filled:<20} {entry.get('client_order_id', '')}"
                    + (f"  ({entry['reason']})" if entry.get("reason") else ""))
    return "\n".join(rows) if rows else "no journal entries"


def render_dlq(entries: Iterable[DlqEntry]) -> str:
    rows = []
    for entry in entries:
        original = " ".join(f"{k}='{v}'" for k, v in entry.original.items())
        rows.append(f"{entry.id:<16} {entry.source_stream}/{entry.source_id}  deliveries {entry.deliveries}  "
                    f"reason: {entry.reason}\n{'':<17}fields: {original or '(none)'}")
    return "\n".join(rows) if rows else "DLQ is empty"
