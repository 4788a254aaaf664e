"""`tradebot reconcile`: the broker against the books, reported (and fixed with --apply)."""
from __future__ import annotations

import time
from typing import Any

from bot.alpaca.client import AlpacaClient
from bot.config import ConfigError, Settings
from bot.ops.errors import OpsError, OpsInputError
from bot.ops.settings import open_redis
from bot.reconcile import ReconcileConfig, Reconciler, ReconcileReport


def reconcile(settings: Settings, *, apply: bool, since_seconds: float | None = None,
              settle: float | None = None, set_baseline: bool = False) -> tuple[ReconcileReport, dict[str, str] | None]:
    try:
        settings = settings.with_demo_credentials("to reconcile with")
    except ConfigError as exc:
        raise OpsInputError(str(exc)) from None
    r = open_redis(settings)
    config = ReconcileConfig() if settle is None else ReconcileConfig(settle=settle)
    try:
        with AlpacaClient.from_settings(settings, max_retries=2) as client:
            reconciler = Reconciler(r, settings.keys, client, config)
            baseline = reconciler.set_baseline() if set_baseline else None
            since = None if since_seconds is None else time.time() - since_seconds
            try:
                return reconciler.run(apply=apply, since=since), baseline
            except Exception as exc:  # the broker refused or failed: one line, not a traceback
                if type(exc).__module__.startswith("bot.alpaca") or "httpx" in type(exc).__module__:
                    raise OpsError(f"the broker at {settings.alpaca_base_url}: {exc}") from None
                raise
    finally:
        r.close()


def render_reconcile(report: ReconcileReport, baseline: dict[str, str] | None = None) -> str:
    lines = [f"reconciled {report.orders_read} broker orders since "
             f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(report.since))}"
             f"{'' if report.applied else ' (report only; --apply fixes)'}"]
    if baseline is not None:
        lines.append("baseline set: " + (", ".join(f"{s} {q}" for s, q in baseline.items()) or "flat"))
    verb = "adopted" if report.applied else "to adopt"
    for row in report.adopted:
        lines.append(f"  {verb}: {row['side']} {row['symbol']} {row['client_order_id']} ({row['status']}, "
                     f"filled {row['filled_qty']})" + (" out of the DLQ" if row.get("removed_from_dlq") else ""))
    for row in report.external:
        lines.append(f"  external: {row['side']} {row['symbol']} order {row['order_id']} ({row['status']}, "
                     f"filled {row['filled_qty']})")
    for coid in report.unadoptable:
        lines.append(f"  ours but names no signal (not journaled): {coid}")
    for drift in report.position_drift:
        lines.append(f"  DRIFT {drift['symbol']}: broker {drift['broker']}, books {drift['expected']} "
                     f"(baseline {drift['baseline']} + journaled {drift['journaled']} + external {drift['external']})")
    for coid in report.released:
        lines.append(f"  {'released' if report.applied else 'to release'}: stale reservation {coid}")
    if report.clean and not report.external and not report.released:
        lines.append("  the broker and the books agree")
    return "\n".join(lines)


def report_json(report: ReconcileReport, baseline: dict[str, str] | None) -> dict[str, Any]:
    return {**report.to_dict(), **({"baseline": baseline} if baseline is not None else {})}
